"""Reading a topic whole, and probing for a record, without trusting reported end offsets.

Some Kafka-protocol brokers report a partition's end (ListOffsets, latest) as the base
offset of its last record batch rather than one past its last record: the Tansu broker
used here does. So "read to the end" keeps polling until the broker has nothing more,
and "is this position beyond the end?" is answered by fetching the record before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition

POLL_TIMEOUT_MS = 500
#: Polls that return nothing, once past the reported end, before a partition counts as read.
EMPTY_POLLS_AT_END = 3
POLLS_MAX = 200
PROBE_POLLS_MAX = 6


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
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        for _ in range(PROBE_POLLS_MAX):
            for records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).values():
                if any(r.offset >= offset for r in records):
                    return True
        return False
    finally:
        consumer.close()
