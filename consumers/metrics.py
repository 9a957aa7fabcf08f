"""What an operator scrapes from `consume` (and `serve`): Prometheus metrics.

One registry per process. `consume --metrics-port P` serves it on `http://host:P/metrics`;
`serve` adds `/metrics` to the read API. Names follow Prometheus conventions: a unit
suffix (`_seconds`), `_total` for counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Batch latencies span a few milliseconds (a handful of events) to seconds (a full batch).
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter(
    "pooling_events_total",
    "Upstream messages decided by this consumer, by fate and rejection reason.",
    ("status", "reason"),
    registry=REGISTRY,
)
UNPROCESSABLE = Counter(
    "pooling_unprocessable_total",
    "Messages rejected `unprocessable`: an unexpected error while deciding them (a bug to look at).",
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "pooling_batch_seconds",
    "Time to decide and save one poll batch (one PostgreSQL transaction).",
    buckets=BATCH_SECONDS_BUCKETS,
    registry=REGISTRY,
)
RETRIES = Counter(
    "pooling_retries_total",
    "Retries after a transient failure, by what was retried.",
    ("kind",),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "pooling_consumer_lag_messages",
    "Messages on the broker not yet booked, per partition (from the broker's reported ends).",
    ("topic", "partition"),
    registry=REGISTRY,
)


def count_retry(what: str) -> None:
    """Counts one retry of `what` (the `on_retry` of `storage.retry.DatabaseRetry`)."""
    RETRIES.labels(what).inc()


class Decided(Protocol):
    """What the metrics need of an outcome."""

    @property
    def status(self) -> str: ...

    @property
    def reason(self) -> str | None: ...


def record_outcomes(outcomes: Iterable[Decided]) -> None:
    """Counts a batch's outcomes by fate and reason."""
    for outcome in outcomes:
        reason = outcome.reason or ""
        EVENTS.labels(outcome.status, reason).inc()
        if reason == "unprocessable":
            UNPROCESSABLE.inc()


def record_lag(lag_by_partition: Mapping[tuple[str, int], int]) -> None:
    for (topic, partition), lag in lag_by_partition.items():
        CONSUMER_LAG.labels(topic, str(partition)).set(max(0, lag))


class ReadingCollector(Collector):
    """Gauges read when scraped (e.g. from PostgreSQL), so they are never stale."""

    def __init__(self, readings: Mapping[str, tuple[str, Callable[[], int | None]]]) -> None:
        self.readings = readings

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (documentation, read) in self.readings.items():
            try:
                value = read()
            except Exception:  # noqa: BLE001 - a scrape must not fail because a source is down
                value = None
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serves this process's registry on `http://host:port/metrics` (a daemon thread)."""
    start_http_server(port, addr=host, registry=REGISTRY)
