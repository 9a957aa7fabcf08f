"""A broker that loses its log: nothing skipped, nothing booked twice, every outcome published.

These tests run their own memory broker on a fixed port (not the session's shared one) and
restart it on that port, as a crashed Tansu would come back: topics and messages are gone,
while the positions and the relay's marks survive in PostgreSQL.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from consumers.booking import record_batch
from consumers.inbound import Inbound, SourcePosition
from consumers.ingest import Ingestor
from consumers.relay import Relay
from consumers.runner import ConsumeStats, RelayProcess, consume
from ledger.application import Ledger
from pooling_ledger.embedded import EmbeddedKafka, ensure_topics, free_port
from storage import open_ledger
from tests.pipeline_support import contribution, publish, read_all

pytestmark = pytest.mark.integration

PARTITIONS = 4
#: One city per partition of a 4-partition topic (Kafka's murmur2 partitioner): 2, 3, 0, 1.
CITIES = ("340100", "340200", "340400", "340800")
TOPICS = {"events": "bl.pooling.events.v1", "ledger": "bl.pooling.ledger.v1", "rejections": "bl.pooling.rejections.v1"}
CONSUMER = "broker-loss-consumer"
IDLE_EXIT_S = 1.0
#: Generous bound on waiting for the pipeline to book or publish what the test expects.
CATCH_UP_WAIT_S = 180.0
WAIT_STEP_S = 0.5
#: Generous bound on how long the relay may take to stop with the broker down.
RELAY_STOP_BOUND_S = 20.0
RELAY_START_WAIT_S = 5.0


class Broker:
    """A memory broker on a fixed port that can die and come back empty on the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.port = free_port()
        self.server = EmbeddedKafka(log_dir=log_dir, port=self.port)
        self.bootstrap = self.server.start()

    def create_topics(self, *kinds: str) -> None:
        ensure_topics(self.bootstrap, {TOPICS[kind]: PARTITIONS for kind in kinds})

    def lose_everything(self) -> None:
        """Stops the broker and starts a fresh one (no topics, no messages) on the same port."""
        self.server.stop()
        self.server = EmbeddedKafka(log_dir=self.log_dir, port=self.port)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "kafka")
    broker.create_topics("events", "ledger", "rejections")
    try:
        yield broker
    finally:
        broker.stop()


def events(first_amount_fen: int, per_city: int) -> list[dict[str, Any]]:
    return [
        contribution(city, "resident", first_amount_fen + i) for i in range(per_city) for city in CITIES
    ]


def run_once(ledger: Ledger, bootstrap: str) -> tuple[ConsumeStats, Ingestor, Relay]:
    """Consumes what was published (until idle) and relays the outcomes."""
    ingestor = Ingestor(ledger, bootstrap, TOPICS["events"], CONSUMER, 500, 200)
    relay = Relay(ledger, bootstrap, TOPICS["ledger"], TOPICS["rejections"])
    try:
        stats = consume(ingestor, relay, idle_exit_s=IDLE_EXIT_S)
    finally:
        ingestor.close()
        relay.close()
    return stats, ingestor, relay


@contextmanager
def consuming(ledger: Ledger, bootstrap: str) -> Iterator[tuple[Ingestor, Relay, list[ConsumeStats]]]:
    """The consume loop in a thread while the block runs; its stats in the list once stopped."""
    ingestor = Ingestor(ledger, bootstrap, TOPICS["events"], CONSUMER, 500, 200)
    relay = Relay(ledger, bootstrap, TOPICS["ledger"], TOPICS["rejections"])
    stop = threading.Event()
    result: list[ConsumeStats] = []
    runner = threading.Thread(target=lambda: result.append(consume(ingestor, relay, should_stop=stop.is_set)))
    runner.start()
    try:
        yield ingestor, relay, result
    finally:
        stop.set()
        runner.join(CATCH_UP_WAIT_S)
        ingestor.close()
        relay.close()


def balances(ledger: Ledger) -> dict[str, int]:
    found = {}
    for city in CITIES:
        fund = ledger.fund(f"city:{city}:resident:pooling")
        assert fund is not None, city
        found[city] = fund.balance_fen
    return found


def wait_for(what: str, condition: Any) -> None:
    deadline = time.monotonic() + CATCH_UP_WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(WAIT_STEP_S)


def test_new_events_after_a_broker_loss_are_all_booked(broker: Broker, database_url: str) -> None:
    """Stored offsets fall inside the new, longer log: the partitions are read from their start."""
    old = events(1_000, 100)  # 100 per partition: positions stored at offset 100
    publish(broker.bootstrap, TOPICS["events"], old)
    ledger = open_ledger(database_url)
    stats, _, _ = run_once(ledger, broker.bootstrap)
    assert stats.outcomes == Counter(accepted=400)

    broker.lose_everything()
    broker.create_topics("events", "ledger", "rejections")
    new = events(2_000, 250)  # 250 per partition: offset 99 exists again, holding another event
    publish(broker.bootstrap, TOPICS["events"], new)
    with capture_logs() as logs:
        stats, ingestor, relay = run_once(ledger, broker.bootstrap)

    assert stats.outcomes == Counter(accepted=1000)
    # 100 events of 1,000..1,099 fen and 250 of 2,000..2,249 fen per city
    assert balances(ledger) == {city: 104_950 + 531_125 for city in CITIES}
    assert sorted((r.partition, r.stored_offset, r.found) for r in ingestor.resets) == [
        (0, 100, "different"), (1, 100, "different"), (2, 100, "different"), (3, 100, "different"),
    ]
    replaced = sorted((e["partition"], e["stored_offset"]) for e in logs if e["event"] == "source_log_replaced")
    assert replaced == [(0, 100), (1, 100), (2, 100), (3, 100)]
    assert all(e["log_level"] == "error" for e in logs if e["event"] == "source_log_replaced")
    # the output topics lost the 400 outcomes published before: republished with the 1,000 new
    assert sorted((loss.partition, loss.found) for loss in relay.losses) == [
        (0, "missing"), (1, "missing"), (2, "missing"), (3, "missing"),
    ]
    published = [v for *_, v in read_all(broker.bootstrap, TOPICS["ledger"])]
    assert len(published) == 1400
    assert {v["event_id"] for v in published} == {e["event_id"] for e in old + new}


def test_old_events_republished_after_a_broker_loss_are_not_booked_again(
    broker: Broker, database_url: str
) -> None:
    old = events(1_000, 100)
    publish(broker.bootstrap, TOPICS["events"], old)
    ledger = open_ledger(database_url)
    stats, _, _ = run_once(ledger, broker.bootstrap)
    assert stats.outcomes == Counter(accepted=400)

    broker.lose_everything()
    broker.create_topics("events", "ledger", "rejections")
    publish(broker.bootstrap, TOPICS["events"], old)  # the same events, published again
    stats, ingestor, _ = run_once(ledger, broker.bootstrap)

    assert stats.outcomes == Counter(duplicate=400)
    assert balances(ledger) == {city: 104_950 for city in CITIES}
    # same keys and values, but other records (published anew): read again, recognised
    assert sorted((r.partition, r.found) for r in ingestor.resets) == [
        (0, "different"), (1, "different"), (2, "different"), (3, "different"),
    ]
    published = [v for *_, v in read_all(broker.bootstrap, TOPICS["ledger"])]
    assert Counter(v["event_id"] for v in published) == Counter({e["event_id"]: 1 for e in old})


def test_a_broker_lost_while_consume_runs_skips_nothing_and_the_relay_publishes_every_outcome(
    broker: Broker, database_url: str
) -> None:
    """The consumer reconnects to an empty broker on its own; the relay re-creates its topics."""
    bad = [(b"340100", b"{not json")] * 8
    old = events(1_000, 100)
    new = events(2_000, 250)
    new_bad = [(b"340200", b"")] * 12
    ledger = open_ledger(database_url)
    with consuming(ledger, broker.bootstrap) as (ingestor, _, result):
        publish(broker.bootstrap, TOPICS["events"], [*old, *bad])
        wait_for("the first outcomes", lambda: len(read_all(broker.bootstrap, TOPICS["ledger"])) == 400)

        broker.lose_everything()
        broker.create_topics("events")  # the output topics are the relay's to re-create
        publish(broker.bootstrap, TOPICS["events"], [*new, *new_bad])
        wait_for(
            "every outcome on the new broker",
            lambda: len(read_all(broker.bootstrap, TOPICS["ledger"])) >= 1400
            and len(read_all(broker.bootstrap, TOPICS["rejections"])) >= 20,
        )

    assert result[0].outcomes == Counter(accepted=1400, rejected=20)
    assert balances(ledger) == {city: 104_950 + 531_125 for city in CITIES}
    assert {r.partition for r in ingestor.resets} == {0, 1, 2, 3}
    accepted = [v for *_, v in read_all(broker.bootstrap, TOPICS["ledger"])]
    rejected = [v for *_, v in read_all(broker.bootstrap, TOPICS["rejections"])]
    ids = [v["ledger_notification_id"] for v in accepted + rejected]
    assert len(accepted) == 1400
    assert len(rejected) == 20
    assert len(set(ids)) == 1420  # every outcome once: no notification id missing or repeated
    assert {v["event_id"] for v in accepted} == {e["event_id"] for e in old + new}
    assert Counter(v["reason"] for v in rejected) == Counter(invalid_json=20)


def test_an_idle_relay_republishes_what_a_broker_lost_with_nothing_new_to_publish(
    broker: Broker, database_url: str
) -> None:
    """The old events come again (all duplicates): no new outcome makes the relay send, yet the
    outcomes the broker lost are published again."""
    old = events(1_000, 50)
    ledger = open_ledger(database_url)
    with consuming(ledger, broker.bootstrap) as (ingestor, relay, result):
        publish(broker.bootstrap, TOPICS["events"], old)
        wait_for("the first outcomes", lambda: len(read_all(broker.bootstrap, TOPICS["ledger"])) == 200)
        broker.lose_everything()
        broker.create_topics("events", "ledger", "rejections")
        publish(broker.bootstrap, TOPICS["events"], old)
        wait_for("the outcomes again", lambda: len(read_all(broker.bootstrap, TOPICS["ledger"])) >= 200)
        wait_for("the partitions read again", lambda: len(ingestor.resets) >= 4)
        wait_for("the duplicates booked", lambda: ingestor.lag() == 0)

    assert result[0].outcomes == Counter(accepted=200, duplicate=200)
    assert {r.partition for r in ingestor.resets} == {0, 1, 2, 3}
    published = [v for *_, v in read_all(broker.bootstrap, TOPICS["ledger"])]
    assert Counter(v["event_id"] for v in published) == Counter({e["event_id"]: 1 for e in old})
    assert {(loss.topic, loss.partition) for loss in relay.losses} == {
        (TOPICS["ledger"], 0), (TOPICS["ledger"], 1), (TOPICS["ledger"], 2), (TOPICS["ledger"], 3),
    }


def test_the_relay_stops_when_asked_while_the_broker_is_down(broker: Broker, database_url: str) -> None:
    """The relay process, blocked on a broker that went away with a page in flight, stops in time."""
    publish(broker.bootstrap, TOPICS["events"], events(1_000, 25))
    ledger = open_ledger(database_url)
    stats, _, _ = run_once(ledger, broker.bootstrap)
    assert stats.outcomes == Counter(accepted=100)
    relay = RelayProcess(database_url, broker.bootstrap, TOPICS["ledger"], TOPICS["rejections"])
    relay.start()
    try:
        time.sleep(RELAY_START_WAIT_S)  # started and connected: it waits for the next outcomes
        broker.stop()
        # outcomes booked while the broker is away: the relay's page cannot be acknowledged
        more = events(5_000, 10)
        record_batch(ledger, [
            Inbound.parse(json.dumps(e).encode(), SourcePosition(TOPICS["events"], 0, 1_000 + i))
            for i, e in enumerate(more)
        ])
        time.sleep(3 * IDLE_EXIT_S)  # the relay is now failing and backing off
        started = time.monotonic()
        relay.stop()
        stopped_after_s = time.monotonic() - started
    finally:
        if relay.process.is_alive():
            relay.process.kill()
    assert relay.process.exitcode == 0
    assert stopped_after_s < RELAY_STOP_BOUND_S, stopped_after_s
