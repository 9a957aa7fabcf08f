"""Crash test: the consumer is SIGKILLed mid-stream, restarted, and books every event exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import psycopg
import pytest

from ledger.audit import FUND_EVENT_TOPICS, fold
from ledger.policy import load_packaged_policy
from pooling_ledger.simulate import Simulation
from storage import open_ledger
from tests.pipeline_support import expected_balances, publish, read_all

pytestmark = pytest.mark.integration

EVENTS_PER_CITY = 300  # 16 cities: 4,800 movements + 32 openings
KILLS = 5
PROGRESS_WAIT_S = 60
FINAL_RUN_TIMEOUT_S = 180


def consumer_process(
    database_url: str,
    bootstrap: str,
    topics: dict[str, str],
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "POOLING_EVENTS_TOPIC": topics["events"],
        "POOLING_LEDGER_TOPIC": topics["ledger"],
        "POOLING_REJECTIONS_TOPIC": topics["rejections"],
        "POOLING_BATCH_SIZE_MAX": "40",
        "POOLING_POLL_TIMEOUT_MS": "100",
        "POOLING_LOG_LEVEL": "error",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pooling_ledger.cli", "consume", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def receipt_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        try:
            row = conn.execute(
                "SELECT count(*) FROM ledger_events WHERE originator_version = 1"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def test_consumer_killed_with_sigkill_repeatedly_books_every_event_exactly_once(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    events = Simulation(load_packaged_policy(), seed=5).clean_stream(
        EVENTS_PER_CITY, opening_balance_fen_max=10**8
    )
    publish(kafka_bootstrap, topics["events"], events)

    kills = 0
    for kill in range(KILLS):
        process = consumer_process(database_url, kafka_bootstrap, topics)
        start = receipt_count(database_url)
        target = start + 150 + 97 * kill  # a different point in the stream each time
        deadline = time.monotonic() + PROGRESS_WAIT_S
        while (
            receipt_count(database_url) < target
            and time.monotonic() < deadline
            and process.poll() is None
        ):
            time.sleep(0.02)
        assert process.poll() is None, (
            process.stderr.read().decode()[-2000:] if process.stderr else ""
        )
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills == KILLS
    assert receipt_count(database_url) < len(events), "the kills should have come before the end"

    final = consumer_process(database_url, kafka_bootstrap, topics, "--idle-exit", "2")
    _, err = final.communicate(timeout=FINAL_RUN_TIMEOUT_S)
    assert final.returncode == 0, err.decode()[-3000:]

    ledger = open_ledger(database_url)
    trial = fold(e for _, e in ledger.notifications(FUND_EVENT_TOPICS))
    expected = expected_balances(events)
    assert {a: b for a, b in trial.balances_fen.items() if b or a in expected} == expected
    assert trial.total_fen == 0
    assert trial.transfer_count == len(events)  # one fund event per transfer: no double booking
    with psycopg.connect(database_url) as conn:
        duplicates = conn.execute(
            "SELECT count(*) FROM (SELECT originator_id FROM ledger_events"
            " WHERE originator_version = 1 GROUP BY originator_id HAVING count(*) > 1) d"
        ).fetchone()
    assert duplicates == (0,)
    for e in events:
        receipt = ledger.receipt(e["event_id"])
        assert receipt is not None and receipt.status == "accepted", e
    published = Counter(v["event_id"] for *_, v in read_all(kafka_bootstrap, topics["ledger"]))
    assert published == Counter({e["event_id"]: 1 for e in events}), (
        "relay lost or repeated a message"
    )


def test_two_consumers_in_a_group_share_the_partitions_and_book_every_event_once(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    """POOLING_CONSUMER_MODE=group: two processes split the partitions; one relay publishes."""
    events = Simulation(load_packaged_policy(), seed=9).clean_stream(
        60, opening_balance_fen_max=10**8
    )
    publish(kafka_bootstrap, topics["events"], events)
    group = {"POOLING_CONSUMER_MODE": "group", "POOLING_CONSUMER_GROUP": f"g-{topics['events']}"}
    first = consumer_process(database_url, kafka_bootstrap, topics, "--idle-exit", "8", env=group)
    second = consumer_process(database_url, kafka_bootstrap, topics, "--idle-exit", "8", env=group)
    results = []
    for process in (first, second):
        out, err = process.communicate(timeout=FINAL_RUN_TIMEOUT_S)
        assert process.returncode == 0, err.decode()[-3000:]
        results.append(json.loads(out.decode().splitlines()[-1]))

    booked = [r.get("accepted", 0) + r.get("duplicate", 0) for r in results]
    assert sum(r.get("accepted", 0) for r in results) == len(events)
    assert all(n > 0 for n in booked), f"a consumer got no partition: {results}"
    ledger = open_ledger(database_url)
    trial = fold(e for _, e in ledger.notifications(FUND_EVENT_TOPICS))
    assert trial.transfer_count == len(events)
    assert {a: b for a, b in trial.balances_fen.items() if b} == {
        a: b for a, b in expected_balances(events).items() if b
    }
    ledger.close()
    published = Counter(v["event_id"] for *_, v in read_all(kafka_bootstrap, topics["ledger"]))
    assert published == Counter({e["event_id"]: 1 for e in events}), "two relays published"


def test_the_relay_process_dies_with_a_consumer_killed_by_sigkill(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    """An orphaned relay would hold the relay's lease behind the back of the next consumer."""
    import psutil

    publish(kafka_bootstrap, topics["events"], Simulation(load_packaged_policy(), seed=2).clean_stream(5))
    process = consumer_process(database_url, kafka_bootstrap, topics)
    deadline = time.monotonic() + PROGRESS_WAIT_S
    relays: list[psutil.Process] = []
    while time.monotonic() < deadline and not relays and process.poll() is None:
        relays = [
            child for child in psutil.Process(process.pid).children()
            if "spawn_main" in " ".join(child.cmdline())
        ]
        time.sleep(0.1)
    assert relays, "the consumer started no relay process"
    time.sleep(1.0)  # past the relay's start-up: its life is tied to the consumer's by now
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(relays, timeout=10)
    assert not alive, f"relay processes outlived their consumer: {alive}"
