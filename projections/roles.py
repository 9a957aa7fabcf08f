"""The read-only PostgreSQL role the read API connects as: it can SELECT and nothing else."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

READER_ROLE = "pooling_reader"
READ_TABLES = (
    "pl_tracking", "pl_postings", "pl_account_balances", "pl_account_daily", "pl_events",
    "pl_rejections", "pl_budgets", "pl_openings", "pl_closed_years", "pl_policies", "ledger_events",
)


def ensure_reader_role(admin_url: str, role: str = READER_ROLE, password: str | None = None) -> None:
    """Creates (or updates) `role`: LOGIN, SELECT on the read tables, no other privilege."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('pooling-ledger:roles'))")
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        try:
            conn.execute(_role_statement("ALTER" if exists else "CREATE", role, password))
        except psycopg.errors.DuplicateObject:  # created meanwhile for another database (roles are server-wide)
            conn.execute(_role_statement("ALTER", role, password))
        database = conn.info.dbname
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        for table in READ_TABLES:
            conn.execute(
                sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(role))
            )
        conn.execute("SELECT pg_advisory_unlock(hashtext('pooling-ledger:roles'))")


def _role_statement(verb: str, role: str, password: str | None) -> sql.Composed:
    statement = sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(
        sql.Identifier(role)
    )
    if password:
        statement += sql.SQL(" PASSWORD {}").format(sql.Literal(password))
    return statement


def reader_url(admin_url: str, role: str = READER_ROLE, password: str | None = None) -> str:
    """`admin_url` with the reader's credentials instead."""
    parts = urlsplit(admin_url)
    host = parts.hostname or "127.0.0.1"
    netloc = quote(role) + (":" + quote(password) if password else "") + "@" + host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
