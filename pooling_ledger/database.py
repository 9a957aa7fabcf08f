"""The ledger's database as a whole, prepared by its admin: the composition of the storage's
tables and writer role with the read side's tables and reader role.

It lives in the composition root so that `storage/` need not know the read side's tables, nor
`projections/` the writer's.
"""

from __future__ import annotations

import psycopg

from projections.projector import ensure_schema
from projections.roles import READER_ROLE, ensure_reader_role
from storage import open_ledger
from storage.roles import WRITER_ROLE, ensure_writer_role


def prepare_database(
    admin_url: str,
    *,
    writer_role: str = WRITER_ROLE,
    writer_password: str | None = None,
    reader_role: str = READER_ROLE,
    reader_password: str | None = None,
) -> None:
    """As the admin: the ledger's tables and append-only guards, the read tables, both roles.

    Tables first: each role is granted privileges on the tables that exist when it is made.
    """
    open_ledger(admin_url).close()
    with psycopg.connect(admin_url) as conn:
        ensure_schema(conn)
    ensure_writer_role(admin_url, writer_role, writer_password)
    ensure_reader_role(admin_url, reader_role, reader_password)
