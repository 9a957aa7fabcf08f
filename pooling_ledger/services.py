"""Where PostgreSQL and Kafka are: the configured ones, or the embedded servers.

With `DATABASE_URL` unset, the embedded PostgreSQL serves `{POOLING_DATA_DIR}/postgres`
(kept between runs; a server already running on it, e.g. under `demo`, is reused).
With `KAFKA_BOOTSTRAP_SERVERS` unset, a running embedded broker announced in
`{POOLING_DATA_DIR}/kafka.json` is reused, or one is started for this process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from pooling_ledger.embedded import EmbeddedKafka, EmbeddedPostgres, ensure_topics
from pooling_ledger.settings import Settings

log = structlog.get_logger("services")


class ServiceUnavailable(RuntimeError):
    """A service the command needs is neither configured nor running."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_postgres_url(data_dir: Path) -> str | None:
    """The URL of a live embedded server on `data_dir` (postmaster.pid: pid, ..., port)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return f"postgresql://postgres@127.0.0.1:{port}/postgres" if _pid_alive(pid) else None


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    if settings.database_url:
        yield settings.database_url
        return
    data_dir = settings.data_dir.absolute() / "postgres"
    url = _running_postgres_url(data_dir)
    if url is not None:
        yield url
        return
    with EmbeddedPostgres(data_dir) as server:
        yield server.url


def _announced_broker(settings: Settings) -> str | None:
    try:
        announced = json.loads((settings.data_dir / "kafka.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return str(announced["bootstrap_servers"]) if _pid_alive(int(announced["pid"])) else None


@contextmanager
def kafka(settings: Settings, *, start: bool = True) -> Iterator[str]:
    """The broker's bootstrap servers, with the ledger's topics created if missing."""
    bootstrap = settings.kafka_bootstrap_servers or _announced_broker(settings)
    if bootstrap is not None:
        ensure_topics(bootstrap, topic_partitions(settings))
        yield bootstrap
        return
    if not start:
        raise ServiceUnavailable(
            "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS, or keep `pooling-ledger demo` "
            "or `pooling-ledger consume` running (they start an embedded broker)"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    announcement = settings.data_dir / "kafka.json"
    with EmbeddedKafka(log_dir=settings.data_dir) as broker:
        ensure_topics(broker.bootstrap_servers, topic_partitions(settings))
        announcement.write_text(
            json.dumps({"bootstrap_servers": broker.bootstrap_servers, "pid": os.getpid()})
        )
        try:
            yield broker.bootstrap_servers
        finally:
            announcement.unlink(missing_ok=True)


def topic_partitions(settings: Settings) -> dict[str, int]:
    return {
        settings.events_topic: settings.topic_partitions,
        settings.ledger_topic: settings.topic_partitions,
        settings.rejections_topic: settings.topic_partitions,
    }
