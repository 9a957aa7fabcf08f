"""The consume loop: ingest a batch, relay its outcomes, until stopped or idle."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from consumers.ingest import Ingestor
from consumers.relay import Relay

log = structlog.get_logger("consumers.runner")

IDLE_CHECK_INTERVAL_S = 0.5


@dataclass
class ConsumeStats:
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def messages(self) -> int:
        return sum(self.outcomes.values())


def consume(
    ingestor: Ingestor,
    relay: Relay,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    idle_exit_s: float | None = None,
) -> ConsumeStats:
    """Runs until `should_stop()` or, with `idle_exit_s`, once nothing arrived for that long."""
    stats = ConsumeStats()
    relay.run_until_caught_up()  # whatever a previous run booked but did not publish
    idle_since: float | None = None
    while not should_stop():
        outcomes = ingestor.poll_once()
        if outcomes:
            stats.batches += 1
            stats.outcomes.update(o.status for o in outcomes)
            stats.reasons.update(o.reason for o in outcomes if o.reason)
            relay.run_until_caught_up()
            idle_since = None
            continue
        if idle_exit_s is None:
            continue
        now = time.monotonic()
        if idle_since is None:
            idle_since = now
        elif now - idle_since >= idle_exit_s and ingestor.lag() == 0:
            break
    relay.run_until_caught_up()
    log.info("consume_stopped", batches=stats.batches, **dict(stats.outcomes))
    return stats
