"""Tamper evidence kept in the database: a hash chain over the recorded events (issue 10).

Every transaction that records events (`storage.recorder.LedgerRecorder.insert_events`: a
batch's domain events with its Kafka positions) appends one link to `ledger_chain` after the
events' INSERT and before its COMMIT, so a batch and its link are recorded together or not at
all. A link covers the events of its batch and the link before it:

    ledger_chain (
        link_id              bigserial PRIMARY KEY,   -- the chain's order
        last_notification_id bigint    UNIQUE,        -- the link covers the events with
                                                      --   previous link's last < notification_id <= this
        events               integer,                 -- how many it covers
        event_digests        bytea,                   -- their leaves (32 bytes each, in notification order)
        digest               bytea,                   -- sha256 of the link (below)
        previous_digest      bytea     UNIQUE,        -- the link before's digest; 32 zero bytes for the first
        recorded_at          timestamptz              -- not covered by the digest
    )

UPDATE, DELETE and TRUNCATE are refused by the event table's guard function (the same
triggers as on `ledger_events`); the ledger's writer role, which owns neither table, can only
add links. UNIQUE (previous_digest) makes a fork impossible: two links can never follow the
same one, whatever the writers do. Snapshots are not chained (they are derived, and kept in
their own table).

Canonical encoding, version 1 (integers are big-endian two's complement, `i64` 8 bytes,
`u32` 4 bytes; `field(b)` is `u32(len(b)) || b`, and `u32(0xFFFFFFFF)` alone for NULL):

    leaf(event) = sha256( b"pooling-ledger/chain/event/v1\\x00"
                          || originator_id as its 16 UUID bytes (RFC 4122 order)
                          || i64(originator_version)
                          || field(topic as UTF-8)
                          || field(sha256(state))       -- state: the stored bytes, as stored
                          || i64(notification_id) )

    digest(link) = sha256( b"pooling-ledger/chain/link/v1\\x00"
                           || previous_digest (32 bytes)
                           || i64(last_notification_id)
                           || i64(events)
                           || leaf(e1) || leaf(e2) || ... )  -- in notification id order

The notification id comes last, and a leaf hashes the state's sha256, not the state itself:
the recorder hashes everything but the notification id (unknown until the INSERT) before it
takes the event table's lock (`prepare`), and inside the lock only finishes each leaf and
appends the link in one statement (PostgreSQL's sha256() computes the link's digest over the
head it reads there). Links are kept with their leaves so that `verify_chain` can name the
first event that no longer matches, not only the batch.

Writers serialise on the chain through the lock every insert already takes: eventsourcing's
recorder locks the event table IN EXCLUSIVE MODE before inserting (so that notification ids
are committed in order), until COMMIT. The head is read and the link written inside that lock,
so the chain adds no new point where writers wait and no conflict; it only makes the locked
section longer by one INSERT and the leaves' last step (`bench/chain` measures it).

A store recorded before the chain existed gets its first link when the admin creates the
chain table (`prepare-db`, or any `open_ledger` by a role that may create tables): in the
same transaction, with the event table locked, that link covers every event recorded so far
(a fresh store's first link covers none: `events` 0, `last_notification_id` 0). Writers of
an earlier version must be stopped first: an event they record later has no link, and
`verify` names it.

What the chain proves: an event edited, removed or inserted afterwards (even by a superuser
who disabled the guard triggers) is found by recomputing the chain, unless every later link
was rewritten too; the latest link's digest, published by `GET /health` and on statements
(`latest_link`), lets anyone holding an older copy see that it was. It does not prove that
an append by a role allowed to append (the writer) was the ledger's own.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import Cursor
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg.sql import SQL, Composed, Identifier

if TYPE_CHECKING:
    from _hashlib import HASH

CHAIN_TABLE = "ledger_chain"
#: The chain's latest link for any role (SECURITY DEFINER): the read API's role has no SELECT on it.
HEAD_FUNCTION = "ledger_chain_head"
EVENTS_TABLE = "ledger_events"
DIGEST_BYTES = 32
#: The `previous_digest` of the first link.
GENESIS = bytes(DIGEST_BYTES)
EVENT_DOMAIN = b"pooling-ledger/chain/event/v1\x00"
LINK_DOMAIN = b"pooling-ledger/chain/link/v1\x00"
_NULL = struct.pack(">I", 0xFFFFFFFF)
_I64 = struct.Struct(">q")
#: Rows fetched at a time when reading the whole event table (first link, verification).
READ_PAGE_ROWS = 2_000


# -- the canonical encoding --------------------------------------------------------------------


def state_digest(state: bytes | None) -> bytes | None:
    """sha256 of a stored event's state (None for a NULL state)."""
    return None if state is None else hashlib.sha256(state).digest()


def _field(value: bytes | None) -> bytes:
    return _NULL if value is None else struct.pack(">I", len(value)) + value


def event_hasher(
    originator_id: UUID | str, originator_version: int, topic: str | None, state_sha256: bytes | None
) -> HASH:
    """sha256 fed with an event's leaf encoding up to its notification id (module docstring)."""
    uuid = originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))
    return hashlib.sha256(
        EVENT_DOMAIN
        + uuid.bytes
        + _I64.pack(originator_version)
        + _field(None if topic is None else topic.encode("utf-8"))
        + _field(state_sha256)
    )


def leaf_of(hasher: HASH, notification_id: int) -> bytes:
    """The leaf an `event_hasher` makes once the event's notification id is known."""
    finished = hasher.copy()
    finished.update(_I64.pack(notification_id))
    return finished.digest()


def event_leaf(
    notification_id: int,
    originator_id: UUID | str,
    originator_version: int,
    topic: str | None,
    state_sha256: bytes | None,
) -> bytes:
    """The leaf of one recorded event (module docstring), from its state's sha256."""
    return leaf_of(event_hasher(originator_id, originator_version, topic, state_sha256), notification_id)


def prepare(stored_events: Sequence[StoredEvent]) -> list[HASH]:
    """Each event's leaf but its notification id: what can be hashed before the lock."""
    return [
        event_hasher(e.originator_id, e.originator_version, e.topic, state_digest(e.state))
        for e in stored_events
    ]


def link_digest(previous: bytes, last_notification_id: int, events: int, event_digests: bytes) -> bytes:
    """The digest of a link (module docstring): `event_digests` is its leaves, concatenated."""
    return hashlib.sha256(
        LINK_DOMAIN + previous + _I64.pack(last_notification_id) + _I64.pack(events) + event_digests
    ).digest()


# -- writing -------------------------------------------------------------------------------------


class ChainWriter:
    """The chain's table, guards and head function, and the link each recording transaction adds."""

    def __init__(self, schema: str, events_table: str = EVENTS_TABLE, chain_table: str = CHAIN_TABLE) -> None:
        self.schema, self.events_table, self.chain_table = schema, events_table, chain_table
        s, events, chain = Identifier(schema), Identifier(events_table), Identifier(chain_table)
        # One round trip: the head read and the link's digest computed where it is appended.
        self._append_link = SQL(
            "WITH v AS (SELECT %b::bytea AS leaves),"
            " head AS (SELECT coalesce((SELECT digest FROM {s}.{chain} ORDER BY link_id DESC LIMIT 1),"
            " %b::bytea) AS digest)"
            " INSERT INTO {s}.{chain} (last_notification_id, events, event_digests, digest, previous_digest)"
            " SELECT %s::bigint, %s::integer, v.leaves, sha256(%b::bytea || head.digest || %b::bytea || v.leaves),"
            " head.digest FROM v, head"
        ).format(s=s, chain=chain)
        self._insert_link = SQL(
            "INSERT INTO {s}.{chain} (last_notification_id, events, event_digests, digest, previous_digest)"
            " VALUES (%s, %s, %b, %b, %b)"
        ).format(s=s, chain=chain)
        self._any_link = SQL("SELECT 1 FROM {s}.{chain} LIMIT 1").format(s=s, chain=chain)
        self._lock_events = SQL("LOCK TABLE {s}.{events} IN EXCLUSIVE MODE").format(s=s, events=events)
        self._select_events = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM {s}.{events} ORDER BY notification_id"
        ).format(s=s, events=events)

    def create_statements(self, guard_function: str) -> list[Composed]:
        """The chain table, its append-only triggers (running the event table's `guard_function`)
        and the head function; to run after the event table's own statements."""
        s, chain = Identifier(self.schema), Identifier(self.chain_table)
        guard = Identifier(guard_function)
        return [
            SQL(
                "CREATE TABLE IF NOT EXISTS {s}.{chain} ("
                " link_id bigserial PRIMARY KEY,"
                " last_notification_id bigint NOT NULL UNIQUE,"
                " events integer NOT NULL CHECK (events >= 0),"
                " event_digests bytea NOT NULL,"
                " digest bytea NOT NULL CHECK (octet_length(digest) = 32),"
                " previous_digest bytea NOT NULL UNIQUE CHECK (octet_length(previous_digest) = 32),"
                " recorded_at timestamptz NOT NULL DEFAULT now(),"
                " CHECK (octet_length(event_digests) = 32 * events))"
            ).format(s=s, chain=chain),
            SQL(
                "CREATE OR REPLACE TRIGGER {trigger} BEFORE UPDATE OR DELETE ON {s}.{chain}"
                " FOR EACH ROW EXECUTE FUNCTION {s}.{guard}()"
            ).format(s=s, chain=chain, guard=guard, trigger=Identifier(f"{self.chain_table}_append_only")),
            SQL(
                "CREATE OR REPLACE TRIGGER {trigger} BEFORE TRUNCATE ON {s}.{chain}"
                " FOR EACH STATEMENT EXECUTE FUNCTION {s}.{guard}()"
            ).format(s=s, chain=chain, guard=guard, trigger=Identifier(f"{self.chain_table}_no_truncate")),
            SQL(
                "CREATE OR REPLACE FUNCTION {s}.{head}() RETURNS TABLE (link_id bigint,"
                " last_notification_id bigint, events integer, digest bytea, previous_digest bytea,"
                " recorded_at timestamptz) LANGUAGE sql STABLE SECURITY DEFINER"
                " SET search_path = pg_catalog, pg_temp AS"
                " $$SELECT c.link_id, c.last_notification_id, c.events, c.digest, c.previous_digest,"
                " c.recorded_at FROM {s}.{chain} c ORDER BY c.link_id DESC LIMIT 1$$"
            ).format(s=s, chain=chain, head=Identifier(HEAD_FUNCTION)),
        ]

    def extend(self, curs: Cursor[DictRow], notification_ids: Sequence[int], prepared: Sequence[HASH]) -> None:
        """Appends the link of the events just inserted with `notification_ids` (`prepared` by
        `prepare`, in the same order), in the transaction of `curs`, which holds the event
        table's EXCLUSIVE lock."""
        if len(notification_ids) != len(prepared) or not prepared:
            raise ValueError(f"{len(prepared)} events recorded, {len(notification_ids)} notification ids")
        order = sorted(range(len(prepared)), key=notification_ids.__getitem__)
        leaves = b"".join(leaf_of(prepared[i], notification_ids[i]) for i in order)
        last, count = notification_ids[order[-1]], len(order)
        curs.execute(
            self._append_link,
            (leaves, GENESIS, last, count, LINK_DOMAIN, _I64.pack(last) + _I64.pack(count)),
            prepare=True,
        )

    def ensure_first_link(self, curs: Cursor[DictRow]) -> None:
        """The chain's first link, if it has none: over every event recorded so far (module docstring).

        Runs in the transaction that creates the schema, so the chain table is never seen
        without it.
        """
        curs.execute(self._lock_events)
        curs.execute(self._any_link)
        if curs.fetchone() is not None:
            return
        leaves = bytearray()
        count = last = 0
        for nid, originator_id, version, topic, state in _rows(curs.connection, self._select_events, "chain_first"):
            leaves += event_leaf(nid, originator_id, version, topic, state_digest(_bytes(state)))
            count, last = count + 1, nid
        digest = link_digest(GENESIS, last, count, bytes(leaves))
        curs.execute(self._insert_link, (last, count, bytes(leaves), digest, GENESIS))


def _rows(conn: psycopg.Connection[Any], query: Composed, name: str) -> Generator[tuple[Any, ...], None, None]:
    """Every row of `query`, a page at a time, through a server-side cursor of the open transaction."""
    with conn.cursor(name=name, row_factory=tuple_row) as curs:
        curs.itersize = READ_PAGE_ROWS
        curs.execute(query)
        yield from curs


def _bytes(value: object) -> bytes | None:
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None


# -- reading -------------------------------------------------------------------------------------


def _link_json(row: dict[str, Any]) -> dict[str, Any]:
    recorded_at = row.get("recorded_at")
    return {
        "link_id": int(row["link_id"]),
        "last_notification_id": int(row["last_notification_id"]),
        "events": int(row["events"]),
        "digest": bytes(row["digest"]).hex(),
        "previous_digest": bytes(row["previous_digest"]).hex(),
        "recorded_at": recorded_at.isoformat() if recorded_at is not None else None,
    }


def latest_link(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """The chain's latest link (link_id, last_notification_id, events, digest and previous_digest
    in hex, recorded_at in ISO 8601), or None where the store has no chain (yet).

    Any role may ask (the head function runs as the chain's owner). `conn` may be inside a
    transaction: the query runs in a savepoint, so a missing chain leaves the transaction usable.
    """
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as curs:
            curs.execute(SQL("SELECT * FROM {}()").format(Identifier(HEAD_FUNCTION)))
            row = curs.fetchone()
    except (psycopg.errors.UndefinedFunction, psycopg.errors.UndefinedTable):
        return None
    return _link_json(row) if row is not None else None


# -- verifying -----------------------------------------------------------------------------------


@dataclass
class ChainReport:
    """What recomputing the chain from the event table found (`verify_chain`)."""

    links: int = 0
    #: events covered by the links (found in their ranges)
    events: int = 0
    #: the latest link as stored (what `/health` shows)
    latest_link: dict[str, Any] | None = None
    #: the latest link's digest recomputed from the events as they are now (hex)
    recomputed_digest: str | None = None
    #: the first event (or link) where the recomputed chain departs from the stored one
    broken_at: dict[str, Any] | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None and not self.problem

    def breaks(self, event: tuple[Any, ...] | None, link_id: int | None, reason: str) -> None:
        """Keeps the first break only: the walk goes in notification order."""
        if self.broken_at is not None:
            return
        if event is not None:
            nid, originator_id, version, topic = event[:4]
            self.broken_at = {
                "notification_id": int(nid), "originator_id": str(originator_id),
                "originator_version": int(version), "topic": topic, "link_id": link_id, "reason": reason,
            }
            self.problem = (
                f"the chain breaks at notification {nid} (originator {originator_id} version {version},"
                f" topic {topic}): {reason}"
            )
        else:
            self.broken_at = {"notification_id": None, "link_id": link_id, "reason": reason}
            self.problem = f"the chain breaks at link {link_id}: {reason}"

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "links": self.links, "events": self.events, "latest_link": self.latest_link,
            "recomputed_digest": self.recomputed_digest, "broken_at": self.broken_at,
        }


def verify_chain(
    conn: psycopg.Connection[Any], events_table: str = EVENTS_TABLE, chain_table: str = CHAIN_TABLE,
    schema: str = "public",
) -> ChainReport:
    """Recomputes every link from the event table and compares it with the stored chain.

    Reads both tables in one REPEATABLE READ transaction (a batch and its link are committed
    together, so a snapshot holds both or neither), a page at a time. `conn` must not be inside
    a transaction. The report names the first event, in notification order, that its link did
    not record so (content altered, inserted, or after an event removed), or that no link covers.
    """
    report = ChainReport()
    s = Identifier(schema)
    links_query = SQL(
        "SELECT link_id, last_notification_id, events, event_digests, digest, previous_digest, recorded_at"
        " FROM {s}.{chain} ORDER BY link_id"
    ).format(s=s, chain=Identifier(chain_table))
    events_query = SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM {s}.{events}"
        " ORDER BY notification_id"
    ).format(s=s, events=Identifier(events_table))
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            _walk(conn, links_query, events_query, report)
    except psycopg.errors.UndefinedTable as error:
        report.problem = f"the store has no chain to verify ({str(error).strip()}): prepare-db makes it"
    return report


def _walk(conn: psycopg.Connection[Any], links_query: Composed, events_query: Composed, report: ChainReport) -> None:
    events = _rows(conn, events_query, "chain_verify_events")
    try:
        _compare(events, _rows(conn, links_query, "chain_verify_links"), report)
    finally:
        events.close()  # its server-side cursor, inside the transaction


def _compare(events: Iterator[tuple[Any, ...]], links: Iterator[tuple[Any, ...]], report: ChainReport) -> None:
    event = next(events, None)
    stored_previous = recomputed = GENESIS
    latest: tuple[Any, ...] | None = None
    for row in links:
        link_id, last, count, digests, digest, previous = row[0], row[1], row[2], bytes(row[3]), bytes(row[4]), bytes(row[5])
        report.links += 1
        first = event if event is not None and event[0] <= last else None
        if previous != stored_previous:
            report.breaks(first, link_id, f"link {link_id} does not follow the link before it (its previous"
                                          " digest is another): the chain itself was altered")
        found: list[bytes] = []
        before = event
        while event is not None and event[0] <= last:
            leaf = event_leaf(event[0], event[1], event[2], event[3], state_digest(_bytes(event[4])))
            at = len(found) * DIGEST_BYTES
            if len(found) >= count:
                report.breaks(event, link_id, f"link {link_id} recorded {count} events up to notification {last};"
                                              " this one is not among them (inserted since)")
            elif digests[at:at + DIGEST_BYTES] != leaf:
                report.breaks(event, link_id, f"it is not what link {link_id} recorded at its place (its stored"
                                              " content was altered, or an event before it in the link was"
                                              " inserted or removed)")
            found.append(leaf)
            before, event = event, next(events, None)
        if len(found) < count:
            report.breaks(before if found else None, link_id,
                          f"link {link_id} recorded {count} events up to notification {last}, {len(found)} are"
                          " stored: events were removed")
        if link_digest(previous, last, count, digests) != digest:
            report.breaks(first, link_id, f"link {link_id}'s digest does not match its content: the chain"
                                          " itself was altered")
        recomputed = link_digest(recomputed, last, len(found), b"".join(found))
        report.events += len(found)
        stored_previous, latest = digest, row
    if latest is None:
        report.breaks(event, None, "the chain has no link, not even the first (prepare-db writes it)")
        return
    report.latest_link = _link_json(dict(zip(
        ("link_id", "last_notification_id", "events", "event_digests", "digest", "previous_digest", "recorded_at"),
        latest, strict=True,
    )))
    report.recomputed_digest = recomputed.hex()
    if event is not None:
        report.breaks(event, None, f"no link covers it: it was recorded after the chain's latest link"
                                   f" (link {latest[0]}, up to notification {latest[1]})")
