"""Topics: creating them, reading one whole, and fetching given records, without trusting
reported end offsets.

Some Kafka-protocol brokers report a partition's end (ListOffsets, latest) as the base
offset of its last record batch rather than one past its last record: the Tansu broker
used here does. So "read to the end" keeps polling until the broker has nothing more,
and "is this position beyond the end?" is answered by fetching the record before it.

A broker that lost its log (memory storage, restarted) may hold a new log under the same
topic names whose offsets overlap the old ones: `record_fingerprint` identifies a record by
content, so a position can be checked against the record really before it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

log = structlog.get_logger("consumers.topics")

POLL_TIMEOUT_MS = 500
#: Polls that return nothing, once past the reported end, before a partition counts as read.
EMPTY_POLLS_AT_END = 3
POLLS_MAX = 200
PROBE_POLLS_MAX = 6
KAFKA_REQUEST_TIMEOUT_MS = 5_000
KAFKA_BOOTSTRAP_TIMEOUT_MS = 2_000
TOPIC_CREATE_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    headers: dict[str, str]
    value: Any


def read_topic(bootstrap_servers: str, topic: str) -> list[Message]:
    """Every message on `topic` now, JSON values decoded, in partition and offset order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []  # no such topic (yet)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        messages: list[Message] = []
        empty = 0
        for _ in range(POLLS_MAX):
            batch = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            for tp, records in batch.items():
                messages += [
                    Message(tp.partition, r.offset, {k: v.decode() for k, v in (r.headers or [])}, json.loads(r.value))
                    for r in records
                ]
            past_end = all(consumer.position(tp) >= ends[tp] for tp in tps)
            empty = empty + 1 if not batch and past_end else 0
            if empty >= EMPTY_POLLS_AT_END:
                break
        return sorted(messages, key=lambda m: (m.partition, m.offset))
    finally:
        consumer.close()


def record_exists(bootstrap_servers: str, tp: TopicPartition, offset: int) -> bool:
    """Whether the partition holds a record at `offset` (fetched, not inferred from offsets)."""
    return tp in records_at(bootstrap_servers, {tp: offset})


def _probe_consumer(bootstrap_servers: str) -> KafkaConsumer:
    """A short-lived consumer for one question to the broker, with bounded waits."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS,
        bootstrap_timeout_ms=KAFKA_BOOTSTRAP_TIMEOUT_MS,
    )


def records_at(bootstrap_servers: str, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, ConsumerRecord]:
    """The record at the given offset of each partition, fetched; partitions without one are absent.

    Raises a `kafka.errors.KafkaError` when the broker cannot be reached.
    """
    if not offsets:
        return {}
    consumer = _probe_consumer(bootstrap_servers)
    found: dict[TopicPartition, ConsumerRecord] = {}
    try:
        consumer.assign(list(offsets))
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)
        pending = set(offsets)
        for _ in range(PROBE_POLLS_MAX):
            for tp, records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).items():
                for record in records:
                    if record.offset == offsets[tp]:
                        found[tp] = record
                    if record.offset >= offsets[tp] and tp in pending:
                        pending.discard(tp)
                        consumer.pause(tp)
            if not pending:
                break
        return found
    finally:
        consumer.close()


def log_start_offsets(bootstrap_servers: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The first offset each partition still holds (above 0 once retention deleted records)."""
    if not partitions:
        return {}
    consumer = _probe_consumer(bootstrap_servers)
    try:
        return dict(consumer.beginning_offsets(partitions, timeout_ms=KAFKA_REQUEST_TIMEOUT_MS))
    finally:
        consumer.close()


def record_fingerprint(record: ConsumerRecord) -> bytes:
    """What identifies a record whatever its offset: sha256 of its key, value and timestamp.

    The timestamp tells apart the same event published again into a new log; a position
    whose record differs only so is read again, and receipts recognise the duplicates.
    """
    digest = hashlib.sha256()
    for part in (record.key, record.value, str(record.timestamp).encode()):
        if part is None:
            digest.update(b"\x00")
        else:
            digest.update(b"\x01" + len(part).to_bytes(8, "big") + part)
    return digest.digest()


def _admin(bootstrap: str) -> Any:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="pooling-ledger",
        request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS,
        bootstrap_timeout_ms=KAFKA_BOOTSTRAP_TIMEOUT_MS,
    )


def list_topics(bootstrap: str) -> list[str]:
    admin = _admin(bootstrap)
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def partition_counts(bootstrap: str) -> dict[str, int]:
    """Partitions of every topic on the broker (a request bounded by KAFKA_REQUEST_TIMEOUT_MS)."""
    admin = _admin(bootstrap)
    try:
        return {t["name"]: len(t.get("partitions") or ()) for t in admin.describe_topics()}
    finally:
        admin.close()


def ensure_topics(bootstrap: str, topics: dict[str, int]) -> dict[str, int]:
    """Creates the missing topics (name -> partition count, replication factor 1); returns them."""
    from kafka.errors import TopicAlreadyExistsError

    admin = _admin(bootstrap)
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        if not missing:
            return {}
        result = admin.create_topics(
            {name: {"num_partitions": n, "replication_factor": 1} for name, n in missing.items()},
            timeout_ms=TOPIC_CREATE_TIMEOUT_MS,
            raise_errors=False,
        )
        failures = [
            (t.get("name"), t.get("error_code"), t.get("error_message"))
            for t in result.get("topics", [])
            if t.get("error_code", 0) not in (0, TopicAlreadyExistsError.errno)
        ]
        if failures:
            raise RuntimeError(f"could not create topics on {bootstrap}: {failures}")
        log.info("kafka_topics_created", bootstrap=bootstrap, topics=missing)
        return missing
    finally:
        admin.close()
