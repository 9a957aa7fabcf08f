"""The read API's PostgreSQL role (`pooling_reader`): SELECT on the read tables and nothing else.

The writer role and the helpers both roles share (SCRAM verifiers, derived passwords, role
URLs) are the storage's (`storage.roles`).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from storage.roles import (
    EVENTS_TABLE,
    ROLES_LOCK,
    derived_password,
    ensure_role,
    grant_database,
    role_url,
)

READER_ROLE = "pooling_reader"
READ_TABLES = (
    "pl_tracking", "pl_postings", "pl_account_balances", "pl_account_daily", "pl_events",
    "pl_rejections", "pl_budgets", "pl_openings", "pl_closed_years", "pl_policies",
    "pl_account_year_totals", "pl_account_monthly_claims", "pl_subsidy_headcounts", EVENTS_TABLE,
)


def ensure_reader_role(admin_url: str, role: str = READER_ROLE, password: str | None = None) -> None:
    """Creates (or updates) `role`: LOGIN, SELECT on the read tables, no other privilege.

    Without a password, the role gets `derived_password(admin_url, role)` (as `reader_url` does).
    The read tables must exist (`projections.projector.ensure_schema`).
    """
    password = password or derived_password(admin_url, role)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (ROLES_LOCK,))
        ensure_role(conn, role, password)
        grant_database(conn, role)
        for table in READ_TABLES:
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), sql.Identifier(role)))
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (ROLES_LOCK,))


def reader_url(admin_url: str, role: str = READER_ROLE, password: str | None = None) -> str:
    """`admin_url` with the reader's credentials instead."""
    return role_url(admin_url, role, password)
