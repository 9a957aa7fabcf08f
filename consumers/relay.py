"""Kafka out: the ledger's outcomes, from the notification log, to the outcome topics.

Accepted movements go to `pooling.ledger.v1`, rejections to `pooling.rejections.v1`.
The relay's position in the notification log is tracked in PostgreSQL after each
page the broker acknowledged, with the notification id and offset of the last
message on every output partition. Every message carries its notification id in a
header, and on (re)connecting the relay reads the last message of each output
partition, so a crash between a flush and its tracking record repeats nothing: each
page is sent in order per partition and anything at or below a partition's last id
is skipped.

The broker may fail or lose its log (memory storage). Every send and flush is
bounded; an unacknowledged page is not tracked, the producer is made again after a
back-off, and the output partitions are compared with the recorded marks: a topic
gone is re-created, and a partition that no longer holds its mark gets its outcomes
republished from the notification log (duplicates keep their notification id, so
downstream can recognise them).
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.partitioner.default import murmur2

from consumers.topics import (
    KAFKA_BOOTSTRAP_TIMEOUT_MS,
    KAFKA_REQUEST_TIMEOUT_MS,
    ensure_topics,
    log_start_offsets,
    partition_counts,
    records_at,
)
from ledger.aggregates import Receipt
from ledger.application import Ledger
from storage import Lease, ledger_recorder

log = structlog.get_logger("consumers.relay")

RELAY_PAGE_SIZE_MAX = 2000
TAIL_POLL_TIMEOUT_MS = 500
#: Polls returning nothing before the tails count as read to their end.
TAIL_EMPTY_POLLS = 3
PRODUCER_LINGER_MS = 5
PRODUCER_BATCH_BYTES = 256 * 1024
#: send() waits at most this for topic metadata or buffer space.
PRODUCER_MAX_BLOCK_MS = 2_000
#: A message not acknowledged within this (retries included) fails.
PRODUCER_DELIVERY_TIMEOUT_MS = 10_000
PRODUCER_CLOSE_TIMEOUT_S = 1.0
#: A page's acknowledgements are awaited at most this long, in steps that look for a stop.
FLUSH_TIMEOUT_S = 15.0
FLUSH_STEP_S = 0.25
#: Back-off after a failure: the first wait, doubled at each failure in a row up to the max.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
#: Once a stop is asked for, the relay gives up after this long without an acknowledged page.
RELAY_STOP_WAIT_S = 3.0
#: While idle, how often the relay checks that the broker still holds its recorded marks: a
#: broker that restarted empty while nothing was being sent is noticed within this.
OUTPUT_CHECK_INTERVAL_S = 5.0
ERROR_CHARS_MAX = 300
#: The relay's name in the tracking table (and its lease), unless told otherwise.
RELAY_NAME = "relay"
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


def outcome_bytes(value: dict[str, Any]) -> bytes:
    """An outcome message's value: UTF-8 JSON with sorted keys (orjson; Python's json for what
    orjson cannot write, such as an integer past 64 bits in a rejected payload)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, sort_keys=True).encode()


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
            **({"split": event.split} if getattr(event, "split", None) else {}),
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


class OutputUnavailable(Exception):
    """An output topic is missing and the relay does not know how many partitions it had."""


class NotAcknowledged(Exception):
    """The broker did not acknowledge every message of a page in time (or refused some)."""


class OutputReplaced(Exception):
    """An acknowledged message landed below the offset expected: the output log was replaced."""


@dataclass(frozen=True)
class OutputLoss:
    """An output partition that no longer holds the relay's last acknowledged message there."""

    topic: str
    partition: int
    notification_id: int
    offset: int
    found: str  # "missing", "different", or "empty" (every output partition empty)


@dataclass
class _Replay:
    """Republishing the outcomes of lost partitions from the notification log, up to `end`."""

    partitions: set[tuple[str, int]]
    end: int
    cursor: int = 1
    held: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    count: int = 0


_Sent = tuple[tuple[str, int], int, Any]  # (topic, partition), notification id, send future


class Relay:
    """Publishes receipts from the notification log, tracked in PostgreSQL.

    Every wait on the broker is bounded: a page that is not acknowledged in time is not
    tracked, the producer is closed and made again after a back-off (doubling, bounded), and
    the output partitions are checked again. `should_stop` (a stop was asked for) bounds what
    is left: once it is true the relay gives up after RELAY_STOP_WAIT_S without progress.
    """

    def __init__(
        self, ledger: Ledger, bootstrap_servers: str, ledger_topic: str, rejections_topic: str,
        name: str = RELAY_NAME, *, should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.ledger = ledger
        self.name = name
        self.bootstrap_servers = bootstrap_servers
        self.topics = {"ledger": ledger_topic, "rejections": rejections_topic}
        self.should_stop: Callable[[], bool] = should_stop or (lambda: False)
        self.producer: KafkaProducer | None = None
        #: Partitions per output topic, as last seen on the broker (to re-create a lost topic).
        self.partition_counts: dict[str, int] = {}
        #: The highest notification id on each output partition: nothing at or below it is sent.
        self.published_up_to: dict[tuple[str, int], int] = {}
        self.sent_count = 0
        self.losses: list[OutputLoss] = []
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._replay: _Replay | None = None
        self._lease: Lease | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._give_up_at: float | None = None
        self._outputs_checked_at = 0.0

    # -- leading, connecting, failing --------------------------------------------------

    def _leading(self) -> bool:
        """Only one relay publishes at a time (several consumers may run): the lease holder.

        Whoever takes the lease over first reads where the last holder stopped publishing.
        """
        if self._lease is not None and not self._lease.alive():
            self._lease.release()  # gives its broken connection back, so the pool replaces it
            self._lease = None
        if self._lease is None:
            self._lease = ledger_recorder(self.ledger).try_lease(f"pooling-ledger:relay:{self.name}")
            if self._lease is None:
                return False
            self._disconnect()  # (re)connecting reads the output tails: where the last holder stopped
            log.info("relay_leading", name=self.name)
        return True

    def _connect(self) -> None:
        """Producer, partition counts, tails; a lost output partition starts a republication."""
        self._ensure_output_topics()
        self.producer = KafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            max_in_flight_requests_per_connection=1,  # keeps each partition in notification order
            linger_ms=PRODUCER_LINGER_MS,
            batch_size=PRODUCER_BATCH_BYTES,
            allow_auto_create_topics=False,  # a lost topic is re-created with its partition count
            bootstrap_timeout_ms=KAFKA_BOOTSTRAP_TIMEOUT_MS,
            max_block_ms=PRODUCER_MAX_BLOCK_MS,
            request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS,
            delivery_timeout_ms=PRODUCER_DELIVERY_TIMEOUT_MS,
        )
        tails = self._read_published_marks(self.bootstrap_servers)
        self.published_up_to = {tp: nid for tp, (nid, _) in tails.items() if nid}
        self._next_offsets = {tp: next_offset for tp, (_, next_offset) in tails.items()}
        self._check_outputs(tails)
        self._outputs_checked_at = time.monotonic()
        log.info("relay_connected", name=self.name, marks=len(self.published_up_to), republishing=self._replay is not None)

    def _ensure_output_topics(self) -> None:
        """Learns the output topics' partition counts; re-creates a topic the broker lost."""
        existing = partition_counts(self.bootstrap_servers)
        counts = {kind: existing[topic] for kind, topic in self.topics.items() if existing.get(topic)}
        missing = {topic: self.partition_counts.get(kind, 0) for kind, topic in self.topics.items() if not counts.get(kind)}
        if any(n == 0 for n in missing.values()):
            raise OutputUnavailable(f"output topics missing on the broker: {sorted(missing)}")
        if missing:
            log.error(
                "relay_output_topic_missing", name=self.name, topics=missing,
                action="re-creating it; the outcomes it held are published again",
            )
            try:
                ensure_topics(self.bootstrap_servers, missing)
            except RuntimeError as error:
                raise OutputUnavailable(str(error)) from error
            counts.update({kind: missing[topic] for kind, topic in self.topics.items() if topic in missing})
        self.partition_counts = counts

    def _check_outputs(self, tails: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Compares what the relay recorded as acknowledged with what the broker holds.

        Each output partition must still hold, at the offset it got, the last message the
        relay recorded there. If it does not (a broker that lost its log, topics gone or
        shorter), or if every partition is empty though the relay tracked outcomes as
        published, the lost partitions' outcomes are republished from the notification log.
        """
        tracked = ledger_recorder(self.ledger).max_tracking_id(self.name) or 0
        stored, losses = self._lost_marks()
        if not stored and tracked and not any(nid for nid, _ in tails.values()):
            losses = [OutputLoss(topic, partition, 0, 0, "empty") for topic, partition in sorted(tails)]
        if not losses:
            return
        for loss in losses:
            log.error(
                "relay_output_lost", name=self.name, topic=loss.topic, partition=loss.partition,
                notification_id=loss.notification_id, offset=loss.offset, found=loss.found,
                tail_notification_id=tails.get((loss.topic, loss.partition), (0, 0))[0],
                tracked_notification_id=tracked,
                action="republishing its outcomes from the notification log (stamped with their ids)",
            )
        self.losses += losses
        self._start_replay({(loss.topic, loss.partition) for loss in losses}, tracked)

    def _probe_outputs(self) -> None:
        """Idle: raises OutputReplaced if the broker no longer holds a recorded mark (it lost
        its log while nothing was sent); reconnecting then finds and republishes what was lost."""
        self._outputs_checked_at = time.monotonic()
        _, losses = self._lost_marks()
        if losses:
            raise OutputReplaced(f"recorded marks no longer on the broker: {[(x.topic, x.partition) for x in losses]}")

    def _lost_marks(self) -> tuple[dict[tuple[str, int], tuple[int, int]], list[OutputLoss]]:
        """The relay's recorded marks on the current output partitions, and those the broker no
        longer holds. A mark deleted by retention (the partition's log now starts after it) is
        not a loss: the log was not replaced, only aged."""
        partitions = {self.topics[kind]: n for kind, n in self.partition_counts.items()}
        stored = {
            (t, p): mark for (t, p), mark in ledger_recorder(self.ledger).select_relay_marks(self.name).items()
            if p < partitions.get(t, 0)
        }
        found = records_at(
            self.bootstrap_servers, {TopicPartition(t, p): offset for (t, p), (_, offset) in stored.items()}
        )
        absent = [TopicPartition(t, p) for t, p in stored if TopicPartition(t, p) not in found]
        starts = log_start_offsets(self.bootstrap_servers, absent)
        losses = []
        for (topic, partition), (nid, offset) in sorted(stored.items()):
            tp = TopicPartition(topic, partition)
            record = found.get(tp)
            if record is not None and _notification_id(record) == nid:
                continue
            if record is None and starts.get(tp, 0) > offset:
                continue
            losses.append(OutputLoss(topic, partition, nid, offset, "missing" if record is None else "different"))
        return stored, losses

    def _start_replay(self, partitions: set[tuple[str, int]], end: int) -> None:
        if self._replay is not None:
            partitions |= self._replay.partitions
            end = max(end, self._replay.end)
        for tp in partitions:
            self.published_up_to.pop(tp, None)
        self._replay = _Replay(partitions, end)

    def _fail(self, error: Exception) -> None:
        self._failures += 1
        wait_s = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + wait_s
        log.warning(
            "relay_publish_failed", name=self.name, error=repr(error)[:ERROR_CHARS_MAX],
            failures=self._failures, retry_in_s=wait_s,
        )
        self._disconnect()

    def _disconnect(self) -> None:
        producer, self.producer = self.producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=PRODUCER_CLOSE_TIMEOUT_S)
        except KafkaTimeoutError:
            # close() flushes first and gives up, sender thread running, while messages are
            # pending: stop the sender (it fails what is pending), then close for good.
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()
                sender.join(PRODUCER_CLOSE_TIMEOUT_S)
            try:
                producer.close(timeout=0)
            except Exception as error:  # noqa: BLE001 - a broken producer is dropped all the same
                log.warning("relay_producer_close_failed", name=self.name, error=repr(error)[:ERROR_CHARS_MAX])
        except Exception as error:  # noqa: BLE001 - a broken producer is dropped all the same
            log.warning("relay_producer_close_failed", name=self.name, error=repr(error)[:ERROR_CHARS_MAX])

    def _time_left_s(self) -> float:
        """Seconds left before giving up: unbounded until a stop is asked for."""
        if self._give_up_at is None:
            if not self.should_stop():
                return math.inf
            self._give_up_at = time.monotonic() + RELAY_STOP_WAIT_S
        return self._give_up_at - time.monotonic()

    def _progressed(self) -> None:
        self._failures = 0
        if self._give_up_at is not None:  # stopping, but the broker answers: publish what is left
            self._give_up_at = time.monotonic() + RELAY_STOP_WAIT_S

    # -- publishing --------------------------------------------------------------------

    def _read_published_marks(self, bootstrap_servers: str) -> dict[tuple[str, int], tuple[int, int]]:
        """(highest notification id, next offset) at the end of every output partition.

        Reads from just before the reported end to the real end: the reported end may be
        the base offset of the last batch (see consumers.topics), never past the last record.
        """
        marks: dict[tuple[str, int], tuple[int, int]] = {}
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            bootstrap_timeout_ms=KAFKA_BOOTSTRAP_TIMEOUT_MS,
            request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS,
        )
        try:
            tps = [
                TopicPartition(topic, p)
                for kind, topic in self.topics.items()
                for p in range(self.partition_counts[kind])
            ]
            ends = consumer.end_offsets(tps, timeout_ms=KAFKA_REQUEST_TIMEOUT_MS)
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, max(0, ends[tp] - 1))
                marks[(tp.topic, tp.partition)] = (0, 0)
            empty = 0
            while empty < TAIL_EMPTY_POLLS:
                batch = consumer.poll(timeout_ms=TAIL_POLL_TIMEOUT_MS)
                empty = 0 if batch else empty + 1
                for tp, records in batch.items():
                    for record in records:
                        nid, _ = marks[(tp.topic, tp.partition)]
                        marks[(tp.topic, tp.partition)] = (max(nid, _notification_id(record)), record.offset + 1)
        finally:
            consumer.close()
        return marks

    def run_once(self) -> int:
        """Publishes one page of receipts; returns how many notifications it went through.

        0 when there is nothing to publish, another process leads, the broker failed (the
        relay then waits out its back-off), or the time left after a stop request ran out.
        """
        if self._time_left_s() <= 0 or not self._leading():
            return 0
        if self.producer is None and time.monotonic() < self._retry_at and self._give_up_at is None:
            return 0
        try:
            if self.producer is None:
                self._connect()
            return self._publish_page()
        except (KafkaError, NotAcknowledged, OutputReplaced, OutputUnavailable) as error:
            self._fail(error)
            return 0

    def _publish_page(self) -> int:
        recorder = ledger_recorder(self.ledger)
        tracked = recorder.max_tracking_id(self.name) or 0
        replay = self._replay
        start = replay.cursor if replay is not None else tracked + 1
        page = recorder.select_notifications(start, RELAY_PAGE_SIZE_MAX, topics=RECEIPT_TOPICS)
        if not page:
            if replay is not None:  # nothing left to republish up to its end
                recorder.record_relay_progress(self.name, self._finish_replay(replay, {}), None)
            elif time.monotonic() - self._outputs_checked_at >= OUTPUT_CHECK_INTERVAL_S:
                self._probe_outputs()
            return 0
        sent = self._send((n.id, self.ledger.mapper.to_domain_event(n)) for n in page)
        acks = self._await_acks(sent)
        self._check_offsets(acks)
        marks = _last_marks(acks)
        if replay is not None:
            replay.count += sum(1 for tp, nid, _ in acks if tp in replay.partitions and nid <= replay.end)
            replay.held.update({tp: m for tp, m in marks.items() if tp in replay.partitions})
            marks = {tp: m for tp, m in marks.items() if tp not in replay.partitions}
            replay.cursor = page[-1].id + 1
            if replay.cursor > replay.end:
                marks = self._finish_replay(replay, marks)
        tracking = Tracking(self.name, page[-1].id) if page[-1].id > tracked else None
        recorder.record_relay_progress(self.name, marks, tracking)
        self.sent_count += len(acks)
        self._progressed()
        return len(page)

    def _finish_replay(
        self, replay: _Replay, marks: dict[tuple[str, int], tuple[int, int]]
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """Ends a republication: the marks of its partitions, held until now, are recorded."""
        self._replay = None
        log.warning(
            "relay_republished", name=self.name, partitions=sorted(replay.partitions),
            messages=replay.count, up_to_notification_id=replay.end,
        )
        return {**marks, **replay.held}

    def _send(self, events: Iterable[tuple[int, Any]]) -> list[_Sent]:
        assert self.producer is not None
        sent: list[_Sent] = []
        replay = self._replay
        for notification_id, event in events:
            message = message_for(event, notification_id)
            if message is None:
                continue
            kind, key, value = message
            topic = self.topics[kind]
            partition = partition_for(key, self.partition_counts[kind])
            if replay is not None and notification_id <= replay.end and (topic, partition) not in replay.partitions:
                continue  # republishing: only the lost partitions
            if notification_id <= self.published_up_to.get((topic, partition), 0):
                continue  # published before a crash, tracked after it: never twice
            future = self.producer.send(
                topic,
                key=key,
                value=outcome_bytes(value),
                partition=partition,
                headers=[(NOTIFICATION_HEADER, str(notification_id).encode())],
            )
            self.published_up_to[(topic, partition)] = notification_id
            sent.append(((topic, partition), notification_id, future))
        return sent

    def _await_acks(self, sent: list[_Sent]) -> list[tuple[tuple[str, int], int, int]]:
        """((topic, partition), notification id, offset) of every message, once all are acknowledged.

        Waits at most FLUSH_TIMEOUT_S (less once a stop is asked for), in steps so a stop
        request is seen; raises NotAcknowledged if any message is not acknowledged by then.
        """
        assert self.producer is not None
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while True:
            try:
                self.producer.flush(timeout=FLUSH_STEP_S)
                break
            except KafkaTimeoutError:
                if time.monotonic() >= deadline or self._time_left_s() <= 0:
                    undone = sum(1 for *_, future in sent if not future.is_done)
                    raise NotAcknowledged(f"{undone} of {len(sent)} messages not acknowledged in time") from None
        acks = []
        for tp, notification_id, future in sent:
            if not future.is_done:
                raise NotAcknowledged(f"message {notification_id} to {tp} not acknowledged after a flush")
            if future.failed():
                raise NotAcknowledged(f"message {notification_id} to {tp} refused: {future.exception!r}")
            acks.append((tp, notification_id, future.value.offset))
        return acks

    def _check_offsets(self, acks: list[tuple[tuple[str, int], int, int]]) -> None:
        """Raises OutputReplaced if a message got an offset below the one expected on its
        partition: the log was replaced (a memory broker restarted) while the producer
        reconnected on its own. The page is then not tracked; reconnecting compares every
        partition with the recorded marks and republishes what was lost."""
        regressed = set()
        for tp, _, offset in acks:
            if offset < self._next_offsets.get(tp, 0):
                regressed.add(tp)
            self._next_offsets[tp] = offset + 1
        if regressed:
            raise OutputReplaced(f"offsets went back on {sorted(regressed)}: the broker's log was replaced")

    def run_until_caught_up(self) -> int:
        total = 0
        while done := self.run_once():
            total += done
        return total

    def close(self) -> None:
        self._disconnect()
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def _notification_id(record: Any) -> int:
    for header, value in record.headers or []:
        if header == NOTIFICATION_HEADER:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _last_marks(acks: list[tuple[tuple[str, int], int, int]]) -> dict[tuple[str, int], tuple[int, int]]:
    """(notification id, offset) of the last acknowledged message per partition."""
    marks: dict[tuple[str, int], tuple[int, int]] = {}
    for tp, notification_id, offset in acks:
        if offset >= marks.get(tp, (0, -1))[1]:
            marks[tp] = (notification_id, offset)
    return marks
