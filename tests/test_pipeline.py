"""Kafka → ledger → PostgreSQL → Kafka, against the real embedded PostgreSQL and broker."""

from __future__ import annotations

import json
from collections import Counter

import psycopg
import pytest

from ledger.audit import FUND_EVENT_TOPICS, fold
from ledger.policy import load_packaged_policy
from pooling_ledger.simulate import Simulation
from storage import open_ledger
from tests.pipeline_support import (
    claim,
    contribution,
    expected_balances,
    publish,
    read_all,
    run_pipeline,
)

pytestmark = pytest.mark.integration


def trial_balance(ledger):  # type: ignore[no-untyped-def]
    return fold(e for _, e in ledger.notifications(FUND_EVENT_TOPICS))


def test_published_events_end_as_balances_equal_to_independent_totals(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    sim = Simulation(load_packaged_policy(), seed=11)
    events = sim.clean_stream(events_per_city=40, opening_balance_fen_max=10**8)
    publish(kafka_bootstrap, topics["events"], events)

    ledger, stats = run_pipeline(database_url, kafka_bootstrap, topics, batch_size_max=100)

    assert stats.outcomes == Counter(accepted=len(events))
    expected = expected_balances(events)
    trial = trial_balance(ledger)
    assert {a: b for a, b in trial.balances_fen.items() if b or a in expected} == expected
    assert trial.total_fen == 0
    for account, balance in expected.items():
        if account.startswith("city:"):
            fund = ledger.fund(account)
            assert fund is not None and fund.balance_fen == balance, account
    published = read_all(kafka_bootstrap, topics["ledger"])
    assert sorted(v["event_id"] for *_, v in published) == sorted(e["event_id"] for e in events)


def test_same_event_id_is_booked_once_and_a_changed_payload_is_event_id_conflict(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    first = contribution("340100", "resident", 50_000)
    changed = {**first, "amount_fen": 70_000}
    publish(kafka_bootstrap, topics["events"], [first, first])
    ledger, _ = run_pipeline(database_url, kafka_bootstrap, topics)
    publish(kafka_bootstrap, topics["events"], [first, changed])  # again, in a later batch
    ledger, stats = run_pipeline(database_url, kafka_bootstrap, topics)

    assert stats.outcomes == Counter(duplicate=1, rejected=1)
    assert ledger.fund("city:340100:resident:pooling").balance_fen == 50_000
    rejections = [v for *_, v in read_all(kafka_bootstrap, topics["rejections"])]
    assert [(r["event_id"], r["reason"]) for r in rejections] == [(first["event_id"], "event_id_conflict")]
    assert rejections[0]["payload"]["amount_fen"] == 70_000
    accepted = [v for *_, v in read_all(kafka_bootstrap, topics["ledger"])]
    assert [v["event_id"] for v in accepted] == [first["event_id"]]


def test_bad_messages_are_rejected_and_do_not_block_their_partition(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    before = contribution("340100", "resident", 10_000)
    float_amount = {**contribution("340100", "resident", 1), "amount_fen": 100.0}
    after = [contribution("340100", "resident", 20_000), contribution("340100", "employee", 30_000, "employer")]
    publish(
        kafka_bootstrap,
        topics["events"],
        [before, (b"340100", b"\xff not json {"), float_amount, *after],
    )
    ledger, stats = run_pipeline(database_url, kafka_bootstrap, topics)

    assert stats.outcomes == Counter(accepted=3, rejected=2)
    assert ledger.fund("city:340100:resident:pooling").balance_fen == 30_000
    assert ledger.fund("city:340100:employee:pooling").balance_fen == 30_000
    rejections = sorted(
        (v for *_, v in read_all(kafka_bootstrap, topics["rejections"])), key=lambda v: v["source"]["offset"]
    )
    assert [r["reason"] for r in rejections] == ["invalid_json", "invalid_schema"]
    invalid_json, invalid_schema = rejections
    assert invalid_json["payload_encoding"] == "base64"
    import base64

    assert base64.b64decode(invalid_json["payload"]) == b"\xff not json {"
    assert invalid_json["source"] == {"topic": topics["events"], "partition": invalid_json["source"]["partition"], "offset": 1}
    assert invalid_schema["event_id"] == float_amount["event_id"]
    assert "amount_fen" in invalid_schema["detail"]
    assert invalid_schema["payload"] == json.loads(json.dumps(float_amount))


def test_claim_above_fund_balance_is_rejected_insufficient_funds_and_nothing_is_booked(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    too_big = claim("340200", "employee", 60_001)
    publish(
        kafka_bootstrap,
        topics["events"],
        [contribution("340200", "employee", 60_000, "employer"), too_big, claim("340200", "employee", 60_000)],
    )
    ledger, stats = run_pipeline(database_url, kafka_bootstrap, topics)

    assert stats.outcomes == Counter(accepted=2, rejected=1)
    assert ledger.fund("city:340200:employee:pooling").balance_fen == 0
    receipt = ledger.receipt(too_big["event_id"])
    assert receipt is not None and receipt.status == "rejected" and receipt.reason == "insufficient_funds"
    assert receipt.transfer is None
    trial = trial_balance(ledger)
    assert trial.balances_fen["external:institutions:340200"] == 60_000
    assert trial.total_fen == 0


def test_event_store_is_append_only_in_postgresql(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    publish(kafka_bootstrap, topics["events"], [contribution("340100", "resident", 1_000)])
    run_pipeline(database_url, kafka_bootstrap, topics)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in (
            "UPDATE ledger_events SET state = state",
            "DELETE FROM ledger_events",
            "TRUNCATE ledger_events",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM ledger_events").fetchone()[0] > 0


def test_stored_position_beyond_partition_end_is_reported_and_nothing_is_double_booked(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    """A broker that lost its data gets the same events again: they are recognised, not re-booked."""
    events = [contribution("340100", "resident", 1_000 + i) for i in range(5)]
    publish(kafka_bootstrap, topics["events"], events)
    ledger, _ = run_pipeline(database_url, kafka_bootstrap, topics)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE kafka_positions SET next_offset = next_offset + 1000")

    new = contribution("340100", "resident", 7)
    publish(kafka_bootstrap, topics["events"], [new])
    from consumers.ingest import Ingestor

    ledger = open_ledger(database_url)
    ingestor = Ingestor(ledger, kafka_bootstrap, topics["events"], "test-consumer", 100, 200)
    assert [(r.stored_offset, r.found) for r in ingestor.resets] == [(1005, "missing")]
    ingestor.close()
    ledger, stats = run_pipeline(database_url, kafka_bootstrap, topics)
    assert stats.outcomes == Counter(duplicate=5, accepted=1)
    assert ledger.fund("city:340100:resident:pooling").balance_fen == sum(e["amount_fen"] for e in [*events, new])


def test_a_fund_past_its_snapshot_interval_is_rebuilt_from_its_snapshot_to_the_same_state(
    database_url: str,
) -> None:
    """Snapshots keep reconstruction short; a fresh ledger must read the same fund from one."""
    from consumers.booking import record_batch
    from consumers.inbound import Inbound, SourcePosition
    from ledger.application import FUND_SNAPSHOT_INTERVAL

    # One batch records one event per fund it moves: batches of 1 to 3 messages take the fund
    # past its snapshot interval.
    batches = FUND_SNAPSHOT_INTERVAL + 5
    events = [contribution("340100", "resident", 100 + i) for i in range(2 * batches)]
    ledger = open_ledger(database_url)
    start = 0
    for n in range(batches):
        size = 1 + n % 3 if n < batches - 1 else len(events) - start
        record_batch(
            ledger, [Inbound.parse(json.dumps(e).encode(), SourcePosition("t", 0, start + i))
             for i, e in enumerate(events[start : start + size])]
        )
        start += size
    assert start == len(events)
    ledger.close()
    with psycopg.connect(database_url) as conn:
        snapshots = conn.execute("SELECT count(*) FROM ledger_snapshots").fetchone()
    assert snapshots is not None and snapshots[0] >= 1

    fresh = open_ledger(database_url)
    fund = fresh.fund("city:340100:resident:pooling")
    assert fund is not None
    assert fund.balance_fen == sum(e["amount_fen"] for e in events)
    assert fund.total_fen(2025, "contribution.individual") == fund.balance_fen
    assert fund.version == batches + 1  # opened, then one event per batch
    assert fund.booking_count == len(events)
    fresh.close()
