"""The consume loop: ingest a batch, relay its outcomes, until stopped or idle."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from consumers import metrics, relay_process
from consumers.ingest import Ingestor
from consumers.relay import Relay
from storage import DB_RETRY_MAX_S, DatabaseRetry, RetryStopped, refresh_connections

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

    def __init__(self, relay: Relay, retry: DatabaseRetry | None = None) -> None:
        super().__init__(name="relay", daemon=True)
        self.relay = relay
        self.retry = retry or DatabaseRetry(on_retry=metrics.count_retry)
        self.stopping = threading.Event()
        relay.should_stop = self.stopping.is_set  # bounds its waits on the broker once stopping
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                published = self.retry.call(
                    self.relay.run_until_caught_up, what="relay",
                    reconnect=lambda: refresh_connections(self.relay.ledger),
                    should_stop=self.stopping.is_set,
                )
                if not published:
                    self.stopping.wait(RELAY_IDLE_WAIT_S)
        except RetryStopped:
            pass
        except Exception as error:  # noqa: BLE001 - surfaced by check(): a relay failure stops the consumer
            self.error = error

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError("the relay to the outcome topics failed") from self.error

    def stop(self) -> None:
        """Stops after publishing whatever is booked."""
        self.stopping.set()
        self.join(RELAY_JOIN_TIMEOUT_S)
        self.check()
        self.relay.run_until_caught_up()


class RelayProcess:
    """The relay in a process of its own, so it runs on another core than the booking.

    The child dies with its parent (PR_SET_PDEATHSIG), and publishes only while it holds
    the relay's PostgreSQL lease, so a crash of either leaves nothing half-done.
    """

    def __init__(
        self, database_url: str, bootstrap_servers: str, ledger_topic: str, rejections_topic: str,
        db_retry_max_s: float = DB_RETRY_MAX_S,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.stopping = context.Event()
        self.process = context.Process(
            target=relay_process.main,
            args=(
                os.getpid(), database_url, bootstrap_servers, ledger_topic, rejections_topic,
                self.stopping, db_retry_max_s,
            ),
            name="relay",
            daemon=True,
        )

    def start(self) -> None:
        self.process.start()

    def check(self) -> None:
        if not self.process.is_alive() and self.process.exitcode not in (None, 0):
            raise RuntimeError(f"the relay process failed (exit code {self.process.exitcode})")

    def stop(self) -> None:
        """Stops after publishing whatever is booked."""
        self.stopping.set()
        self.process.join(RELAY_JOIN_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            raise RuntimeError("the relay process did not stop in time")
        self.check()


RelayWorker = RelayThread | RelayProcess


def consume(
    ingestor: Ingestor,
    relay: Relay | RelayProcess,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    idle_exit_s: float | None = None,
    retry: DatabaseRetry | None = None,
    between_batches: Callable[[], None] = lambda: None,
) -> ConsumeStats:
    """Runs until `should_stop()` or, with `idle_exit_s`, once nothing arrived for that long.
    `between_batches` is called after each batch (the process's full garbage collections).

    `relay` publishes from a thread of this process (a `Relay`) or from its own process.
    A batch that fails on a lost PostgreSQL connection is decided again once it is back
    (for `retry.max_s` at most, then the error stops the loop).
    """
    retry = retry or DatabaseRetry(on_retry=metrics.count_retry)
    worker: RelayWorker = RelayThread(relay, retry) if isinstance(relay, Relay) else relay
    with relay_process.group_signals_held():  # a group's SIGTERM is this process's to handle
        worker.start()
    try:
        stats = _ingest(ingestor, worker, should_stop, idle_exit_s, retry, between_batches)
    finally:
        worker.stop()
    log.info("consume_stopped", batches=stats.batches, **dict(stats.outcomes))
    return stats


def _ingest(
    ingestor: Ingestor,
    relay_thread: RelayWorker,
    should_stop: Callable[[], bool],
    idle_exit_s: float | None,
    retry: DatabaseRetry,
    between_batches: Callable[[], None],
) -> ConsumeStats:
    stats = ConsumeStats()
    idle_since: float | None = None
    while not should_stop():
        relay_thread.check()
        try:
            outcomes = retry.call(
                ingestor.poll_once, what="record_batch",
                reconnect=lambda: refresh_connections(ingestor.ledger), should_stop=should_stop,
            )
        except RetryStopped:
            break  # the unsaved batch is read again from the stored positions next time
        between_batches()
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
