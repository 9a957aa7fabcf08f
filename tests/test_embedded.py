"""Integration tests for the embedded PostgreSQL and Kafka-protocol broker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]

from pooling_ledger.embedded import EmbeddedPostgres, create_database, free_port

pytestmark = pytest.mark.integration

CONSUME_TIMEOUT_S = 15.0
SEND_TIMEOUT_S = 10.0


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A data directory outside pytest's basetemp (which pytest keeps at mode 0700)."""
    root = Path(tempfile.mkdtemp(prefix="pooling-ledger-pgtest-"))
    try:
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536


def test_postgres_fixture_answers(pg_server_url: str, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select version(), current_database()").fetchone()
    assert row is not None
    version, db = row
    assert db.startswith("test_")
    if not os.environ.get("DATABASE_URL"):
        assert "PostgreSQL 18" in version


def test_each_test_gets_its_own_database(pg_server_url: str, database_url: str) -> None:
    other = create_database(pg_server_url, f"other_{uuid.uuid4().hex[:8]}")
    assert other != database_url
    with psycopg.connect(database_url) as a, psycopg.connect(other) as b:
        a.execute("create table t (x int)")
        a.commit()
        exists = b.execute("select to_regclass('public.t') is not null").fetchone()
    assert exists == (False,)


def test_kafka_roundtrip(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    topic = topics["events"]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(topic, key=b"k", value=b"hello", partition=0).get(timeout=SEND_TIMEOUT_S)
        producer.flush()
    finally:
        producer.close()

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        while not values and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
    finally:
        consumer.close()
    assert values == [b"hello"]


def test_topics_have_partitions(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        for name in topics.values():
            assert consumer.partitions_for_topic(name) == {0, 1, 2, 3}
    finally:
        consumer.close()


def test_postgres_keeps_rows_across_restart(pg_dir: Path) -> None:
    server = EmbeddedPostgres(pg_dir, fast=True)
    with server, psycopg.connect(server.url) as conn:
        conn.execute("create table kept (id int primary key, note text)")
        conn.execute("insert into kept values (1, 'a'), (2, 'b')")
    assert not server.running
    server.stop()  # idempotent

    with EmbeddedPostgres(pg_dir, fast=True) as again, psycopg.connect(again.url) as conn:
        rows = conn.execute("select id, note from kept order by id").fetchall()
    assert rows == [(1, "a"), (2, "b")]


def test_stale_pid_file_does_not_block_start(pg_dir: Path) -> None:
    with EmbeddedPostgres(pg_dir, fast=True) as server, psycopg.connect(server.url) as conn:
        conn.execute("create table kept (id int)")
        conn.execute("insert into kept values (7)")

    pid_file = pg_dir / "postmaster.pid"
    assert not pid_file.exists()
    pid_file.write_text(f"{_dead_pid()}\n{pg_dir}\n0\n5432\n\n127.0.0.1\n  0  0\nready\n")

    with EmbeddedPostgres(pg_dir, fast=True) as server, psycopg.connect(server.url) as conn:
        assert conn.execute("select id from kept").fetchall() == [(7,)]


def test_second_server_on_live_data_dir_is_refused(pg_dir: Path) -> None:
    with (
        EmbeddedPostgres(pg_dir, fast=True),
        pytest.raises(RuntimeError, match=re.escape(str(pg_dir))),
    ):
        EmbeddedPostgres(pg_dir, fast=True).start()


def test_fixed_port_is_used(pg_dir: Path) -> None:
    port = free_port()
    with EmbeddedPostgres(pg_dir, port=port, fast=True) as server:
        password = (pg_dir / "postgres.password").read_text().strip()
        assert server.url == f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
