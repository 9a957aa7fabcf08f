"""Kafka out: the ledger's outcomes, from the notification log, to the outcome topics.

Accepted movements go to `pooling.ledger.v1`, rejections to `pooling.rejections.v1`.
The relay's position in the notification log is tracked in PostgreSQL after each
flushed page. Every message carries its notification id in a header, and on
start the relay reads the last message of each output partition, so a crash
between a flush and its tracking record repeats nothing: each page is sent in
order per partition and anything at or below a partition's last id is skipped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

import structlog
from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

from consumers.store import Lease, ledger_recorder
from ledger.aggregates import Receipt
from ledger.application import Ledger

log = structlog.get_logger("consumers.relay")

RELAY_PAGE_SIZE_MAX = 2000
TAIL_POLL_TIMEOUT_MS = 500
#: Polls returning nothing before the tails count as read to their end.
TAIL_EMPTY_POLLS = 3
NOTIFICATION_HEADER = "ledger-notification-id"
RECEIPT_TOPICS = (
    get_topic(Receipt.Accepted),
    get_topic(Receipt.Rejected),
    get_topic(Receipt.ConflictingDeliveryRejected),
)


def partition_for(key: bytes, partition_count: int) -> int:
    """Kafka's default partitioner (murmur2, positive), so keys land where Java clients put them."""
    return (murmur2(key) & 0x7FFFFFFF) % partition_count


#: An outcome repeats its message's payload up to this many bytes of JSON or base64; above it,
#: only an excerpt, the size and the sha256, so no outcome nears Kafka's 1 MiB message limit.
OUTCOME_PAYLOAD_BYTES_MAX = 256 * 1024
#: Bytes of a payload an outcome carries when the whole is above OUTCOME_PAYLOAD_BYTES_MAX.
OUTCOME_EXCERPT_BYTES = 1024
#: Characters of a rejection's detail in its outcome, and of the key taken from a payload.
OUTCOME_DETAIL_CHARS_MAX = 4000
OUTCOME_KEY_CHARS_MAX = 64


def _outcome_key(payload: dict[str, Any] | None) -> bytes:
    """The city (or province) the message names, when it names one as a short string."""
    for name in ("city", "province"):
        value = (payload or {}).get(name)
        if isinstance(value, str) and 0 < len(value) <= OUTCOME_KEY_CHARS_MAX:
            return value.encode("utf-8", "replace")
    return b"unknown"


def _outcome_payload(event: Any, payload: dict[str, Any] | None) -> dict[str, Any]:
    """The rejected message as the outcome repeats it: whole when small, else an excerpt."""
    raw_base64 = getattr(event, "raw_base64", None)
    size_bytes = getattr(event, "raw_size_bytes", None)
    if payload is not None:
        text = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()
        if len(text) <= OUTCOME_PAYLOAD_BYTES_MAX:
            return {"payload": payload, "payload_encoding": "json"}
        excerpt, size_bytes = text[:OUTCOME_EXCERPT_BYTES], len(text)
    elif raw_base64 is None:  # a tombstone: the message had no value
        return {"payload": None, "payload_encoding": "none", "payload_size_bytes": 0}
    elif _kept_whole(raw_base64, size_bytes) and len(raw_base64) <= OUTCOME_PAYLOAD_BYTES_MAX:
        return {"payload": raw_base64, "payload_encoding": "base64"}
    else:  # the receipt kept only the first bytes of a message above the size limit, or it is long
        excerpt = base64.b64decode(raw_base64[: (OUTCOME_EXCERPT_BYTES // 3 + 1) * 4])[:OUTCOME_EXCERPT_BYTES]
    return {
        "payload": base64.b64encode(excerpt).decode(),
        "payload_encoding": "base64-excerpt",
        "payload_size_bytes": size_bytes,
    }


def _kept_whole(raw_base64: str, size_bytes: int | None) -> bool:
    """Whether a receipt kept all of a message's bytes (base64 of n bytes is 4 * ceil(n / 3) long)."""
    return size_bytes is None or len(raw_base64) == 4 * -(-size_bytes // 3)


def message_for(event: Any, notification_id: int) -> tuple[str, bytes, dict[str, Any]] | None:
    """(kind, key, value) of the outcome message for a receipt event, or None.

    Every value is bounded whatever the message was: a rejection repeats at most
    OUTCOME_PAYLOAD_BYTES_MAX of its payload, its detail at most OUTCOME_DETAIL_CHARS_MAX.
    """
    payload = event.payload if isinstance(event.payload, dict) else None
    key = _outcome_key(payload)
    common = {
        "event_id": event.event_id,
        "type": event.event_type,
        "source": event.source,
        "ledger_notification_id": notification_id,
    }
    if isinstance(event, Receipt.Accepted):
        return "ledger", key, {
            **common,
            "transfer": event.transfer,
            "balances_fen": event.balances,
            "recorded_at": event.timestamp.isoformat(),
        }
    if isinstance(event, (Receipt.Rejected, Receipt.ConflictingDeliveryRejected)):
        return "rejections", key, {
            **common,
            "reason": event.reason,
            "rule": event.rule,
            "detail": event.detail[:OUTCOME_DETAIL_CHARS_MAX],
            **_outcome_payload(event, payload),
            "payload_sha256": event.payload_sha256,
            "recorded_at": event.timestamp.isoformat(),
        }
    return None


class Relay:
    """Publishes receipts from the notification log, tracked in PostgreSQL."""

    def __init__(
        self, ledger: Ledger, bootstrap_servers: str, ledger_topic: str, rejections_topic: str,
        name: str = "relay",
    ) -> None:
        self.ledger = ledger
        self.name = name
        self.topics = {"ledger": ledger_topic, "rejections": rejections_topic}
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            retries=5,
            max_in_flight_requests_per_connection=1,  # keeps each partition in notification order
            linger_ms=5,
            batch_size=256 * 1024,
        )
        self.bootstrap_servers = bootstrap_servers
        self.partition_counts = {
            kind: len(self._partitions(bootstrap_servers, topic)) for kind, topic in self.topics.items()
        }
        self.published_up_to: dict[tuple[str, int], int] = {}
        self.sent_count = 0
        self._lease: Lease | None = None

    def _leading(self) -> bool:
        """Only one relay publishes at a time (several consumers may run): the lease holder.

        Whoever takes the lease over first reads where the last holder stopped publishing.
        """
        if self._lease is not None and not self._lease.alive():
            self._lease = None
        if self._lease is None:
            self._lease = ledger_recorder(self.ledger).try_lease(f"pooling-ledger:relay:{self.name}")
            if self._lease is None:
                return False
            self.published_up_to = self._read_published_marks(self.bootstrap_servers)
            log.info("relay_leading", name=self.name, marks=len(self.published_up_to))
        return True

    @staticmethod
    def _partitions(bootstrap_servers: str, topic: str) -> list[int]:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers)
        try:
            for _ in range(50):
                ids = consumer.partitions_for_topic(topic)
                if ids:
                    return sorted(ids)
                consumer.poll(timeout_ms=100)
            raise RuntimeError(f"topic {topic!r} does not exist on the broker")
        finally:
            consumer.close()

    def _read_published_marks(self, bootstrap_servers: str) -> dict[tuple[str, int], int]:
        """The notification id of the last message on every output partition.

        Reads from just before the reported end to the real end: the reported end may be
        the base offset of the last batch (see consumers.topics), never past the last record.
        """
        marks: dict[tuple[str, int], int] = {}
        consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
        try:
            tps = [
                TopicPartition(topic, p)
                for kind, topic in self.topics.items()
                for p in range(self.partition_counts[kind])
            ]
            ends = consumer.end_offsets(tps)
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, max(0, ends[tp] - 1))
            empty = 0
            while empty < TAIL_EMPTY_POLLS:
                batch = consumer.poll(timeout_ms=TAIL_POLL_TIMEOUT_MS)
                empty = 0 if batch else empty + 1
                for tp, records in batch.items():
                    for record in records:
                        for header, value in record.headers or []:
                            if header == NOTIFICATION_HEADER:
                                marks[(tp.topic, tp.partition)] = int(value)
        finally:
            consumer.close()
        return marks

    def run_once(self) -> int:
        """Publishes one page of receipts; returns how many notifications it went through."""
        if not self._leading():
            return 0
        recorder = self.ledger.recorder
        last = recorder.max_tracking_id(self.name) or 0  # type: ignore[attr-defined]
        page = recorder.select_notifications(last + 1, RELAY_PAGE_SIZE_MAX, topics=RECEIPT_TOPICS)
        if not page:
            return 0
        self.sent_count += self._send((n.id, self.ledger.mapper.to_domain_event(n)) for n in page)
        self.producer.flush()
        recorder.insert_tracking(Tracking(self.name, page[-1].id))  # type: ignore[attr-defined]
        return len(page)

    def _send(self, events: Iterable[tuple[int, Any]]) -> int:
        sent = 0
        for notification_id, event in events:
            message = message_for(event, notification_id)
            if message is None:
                continue
            kind, key, value = message
            topic = self.topics[kind]
            partition = partition_for(key, self.partition_counts[kind])
            if notification_id <= self.published_up_to.get((topic, partition), 0):
                continue  # published before a crash, tracked after it: never twice
            self.producer.send(
                topic,
                key=key,
                value=json.dumps(value, ensure_ascii=False, sort_keys=True).encode(),
                partition=partition,
                headers=[(NOTIFICATION_HEADER, str(notification_id).encode())],
            )
            self.published_up_to[(topic, partition)] = notification_id
            sent += 1
        return sent

    def run_until_caught_up(self) -> int:
        total = 0
        while done := self.run_once():
            total += done
        return total

    def close(self) -> None:
        self.producer.close()
        if self._lease is not None:
            self._lease.release()
            self._lease = None

