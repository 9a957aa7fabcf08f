"""PostgreSQL for the ledger: the event store, with the consumer's Kafka positions in it.

Shared by the consumers, the read side and the command line: none of them owns it.

`LedgerRecorder` extends eventsourcing's PostgreSQL process recorder so that a
batch's domain events and the Kafka positions it reached are written in the
same transaction (DESIGN §6), with the link of the hash chain that covers those
events (`storage.chain`). It also makes the event table and the chain append-only
in PostgreSQL itself and answers "which of these receipts exist?" in one query.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresFactory,
    PostgresProcessRecorder,
)
from eventsourcing.utils import get_topic
from psycopg import Cursor
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from ledger.application import Ledger
from schemas.policy import Policy
from storage.chain import ChainWriter, prepare
from storage.transcoder import FAST_MAPPING_ENV

POSITIONS_TABLE = "kafka_positions"
RELAY_MARKS_TABLE = "relay_marks"
SCHEMA_LOCK = "pooling-ledger:schema"


@contextmanager
def serialised(datastore: Any, keys: Sequence[str]) -> Iterator[None]:
    """Holds a session advisory lock per key (in order, so writers never deadlock)."""
    with datastore.get_connection() as conn:
        autocommit = conn.autocommit  # the pool's connections are autocommit: leave it so
        conn.autocommit = True
        try:
            for key in keys:
                conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock_all()")
            conn.autocommit = autocommit


class SnapshotRecorder(PostgresAggregateRecorder):
    """The snapshot table, created under the same lock as the rest of the schema."""

    def create_table(self) -> None:
        with serialised(self.datastore, [SCHEMA_LOCK]):
            super().create_table()


class LedgerRecorder(PostgresProcessRecorder):
    def missing_tables(self) -> list[str]:
        """The tables this recorder writes that the database does not have."""
        names = [self.events_table_name, self.tracking_table_name, POSITIONS_TABLE, RELAY_MARKS_TABLE,
                 self.chain.chain_table]
        with self.datastore.get_connection() as conn:
            found = conn.execute(
                "SELECT name FROM unnest(%s::text[]) AS name"
                " WHERE to_regclass(quote_ident(current_schema()) || '.' || quote_ident(name)) IS NOT NULL",
                (names,),
            ).fetchall()
        present = {row["name"] for row in found}
        return [name for name in names if name not in present]

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema, table = Identifier(self.datastore.schema), Identifier(self.events_table_name)
        positions = Identifier(POSITIONS_TABLE)
        guard = Identifier(f"{self.events_table_name}_append_only")
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{positions} ("
                " consumer text NOT NULL, topic text NOT NULL, partition integer NOT NULL,"
                " next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (consumer, topic, partition))"
            ).format(schema=schema, positions=positions),
            # What identifies the record before next_offset (consumers.topics.record_fingerprint):
            # a position is only trusted while the broker still holds that record there.
            SQL("ALTER TABLE {schema}.{positions} ADD COLUMN IF NOT EXISTS fingerprint bytea").format(
                schema=schema, positions=positions
            ),
            # The relay's last acknowledged message per output partition: its notification id
            # and the offset it got, so a log the broker lost or replaced can be recognised.
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{marks} ("
                " relay text NOT NULL, topic text NOT NULL, partition integer NOT NULL,"
                " notification_id bigint NOT NULL, kafka_offset bigint NOT NULL,"
                " updated_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (relay, topic, partition))"
            ).format(schema=schema, marks=Identifier(RELAY_MARKS_TABLE)),
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{guard}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$BEGIN RAISE EXCEPTION 'the ledger event store is append-only: % refused on %',"
                " TG_OP, TG_TABLE_NAME; END;$$"
            ).format(schema=schema, guard=guard),
            SQL(
                "CREATE OR REPLACE TRIGGER {guard} BEFORE UPDATE OR DELETE ON {schema}.{table}"
                " FOR EACH ROW EXECUTE FUNCTION {schema}.{guard}()"
            ).format(schema=schema, table=table, guard=guard),
            SQL(
                "CREATE OR REPLACE TRIGGER {truncate_guard} BEFORE TRUNCATE ON {schema}.{table}"
                " FOR EACH STATEMENT EXECUTE FUNCTION {schema}.{guard}()"
            ).format(
                schema=schema,
                table=table,
                guard=guard,
                truncate_guard=Identifier(f"{self.events_table_name}_no_truncate"),
            ),
        ]
        # Last: the chain's triggers run the guard function made above.
        self.chain = ChainWriter(self.datastore.schema, self.events_table_name)
        self.sql_create_statements += self.chain.create_statements(f"{self.events_table_name}_append_only")
        self._upsert_position = SQL(
            "INSERT INTO {schema}.{positions} (consumer, topic, partition, next_offset, fingerprint)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (consumer, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset, fingerprint = EXCLUDED.fingerprint,"
            " updated_at = now()"
        ).format(schema=schema, positions=positions)
        self._select_positions = SQL(
            "SELECT topic, partition, next_offset, fingerprint FROM {schema}.{positions} WHERE consumer = %s"
        ).format(schema=schema, positions=positions)
        marks = Identifier(RELAY_MARKS_TABLE)
        self._upsert_relay_mark = SQL(
            "INSERT INTO {schema}.{marks} (relay, topic, partition, notification_id, kafka_offset)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (relay, topic, partition)"
            " DO UPDATE SET notification_id = EXCLUDED.notification_id,"
            " kafka_offset = EXCLUDED.kafka_offset, updated_at = now()"
        ).format(schema=schema, marks=marks)
        self._select_relay_marks = SQL(
            "SELECT topic, partition, notification_id, kafka_offset FROM {schema}.{marks} WHERE relay = %s"
        ).format(schema=schema, marks=marks)
        # Column arrays instead of eventsourcing's array of composites: psycopg sends them in
        # binary, skipping the text escaping of every stored event (a third of a batch's time).
        self._insert_columns = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[])"
            " RETURNING notification_id"
        ).format(schema=schema, table=table)
        self._select_existing = SQL(
            "SELECT DISTINCT originator_id FROM {schema}.{table}"
            " WHERE originator_id = ANY(%b) AND originator_version = 1"
        ).format(schema=schema, table=table)
        self._select_streams = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table}"
            " WHERE originator_id = ANY(%b) ORDER BY originator_id, originator_version"
        ).format(schema=schema, table=table)
        self._select_versions = SQL(
            "SELECT k.id, (SELECT max(e.originator_version) FROM {schema}.{table} e"
            " WHERE e.originator_id = k.id) AS version FROM unnest(%b::uuid[]) AS k(id)"
        ).format(schema=schema, table=table)

    def create_table(self) -> None:
        """Creates the schema once, however many processes open the ledger at the same time."""
        with serialised(self.datastore, [SCHEMA_LOCK]):
            super().create_table()

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        super()._create_table(curs)
        self.chain.ensure_first_link(curs)  # in the same transaction as the chain table

    def serialised(self, keys: Sequence[str]) -> AbstractContextManager[None]:
        """Holds a session advisory lock per key (in order, so writers never deadlock)."""
        return serialised(self.datastore, keys)

    def try_lease(self, key: str) -> Lease | None:
        """A session advisory lock on `key` held until released, or None if another process holds it.

        It lives on a connection taken out of the pool, so it ends with this process.
        """
        pool = self.datastore.pool
        pool.open()
        conn = pool.getconn()
        try:
            conn.autocommit = True
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s)) AS locked", (key,)).fetchone()
        except psycopg.Error:
            pool.putconn(conn)  # PostgreSQL is away: the caller retries, the pool keeps its size
            raise
        if row and row["locked"]:
            return Lease(pool, conn, key)
        pool.putconn(conn)
        return None

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """A batch's positions, tracking, events and chain link in one transaction, without
        pipeline mode.

        eventsourcing sends them in psycopg's pipeline mode, which deadlocks when a batch is
        large enough (megabytes of rejected payloads): both ends wait in `Pipeline.sync`
        (psycopg issue #685; seen here with hostile input). A batch is a handful of
        statements, so the round trips pipelining saves are few.

        The link is appended after the events' INSERT, under the event table's EXCLUSIVE
        lock that `_insert_stored_events` takes (held to COMMIT): writers extend the chain one
        after the other. The events are hashed before, outside the lock, all but their
        notification ids.
        """
        prepared = prepare(stored_events)
        with self.datastore.get_connection() as conn, conn.transaction():
            with conn.cursor() as curs:
                self._insert_events(curs, stored_events, **kwargs)
            if not stored_events:
                return None
            with conn.cursor() as curs:
                self._insert_stored_events(curs, stored_events, **kwargs)
                notification_ids = self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
                self._extend_chain(curs, notification_ids or (), prepared)
                return notification_ids

    def _extend_chain(self, curs: Cursor[DictRow], notification_ids: Sequence[int], prepared: Sequence[Any]) -> None:
        """The batch's link of the chain (`storage.chain`), in the batch's transaction."""
        self.chain.extend(curs, notification_ids, prepared)

    def _insert_events(self, curs: Cursor[DictRow], stored_events: Any, **kwargs: Any) -> None:
        positions: Sequence[tuple[str, str, int, int, bytes | None]] = kwargs.get("positions", ())
        if positions:
            curs.executemany(self._upsert_position, positions)
        super()._insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(self, curs: Cursor[DictRow], stored_events: Any, **kwargs: Any) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self._insert_columns,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
        )

    def select_positions(self, consumer: str) -> dict[tuple[str, int], tuple[int, bytes | None]]:
        """(next offset to read, fingerprint of the record before it) per (topic, partition),
        as last committed with a batch."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_positions, (consumer,))
            return {
                (r["topic"], r["partition"]): (r["next_offset"], _bytes_or_none(r["fingerprint"]))
                for r in curs.fetchall()
            }

    def record_relay_progress(
        self, relay: str, marks: dict[tuple[str, int], tuple[int, int]], tracking: Tracking | None
    ) -> None:
        """The relay's acknowledged marks ((topic, partition) -> (notification id, offset)) and its
        position in the notification log, in one transaction."""
        with self.datastore.transaction(commit=True) as curs:
            if marks:
                curs.executemany(
                    self._upsert_relay_mark,
                    [(relay, topic, partition, nid, offset) for (topic, partition), (nid, offset) in marks.items()],
                )
            if tracking is not None:
                self._insert_tracking(curs, tracking)

    def select_relay_marks(self, relay: str) -> dict[tuple[str, int], tuple[int, int]]:
        """(notification id, offset) of the relay's last acknowledged message per output partition."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_relay_marks, (relay,))
            return {(r["topic"], r["partition"]): (r["notification_id"], r["kafka_offset"]) for r in curs.fetchall()}

    def select_versions(self, ids: Sequence[UUID]) -> dict[UUID, int]:
        """The latest version of each aggregate of `ids` that exists, in one query."""
        if not ids:
            return {}
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_versions, (list(ids),))
            return {r["id"]: r["version"] for r in curs.fetchall() if r["version"] is not None}

    def select_existing_originators(self, ids: Sequence[UUID]) -> set[UUID]:
        if not ids:
            return set()
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_existing, (list(ids),))
            return {r["originator_id"] for r in curs.fetchall()}

    def select_streams(self, ids: Sequence[UUID]) -> list[StoredEvent]:
        """Every stored event of the aggregates `ids`, in one query (by aggregate, then version)."""
        if not ids:
            return []
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._select_streams, (list(ids),))
            return [StoredEvent(originator_id=r["originator_id"], originator_version=r["originator_version"],
                                topic=r["topic"], state=bytes(r["state"])) for r in curs.fetchall()]


class LedgerFactory(PostgresFactory):
    """eventsourcing's PostgreSQL persistence with the ledger's recorders."""

    aggregate_recorder_class = SnapshotRecorder
    application_recorder_class = LedgerRecorder


def _bytes_or_none(value: object) -> bytes | None:
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None


class Lease:
    """An advisory lock held by this process (see `LedgerRecorder.try_lease`)."""

    def __init__(self, pool: Any, conn: Any, key: str) -> None:
        self.pool, self.conn, self.key = pool, conn, key

    def alive(self) -> bool:
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def release(self) -> None:
        try:
            self.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (self.key,))
        except psycopg.Error:
            pass  # the session is gone, and the lock with it
        self.pool.putconn(self.conn)


def postgres_env(database_url: str, create_tables: bool = True) -> dict[str, str]:
    """eventsourcing's PostgreSQL settings from a libpq URL."""
    parts = conninfo_to_dict(database_url)
    return {
        "PERSISTENCE_MODULE": get_topic(LedgerFactory),
        "POSTGRES_DBNAME": str(parts.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(parts.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(parts.get("port") or "5432"),
        "POSTGRES_USER": str(parts.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(parts.get("password") or ""),
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "4",
        "CREATE_TABLE": "y" if create_tables else "n",
        **FAST_MAPPING_ENV,
    }


class StoreNotPrepared(RuntimeError):
    """A role that may not create tables opened a store that lacks some this version writes."""


def open_ledger(
    database_url: str, seed_policy: Policy | None = None, *, create_tables: bool = True
) -> Ledger:
    """The ledger on the PostgreSQL database at `database_url` (tables created if missing).

    `create_tables=False` opens it as found: an auditor must not repair (e.g. re-enable the
    append-only triggers of) the store it is checking. A role that may not create tables (the
    writer `prepare-db` makes) gets `StoreNotPrepared` when a table is missing (a store an older
    version prepared), instead of every batch failing on it later.
    """
    may_create = _may_create_tables(database_url)
    ledger = Ledger(env=postgres_env(database_url, create_tables and may_create), seed_policy=seed_policy)
    if create_tables and not may_create:
        missing = ledger_recorder(ledger).missing_tables()
        if missing:
            ledger.close()
            raise StoreNotPrepared(
                f"the database has no {', '.join(missing)} table, which this version writes, and this role"
                " may not create it: run `pooling-ledger prepare-db` with the database owner's URL first"
            )
    return ledger


def _may_create_tables(database_url: str) -> bool:
    """Whether this role makes the schema: not the ledger's writer, which uses tables an admin
    role made for it (`pooling_ledger.database.prepare_database`) and may not change them."""
    events_table = f"{Ledger.name.lower()}_events"
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT has_schema_privilege(current_schema(), 'CREATE') AND coalesce("
            "(SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass(%s)), true)",
            (events_table,),
        ).fetchone()
    return bool(row and row[0])


def ledger_recorder(ledger: Ledger) -> LedgerRecorder:
    assert isinstance(ledger.recorder, LedgerRecorder), "the ledger is not on PostgreSQL"
    return ledger.recorder
