"""Tamper evidence kept in the database (issue 10): the hash chain over the recorded events,
extended in each batch's transaction, recomputed by `verify`, its latest link on `/health`."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from fastapi.testclient import TestClient

from consumers.booking import record_batch
from consumers.inbound import Inbound, SourcePosition
from pooling_ledger.database import prepare_database
from projections.api import create_app
from projections.projector import Projector
from projections.roles import ensure_reader_role, reader_url
from storage import ledger_recorder, open_ledger
from storage.chain import GENESIS, event_leaf, latest_link, link_digest, state_digest, verify_chain
from storage.roles import role_url
from tests.pipeline_support import claim, contribution

GUARD = "the ledger event store is append-only"
WRITER_PASSWORD = "writer-pw-c4a1"
READER_PASSWORD = "reader-pw-77e0"


def run_verify(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", "verify", *args],
        env={**os.environ, "DATABASE_URL": database_url, "POOLING_LOG_LEVEL": "error"},
        capture_output=True, text=True, timeout=120, check=False,
    )


def inbound(events: Sequence[dict[str, Any]], partition: int = 0, first_offset: int = 0) -> list[Inbound]:
    return [Inbound.parse(json.dumps(e).encode(), SourcePosition("t", partition, first_offset + i))
            for i, e in enumerate(events)]


def book(database_url: str, *batches: Sequence[dict[str, Any]]) -> None:
    """Each of `batches` in its own transaction (one link each), then projected."""
    ledger = open_ledger(database_url)
    offset = 0
    for events in batches:
        record_batch(ledger, inbound(events, first_offset=offset))
        offset += len(events)
    with Projector(ledger, database_url) as projector:
        projector.run_until_caught_up()
    ledger.close()


def health(database_url: str) -> dict[str, Any]:
    """`GET /health` as the read API answers it, through the read-only role."""
    ensure_reader_role(database_url)
    with TestClient(create_app(reader_url(database_url), "t0ken")) as client:
        response = client.get("/health")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def counts(database_url: str) -> tuple[int, int]:
    """(events, links)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM ledger_events), (SELECT count(*) FROM ledger_chain)").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def chain_of(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return verify_chain(conn)


# -- the encoding --------------------------------------------------------------------------------


def test_the_canonical_encoding_is_the_documented_one() -> None:
    """storage/chain.py's docstring, spelled out again byte by byte."""
    originator, state = uuid.UUID("7d8c3f0e-2a4b-4c6d-9e1f-0a1b2c3d4e5f"), b'{"amount_fen":40000}'
    topic = "ledger.aggregates:Fund.Moved"
    leaf = hashlib.sha256(
        b"pooling-ledger/chain/event/v1\x00"
        + bytes.fromhex("7d8c3f0e2a4b4c6d9e1f0a1b2c3d4e5f")
        + (3).to_bytes(8, "big")
        + len(topic).to_bytes(4, "big") + topic.encode()
        + (32).to_bytes(4, "big") + hashlib.sha256(state).digest()
        + (41).to_bytes(8, "big")
    ).digest()
    assert event_leaf(41, originator, 3, topic, state_digest(state)) == leaf
    assert event_leaf(41, str(originator), 3, topic, state_digest(state)) == leaf
    null_leaf = hashlib.sha256(
        b"pooling-ledger/chain/event/v1\x00" + originator.bytes + (3).to_bytes(8, "big")
        + b"\xff\xff\xff\xff" + b"\xff\xff\xff\xff" + (41).to_bytes(8, "big")
    ).digest()
    assert event_leaf(41, originator, 3, None, None) == null_leaf  # NULLs are not empty strings
    assert event_leaf(41, originator, 3, "", state_digest(b"")) != null_leaf

    link = hashlib.sha256(
        b"pooling-ledger/chain/link/v1\x00" + GENESIS + (42).to_bytes(8, "big") + (2).to_bytes(8, "big")
        + leaf + null_leaf
    ).digest()
    assert link_digest(GENESIS, 42, 2, leaf + null_leaf) == link
    # pinned: a change of the encoding would break every stored chain
    assert leaf.hex() == "da337e7eca14fdf68f15187baf238e80f70227ba830dbd4f8a0248b867d5d598"
    assert link.hex() == "c4eba33b34e621c3b7a20c2ad806071d7a8b2ea0c2c4492f6900001529f7bde4"


# -- on PostgreSQL -------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_superusers_edit_behind_the_disabled_guard_is_named_by_verify_and_health_keeps_the_old_link(
    database_url: str,
) -> None:
    book(
        database_url,
        [contribution("340100", "resident", 100_000), claim("340100", "resident", 40_000)],
        [contribution("340200", "employee", 70_000)],
    )
    done = run_verify(database_url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    before = json.loads(done.stdout)
    assert before["checks"]["chain_intact"] is True
    chain = before["chain"]
    assert chain["ok"] is True and chain["links"] == 3  # the first link (no events), one per batch
    assert chain["recomputed_digest"] == chain["latest_link"]["digest"]
    assert chain["events"] == before["events"]
    kept = health(database_url)["chain"]
    assert kept == chain["latest_link"]

    with psycopg.connect(database_url, autocommit=True) as conn:  # a superuser tampering with one event
        target = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic FROM ledger_events"
            " WHERE convert_from(state, 'UTF8') LIKE '%\"amount_fen\":40000%' ORDER BY notification_id LIMIT 1"
        ).fetchone()
        assert target is not None
        nid, originator_id, version, topic = target
        conn.execute("ALTER TABLE ledger_events DISABLE TRIGGER ledger_events_append_only")
        changed = conn.execute(
            "UPDATE ledger_events SET state = convert_to(replace(convert_from(state, 'UTF8'),"
            " '\"amount_fen\":40000', '\"amount_fen\":4000'), 'UTF8') WHERE notification_id = %s",
            (nid,),
        ).rowcount
        conn.execute("ALTER TABLE ledger_events ENABLE TRIGGER ledger_events_append_only")
    assert changed == 1
    assert nid < chain["latest_link"]["last_notification_id"]  # not simply the last event

    done = run_verify(database_url, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    after = json.loads(done.stdout)
    assert after["checks"]["chain_intact"] is False
    assert after["checks"]["append_only_guard"] is True  # re-enabled: only the chain tells
    broken = after["chain"]["broken_at"]
    assert (broken["notification_id"], broken["originator_id"], broken["originator_version"], broken["topic"]) == (
        nid, str(originator_id), version, topic,
    )
    assert any(p.startswith(f"chain_intact: the chain breaks at notification {nid} ") for p in after["problems"])
    # the stored latest link is what it was, and the events no longer lead to it
    assert after["chain"]["latest_link"] == chain["latest_link"]
    now = health(database_url)["chain"]
    assert now == kept
    assert after["chain"]["recomputed_digest"] != now["digest"]

    text = run_verify(database_url)  # the human output names the event too
    assert text.returncode == 1
    assert "FAIL chain_intact" in text.stdout
    assert f"the chain breaks at notification {nid} (originator {originator_id} version {version}" in text.stdout
    assert f"chain link {kept['link_id']} {kept['digest']}" in text.stdout


@pytest.mark.integration
def test_a_batch_whose_save_fails_leaves_no_link(database_url: str) -> None:
    book(database_url, [contribution("340100", "resident", 100_000)])
    ledger = open_ledger(database_url)
    recorder = ledger_recorder(ledger)
    before, head = counts(database_url), chain_of(database_url).latest_link
    assert before[1] == 2
    with psycopg.connect(database_url) as conn:
        stored = conn.execute(
            "SELECT originator_id, originator_version, topic, state FROM ledger_events"
            " ORDER BY notification_id DESC LIMIT 1"
        ).fetchone()
    assert stored is not None
    new = StoredEvent(uuid.uuid4(), 1, "tests.test_chain:New", b"{}")
    conflicting = StoredEvent(stored[0], stored[1], stored[2], bytes(stored[3]))  # the version is taken
    with pytest.raises(IntegrityError):
        recorder.insert_events([new, conflicting])
    assert counts(database_url) == before
    assert chain_of(database_url).latest_link == head

    # a failure after the link was written takes the link with the events
    extend = recorder.chain.extend

    def extend_then_fail(*args: Any) -> None:
        extend(*args)
        raise RuntimeError("the batch fails after its link")

    recorder.chain.extend = extend_then_fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="after its link"):
        recorder.insert_events([new])
    recorder.chain.extend = extend  # type: ignore[method-assign]
    assert counts(database_url) == before
    assert chain_of(database_url).latest_link == head

    record_batch(ledger, inbound([contribution("340100", "resident", 5_000)], first_offset=1))
    ledger.close()
    events, links = counts(database_url)
    assert links == before[1] + 1 and events > before[0]
    report = chain_of(database_url)
    assert report.ok, report.problem
    assert head is not None and report.latest_link is not None
    assert report.latest_link["previous_digest"] == head["digest"]


@pytest.mark.integration
def test_two_ledgers_writing_concurrently_keep_one_unbroken_chain(database_url: str) -> None:
    open_ledger(database_url).close()  # the schema and the first link
    batches, size = 25, 4
    start = threading.Barrier(2)
    spans: dict[str, tuple[float, float]] = {}
    errors: list[BaseException] = []

    def writer(city: str, partition: int) -> None:
        try:
            ledger = open_ledger(database_url)
            start.wait()
            began = time.monotonic()
            for b in range(batches):
                events = [contribution(city, "resident", 1_000 + b * size + i) for i in range(size)]
                record_batch(ledger, inbound(events, partition, b * size))
            spans[city] = (began, time.monotonic())
            ledger.close()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(city, p)) for p, city in enumerate(("340100", "340200"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    (a0, a1), (b0, b1) = spans.values()
    assert a0 < b1 and b0 < a1, "the two writers ran at the same time"

    report = chain_of(database_url)
    assert report.ok, report.problem
    events, links = counts(database_url)
    assert links == 1 + 2 * batches  # one link per committed batch, none for the retried ones
    assert report.links == links and report.events == events
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT last_notification_id, events, digest, previous_digest FROM ledger_chain ORDER BY link_id"
        ).fetchall()
        ids = [int(n) for (n,) in conn.execute("SELECT notification_id FROM ledger_events ORDER BY 1").fetchall()]
    for earlier, later in itertools.pairwise(rows):
        assert bytes(later[3]) == bytes(earlier[2])  # one line, no fork
    assert sum(n for _, n, _, _ in rows) == len(ids) and rows[-1][0] == ids[-1]


@pytest.mark.integration
def test_a_store_recorded_before_the_chain_gets_a_first_link_covering_all_of_it(database_url: str) -> None:
    book(database_url, [contribution("340100", "resident", 100_000)], [claim("340100", "resident", 1_000)])
    with psycopg.connect(database_url, autocommit=True) as conn:  # as a store of an earlier version was
        conn.execute("DROP FUNCTION ledger_chain_head()")
        conn.execute("DROP TABLE ledger_chain")
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM ledger_events ORDER BY 1"
        ).fetchall()
        assert latest_link(conn) is None
    assert health(database_url)["chain"] is None

    open_ledger(database_url).close()  # the admin opens it: the chain and its first link
    leaves = b"".join(event_leaf(n, o, v, t, hashlib.sha256(bytes(s)).digest()) for n, o, v, t, s in rows)
    with psycopg.connect(database_url) as conn:
        first = latest_link(conn)
    assert first is not None
    assert (first["events"], first["last_notification_id"], first["previous_digest"]) == (
        len(rows), rows[-1][0], GENESIS.hex(),
    )
    assert first["digest"] == link_digest(GENESIS, rows[-1][0], len(rows), leaves).hex()
    assert chain_of(database_url).ok

    book(database_url, [contribution("340200", "employee", 3_000)])
    report = chain_of(database_url)
    assert report.ok, report.problem
    assert report.links == 2 and report.latest_link is not None
    assert report.latest_link["previous_digest"] == first["digest"]


@pytest.mark.integration
def test_an_event_recorded_without_its_link_is_named(database_url: str) -> None:
    book(database_url, [contribution("340100", "resident", 100_000)])
    with psycopg.connect(database_url, autocommit=True) as conn:  # INSERT is allowed, but not through the ledger
        forged = conn.execute(
            "INSERT INTO ledger_events (originator_id, originator_version, topic, state)"
            " VALUES (%s, 1, 'ledger.aggregates:Fund.Opened', '{}') RETURNING notification_id",
            (uuid.uuid4(),),
        ).fetchone()
    assert forged is not None
    report = chain_of(database_url)
    assert not report.ok and report.broken_at is not None
    assert report.broken_at["notification_id"] == forged[0]
    assert "no link covers it" in report.problem


@pytest.mark.integration
def test_the_writer_adds_links_and_can_neither_change_nor_remove_them(database_url: str) -> None:
    prepare_database(database_url, writer_password=WRITER_PASSWORD, reader_password=READER_PASSWORD)
    writer_url = role_url(database_url, "pooling_ledger", WRITER_PASSWORD)
    ledger = open_ledger(writer_url)
    record_batch(ledger, inbound([contribution("340100", "resident", 5_000)]))
    ledger.close()
    with psycopg.connect(writer_url, autocommit=True) as writer:
        head = latest_link(writer)
        assert head is not None and head["link_id"] >= 2
        for statement, error, message in [
            # the writer holds SELECT and INSERT only (storage.roles); the guard is behind that
            ("UPDATE ledger_chain SET digest = previous_digest", psycopg.errors.InsufficientPrivilege,
             "permission denied"),
            ("UPDATE ledger_chain SET recorded_at = now()", psycopg.errors.InsufficientPrivilege,
             "permission denied"),
            ("DELETE FROM ledger_chain", (psycopg.errors.RaiseException, psycopg.errors.InsufficientPrivilege),
             f"{GUARD}|permission denied"),
            ("TRUNCATE ledger_chain", psycopg.errors.InsufficientPrivilege, "permission denied"),
            ("ALTER TABLE ledger_chain DISABLE TRIGGER ledger_chain_append_only",
             psycopg.errors.InsufficientPrivilege, "must be owner"),
            ("DROP TABLE ledger_chain", psycopg.errors.InsufficientPrivilege, "must be owner"),
            ("DROP FUNCTION ledger_chain_head()", psycopg.errors.InsufficientPrivilege, "must be owner"),
            (("INSERT INTO ledger_chain (last_notification_id, events, event_digests, digest, previous_digest)"
              " SELECT last_notification_id + 1, 0, '', digest, previous_digest FROM ledger_chain"
              " ORDER BY link_id DESC LIMIT 1"), psycopg.errors.UniqueViolation, "previous_digest"),
        ]:
            with pytest.raises(error, match=message):  # type: ignore[arg-type]
                writer.execute(statement)
    with psycopg.connect(role_url(database_url, "pooling_reader", READER_PASSWORD), autocommit=True) as reader:
        assert latest_link(reader) == head  # through the head function, SELECT on the table or not
    with psycopg.connect(database_url, autocommit=True) as admin:
        assert admin.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'ledger_chain'::regclass"
            " AND NOT tgisinternal ORDER BY tgname"
        ).fetchall() == [("ledger_chain_append_only", "O"), ("ledger_chain_no_truncate", "O")]
        assert verify_chain(admin).ok
