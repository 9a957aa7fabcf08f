"""The consume loop: ingest a batch, relay its outcomes, until stopped or idle."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from consumers.ingest import Ingestor
from consumers.relay import Relay

log = structlog.get_logger("consumers.runner")

RELAY_IDLE_WAIT_S = 0.05
RELAY_JOIN_TIMEOUT_S = 60


@dataclass
class ConsumeStats:
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def messages(self) -> int:
        return sum(self.outcomes.values())


class RelayThread(threading.Thread):
    """Publishes outcomes while the next batch is being decided (the two wait on different I/O)."""

    def __init__(self, relay: Relay) -> None:
        super().__init__(name="relay", daemon=True)
        self.relay = relay
        self.stopping = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                if not self.relay.run_until_caught_up():
                    self.stopping.wait(RELAY_IDLE_WAIT_S)
        except Exception as error:  # noqa: BLE001 - surfaced by check(): a relay failure stops the consumer
            self.error = error

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError("the relay to the outcome topics failed") from self.error

    def stop(self) -> None:
        self.stopping.set()
        self.join(RELAY_JOIN_TIMEOUT_S)


def consume(
    ingestor: Ingestor,
    relay: Relay,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    idle_exit_s: float | None = None,
) -> ConsumeStats:
    """Runs until `should_stop()` or, with `idle_exit_s`, once nothing arrived for that long."""
    relay_thread = RelayThread(relay)
    relay_thread.start()
    try:
        stats = _ingest(ingestor, relay_thread, should_stop, idle_exit_s)
    finally:
        relay_thread.stop()
    relay_thread.check()
    relay.run_until_caught_up()
    log.info("consume_stopped", batches=stats.batches, **dict(stats.outcomes))
    return stats


def _ingest(
    ingestor: Ingestor,
    relay_thread: RelayThread,
    should_stop: Callable[[], bool],
    idle_exit_s: float | None,
) -> ConsumeStats:
    stats = ConsumeStats()
    idle_since: float | None = None
    while not should_stop():
        relay_thread.check()
        outcomes = ingestor.poll_once()
        if outcomes:
            stats.batches += 1
            stats.outcomes.update(o.status for o in outcomes)
            stats.reasons.update(o.reason for o in outcomes if o.reason)
            idle_since = None
            continue
        if idle_exit_s is None:
            continue
        now = time.monotonic()
        if idle_since is None:
            idle_since = now
        elif now - idle_since >= idle_exit_s and ingestor.lag() == 0:
            break
    return stats
