"""The ledger's PostgreSQL roles, made by an admin connection that also creates the schema.

- the writer (`pooling_ledger`): what consume, relay, project, serve and demo connect as. It owns
  nothing: SELECT, INSERT and UPDATE on the event table (UPDATE only because eventsourcing locks
  the table IN EXCLUSIVE MODE before inserting; the append-only triggers refuse every UPDATE),
  USAGE on the sequences, and SELECT, INSERT, UPDATE, DELETE on the other tables (and MAINTAIN on the
  read tables, PostgreSQL 17 and later, to ANALYZE what it rebuilt). Not owning the
  event table, it can neither disable nor drop its triggers, nor drop the table; not a
  superuser, it cannot `SET session_replication_role = replica` to skip them.
- the reader (`pooling_reader`): the read API's role, made by `projections.roles` with the
  helpers here.

`pooling_ledger.database.prepare_database` makes the tables and both roles, in that order.

Passwords are sent to PostgreSQL as SCRAM-SHA-256 verifiers, never in clear: a statement that
fails lands in the server's log with its text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

WRITER_ROLE = "pooling_ledger"
EVENTS_TABLE = "ledger_events"
#: Privileges of the writer on the event table (see the module's docstring for UPDATE).
EVENTS_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE"
#: The hash chain (`storage.chain`): the writer appends links, never changes one.
CHAIN_TABLE = "ledger_chain"
CHAIN_TABLE_PRIVILEGES = "SELECT, INSERT"
#: Privileges of the writer on every other table of the ledger's schema.
TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
#: The read tables (`projections`): the writer may also ANALYZE them (MAINTAIN, PostgreSQL 17 and
#: later), which the projection rebuild does once it filled them, for the read API's plans.
READ_TABLE_PREFIX = "pl_"
MAINTAIN_SINCE = 170000
ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
ROLES_LOCK = "pooling-ledger:roles"
#: PostgreSQL's own default iteration count for SCRAM-SHA-256 verifiers.
SCRAM_ITERATIONS = 4096
SCRAM_SALT_BYTES = 16
#: Bytes of an HMAC-derived password before base64 (see `derived_password`).
DERIVED_PASSWORD_BYTES = 24


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, 7677)."""
    salt = salt if salt is not None else secrets.token_bytes(SCRAM_SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def derived_password(admin_url: str, role: str) -> str:
    """A password for `role` derived from the admin's (HMAC-SHA256): every process agrees on it
    without storing it, and it tells nothing about the admin's password."""
    key = (urlsplit(admin_url).password or "").encode("utf-8")
    digest = hmac.new(key, f"pooling-ledger:{role}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:DERIVED_PASSWORD_BYTES]).decode("ascii")


def ensure_role(conn: psycopg.Connection[object], role: str, password: str) -> None:
    """Creates `role` (or brings an existing one back to) ROLE_ATTRIBUTES with `password`."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    statement = sql.SQL("{} ROLE {} " + ROLE_ATTRIBUTES + " PASSWORD {}")
    verifier = sql.Literal(scram_verifier(password))
    try:
        conn.execute(statement.format(sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(role), verifier))
    except psycopg.errors.DuplicateObject:  # created meanwhile for another database (roles are server-wide)
        conn.execute(statement.format(sql.SQL("ALTER"), sql.Identifier(role), verifier))


def grant_database(conn: psycopg.Connection[object], role: str) -> None:
    """Lets `role` connect to the ledger's database and see its schema (tables are granted apart)."""
    database = conn.info.dbname
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))


def ensure_writer_role(admin_url: str, role: str = WRITER_ROLE, password: str | None = None) -> None:
    """Creates (or updates) the ledger's writer `role` with the privileges of the module docstring.

    The tables must exist (`pooling_ledger.database.prepare_database` makes them first); it must not be the admin itself.
    """
    password = password or derived_password(admin_url, role)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT current_user = %s", (role,)).fetchone() == (True,):
            raise ValueError(f"the ledger's writer role {role!r} must not be the admin role that owns the schema")
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (ROLES_LOCK,))
        ensure_role(conn, role, password)
        grant_database(conn, role)
        with conn.transaction():
            tables = [
                name for (name,) in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
                ).fetchall()
            ]
            maintain = conn.info.server_version >= MAINTAIN_SINCE
            for table in tables:
                privileges = {EVENTS_TABLE: EVENTS_TABLE_PRIVILEGES, CHAIN_TABLE: CHAIN_TABLE_PRIVILEGES}.get(
                    table, TABLE_PRIVILEGES)
                if maintain and table.startswith(READ_TABLE_PREFIX):
                    privileges += ", MAINTAIN"
                target = sql.SQL("{} TO {}").format(sql.Identifier(table), sql.Identifier(role))
                conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(table), sql.Identifier(role)))
                conn.execute(sql.SQL("GRANT " + privileges + " ON ") + target)
            conn.execute(
                sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(sql.Identifier(role))
            )
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (ROLES_LOCK,))


def role_url(admin_url: str, role: str, password: str | None = None) -> str:
    """`admin_url` with `role`'s credentials instead (password: given, or derived as above)."""
    password = password or derived_password(admin_url, role)
    parts = urlsplit(admin_url)
    host = parts.hostname or "127.0.0.1"
    netloc = quote(role, safe="") + ":" + quote(password, safe="") + "@" + host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def without_password(url: str) -> str:
    """`url` fit to print or log: the same connection, the password left out."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = quote(parts.username or "", safe="")
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}" if user else netloc))
