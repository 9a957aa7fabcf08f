"""Kafka in: `pooling.events.v1` to the ledger, exactly once.

Each poll batch is decided by the ledger and saved in one PostgreSQL transaction
together with the next offset of every partition it read and the fingerprint of
the record before it (DESIGN §6). On start, on every group assignment and whenever
the consumer made a new connection (a broker restarted), the record before each
position is fetched and compared: if the log under a position was replaced or
truncated (a memory broker that lost its data, then got new events whose offsets
overlap the old ones), `source_log_replaced` is logged and the partition is read
again from its start, so nothing is skipped; receipts in PostgreSQL recognise what
was already booked. Kafka's own committed offsets are never used.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.metrics.stats.total import Total

from consumers import metrics
from consumers.booking import record_batch
from consumers.inbound import MESSAGE_SIZE_MAX_BYTES, Inbound, SourcePosition
from consumers.topics import record_fingerprint, records_at
from ledger.application import Ledger, Outcome
from storage import ledger_recorder

log = structlog.get_logger("consumers.ingest")

METADATA_WAIT_S = 30
#: Batches read ahead while one is booked; a bound on memory and on work redone after a crash.
PREFETCH_BATCHES_MAX = 2
#: How often the fetcher refreshes the consumer-lag gauges (one end-offsets request).
LAG_METRIC_INTERVAL_S = 5.0
FETCHER_WAIT_S = 0.2
FETCHER_JOIN_TIMEOUT_S = 10
LAG_ANSWER_TIMEOUT_S = 5
METADATA_RETRY_S = 0.2
FETCH_MAX_BYTES = 50 * 1024 * 1024
#: Short group timeouts: a group join takes ~3 s instead of ~23 s with kafka-python's defaults.
GROUP_SESSION_TIMEOUT_MS = 6000
GROUP_HEARTBEAT_INTERVAL_MS = 1000
#: Wait before polling again after a transient (retriable) Kafka error.
FETCH_RETRY_S = 1.0
#: Wait before checking positions again when the broker could not be asked.
POSITION_CHECK_RETRY_S = 1.0
#: kafka-python's sensor recording each connection a client makes.
CONNECTIONS_CREATED_SENSOR = "connections-created"

#: (next offset to read, fingerprint of the record before it or None if unknown)
_Mark = tuple[int, bytes | None]


@dataclass(frozen=True)
class PositionReset:
    """A partition read again from its start: the record before `stored_offset` was `found`
    "missing" (log truncated or replaced by a shorter one) or "different" (log replaced)."""

    topic: str
    partition: int
    stored_offset: int
    found: str


class Ingestor:
    """Reads one topic into the ledger: all its partitions, or (`group=True`) those Kafka's
    group coordinator assigns, so several consumers share the partitions."""

    def __init__(
        self,
        ledger: Ledger,
        bootstrap_servers: str,
        topic: str,
        consumer_name: str,
        batch_size_max: int,
        poll_timeout_ms: int,
        *,
        group: bool = False,
        message_size_max_bytes: int = MESSAGE_SIZE_MAX_BYTES,
    ) -> None:
        self.ledger = ledger
        self.message_size_max_bytes = message_size_max_bytes
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.consumer_name = consumer_name
        self.batch_size_max = batch_size_max
        self.poll_timeout_ms = poll_timeout_ms
        self.resets: list[PositionReset] = []
        self._fetcher: _Fetcher | None = None
        #: Where the consumer reads next per partition and the record before it, as read.
        self._expected: dict[TopicPartition, _Mark] = {}
        self._unchecked: list[TopicPartition] = []
        self._unverified: set[TopicPartition] = set()
        self._unsaved: _Batch | None = None
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=batch_size_max,
            fetch_max_bytes=FETCH_MAX_BYTES,
            max_partition_fetch_bytes=FETCH_MAX_BYTES // 4,
            session_timeout_ms=GROUP_SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=GROUP_HEARTBEAT_INTERVAL_MS,
            group_id=consumer_name if group else None,
        )
        self._connections = _ConnectionWatch(self.consumer)
        self.group = group
        self.assigned = False
        if group:
            # Positions still come from PostgreSQL: the listener seeks on every assignment.
            self.partitions: list[TopicPartition] = []
            self.consumer.subscribe([topic], listener=_SeekOnAssignment(self))
        else:
            self.partitions = self._assign_all_partitions()
            self._seek_to_stored_positions(self.partitions)

    def _assign_all_partitions(self) -> list[TopicPartition]:
        deadline = time.monotonic() + METADATA_WAIT_S
        while True:
            ids = self.consumer.partitions_for_topic(self.topic)
            if ids:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {self.topic!r} does not exist on the broker")
            time.sleep(METADATA_RETRY_S)
        partitions = [TopicPartition(self.topic, p) for p in sorted(ids)]
        self.consumer.assign(partitions)
        return partitions

    def _seek_to_stored_positions(self, partitions: list[TopicPartition]) -> None:
        """Seeks to the positions stored in PostgreSQL; rewinds those whose log was replaced."""
        self._seek_without_checking(partitions)
        self._unverified |= self._check_positions(partitions)

    def _seek_without_checking(self, partitions: list[TopicPartition]) -> None:
        stored = ledger_recorder(self.ledger).select_positions(self.consumer_name)
        for tp in partitions:
            mark = stored.get((tp.topic, tp.partition))
            if mark is None:
                self.consumer.seek_to_beginning(tp)
                self._expected[tp] = (0, None)
            else:
                self.consumer.seek(tp, mark[0])
                self._expected[tp] = mark
        log.info("ingest_positions", topic=self.topic, partitions=sorted(tp.partition for tp in partitions))

    def _check_positions(self, partitions: set[TopicPartition] | list[TopicPartition]) -> set[TopicPartition]:
        """Fetches the record before each partition's position and compares it with the one read
        (or stored) there. A partition whose record is missing or different is reported and read
        again from its start. Returns the partitions that could not be checked (broker away)."""
        marks = {tp: self._expected[tp] for tp in partitions if self._expected.get(tp, (0, None))[0] > 0}
        try:
            found = records_at(self.bootstrap_servers, {tp: offset - 1 for tp, (offset, _) in marks.items()})
        except KafkaError as error:
            log.warning(
                "source_log_check_failed", topic=self.topic,
                partitions=sorted(tp.partition for tp in marks), error=repr(error),
            )
            return set(marks)
        for tp, (offset, fingerprint) in marks.items():
            record = found.get(tp)
            if record is not None and (fingerprint is None or record_fingerprint(record) == fingerprint):
                continue
            reset = PositionReset(tp.topic, tp.partition, offset, "missing" if record is None else "different")
            self.resets.append(reset)
            log.error(
                "source_log_replaced",
                topic=tp.topic,
                partition=tp.partition,
                stored_offset=offset,
                record_before=reset.found,
                action="reading the partition from its start; receipts prevent double booking",
            )
            self.consumer.seek_to_beginning(tp)
            self._expected[tp] = (0, None)
        return set()

    def poll_once(self) -> list[Outcome]:
        """One poll batch: decided and saved with its positions in one transaction.

        A batch whose save failed (PostgreSQL restarting, say) is kept and is the one the
        next call decides again: a retry around this method never skips a batch.
        """
        if self._unsaved is None:
            self._unsaved = self._next_batch()
        if self._unsaved is None:
            return []
        inbound, positions = self._unsaved
        started_s = time.monotonic()
        outcomes = record_batch(self.ledger, inbound, positions=positions)
        metrics.BATCH_SECONDS.observe(time.monotonic() - started_s)
        metrics.record_outcomes(outcomes)
        self._unsaved = None
        return outcomes

    def _next_batch(self) -> _Batch | None:
        if self._fetcher is None:
            self._fetcher = _Fetcher(self)
            self._fetcher.start()
        return self._fetcher.take(self.poll_timeout_ms / 1000)

    def _fetch(self) -> _Batch | None:
        """Polls and parses one batch (in the fetcher thread, which alone uses the consumer)."""
        records = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.batch_size_max)
        records = self._drop_unchecked(records)
        if not records:
            return None
        inbound: list[Inbound] = []
        positions: list[tuple[str, str, int, int, bytes | None]] = []
        for tp, messages in records.items():
            for m in messages:
                position = SourcePosition(tp.topic, tp.partition, m.offset)
                inbound.append(Inbound.parse(m.value, position, self.message_size_max_bytes))
            mark = (messages[-1].offset + 1, record_fingerprint(messages[-1]))
            self._expected[tp] = mark
            positions.append((self.consumer_name, tp.topic, tp.partition, *mark))
        return inbound, positions

    def _drop_unchecked(self, records: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
        """Checks the positions that need it before any record read from them is handed on.

        They are those assigned by the group in this poll (the callback may not ask the broker),
        those that could not be checked before, and every one after a new connection: the
        broker may have restarted with another log under the same offsets. The records of a
        partition whose log was replaced, or that could not be checked, are dropped (the
        partition is read again from its start, or from its position once checked).
        """
        suspect = self._unverified | set(self._unchecked)
        self._unchecked = []
        if self._connections.changed():
            suspect |= set(self.partitions)
        if not suspect:
            return records
        resets = len(self.resets)
        self._unverified = self._check_positions(suspect)
        dropped = self._unverified | {TopicPartition(r.topic, r.partition) for r in self.resets[resets:]}
        for tp in self._unverified:
            self.consumer.seek(tp, self._expected[tp][0])
        if self._unverified:
            time.sleep(POSITION_CHECK_RETRY_S)
        return {tp: messages for tp, messages in records.items() if tp not in dropped}

    def _unread(self) -> int:
        if self.group and not self.assigned:
            return 1  # not in the group yet: nothing is known about what is waiting
        try:
            ends = self.consumer.end_offsets(self.partitions, timeout_ms=LAG_ANSWER_TIMEOUT_S * 1000)
        except KafkaError as error:  # the broker is away (or restarting): not known to be idle
            log.warning("ingest_lag_unknown", topic=self.topic, error=repr(error))
            return 1
        lags = {tp: max(0, ends[tp] - self.consumer.position(tp)) for tp in self.partitions}
        metrics.record_lag({(tp.topic, tp.partition): lag for tp, lag in lags.items()})
        return sum(lags.values())

    def lag(self) -> int:
        """Messages on the broker not yet booked by this consumer (read ahead or not)."""
        if self._fetcher is None:
            return self._unread()
        return self._fetcher.lag()

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.stop()
        self.consumer.close()


_Batch = tuple[list[Inbound], list[tuple[str, str, int, int, bytes | None]]]


class _ConnectionWatch:
    """Tells whether the consumer made a new connection since last asked.

    A connection dropped and made again may lead to a broker that lost its log (a memory broker
    restarted on the same port): kafka-python then fetches on from its in-memory positions,
    which may lie inside the new log. It counts connections in a sensor; a running total is
    added to it (kafka-python keeps the consumer's metrics registry in `_metrics`).
    """

    def __init__(self, consumer: KafkaConsumer) -> None:
        metrics = getattr(consumer, "_metrics", None)
        sensor = metrics.get_sensor(CONNECTIONS_CREATED_SENSOR) if metrics is not None else None
        if metrics is None or sensor is None:
            raise RuntimeError(
                f"kafka-python has no {CONNECTIONS_CREATED_SENSOR!r} sensor: a broker restart could go unseen"
            )
        self._total = Total()
        sensor.add(
            metrics.metric_name("connection-creation-total", "pooling-ledger-ingest", "connections made"),
            self._total,
        )
        self._seen = self._count()

    def _count(self) -> float:
        return float(self._total.measure(None, 0))

    def changed(self) -> bool:
        count = self._count()
        changed, self._seen = count != self._seen, count
        return changed


class _SeekOnAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Group mode: partitions given to this consumer start from the positions in PostgreSQL.

    A batch of a revoked partition that is already being booked still books (its receipts
    make the new owner's copy a duplicate); batches read ahead for it are dropped.
    """

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        fetcher = self.ingestor._fetcher
        if fetcher is not None:
            fetcher.drop_queued()
        log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Runs inside the consumer's poll: seeking is fine, asking the broker is not, so the
        # positions are checked right after the poll, before its records are handed on.
        self.ingestor.partitions = sorted(assigned, key=lambda tp: tp.partition)
        self.ingestor.assigned = True
        if assigned:
            self.ingestor._seek_without_checking(list(assigned))
            self.ingestor._unchecked = list(assigned)  # checked before any of their records is used


class _Fetcher(threading.Thread):
    """Reads the next batches from Kafka while the ledger books the current one.

    Only positions saved with a booked batch count: batches read ahead and lost in a crash
    are read again from the stored positions.
    """

    def __init__(self, ingestor: Ingestor) -> None:
        super().__init__(name="kafka-fetcher", daemon=True)
        self.ingestor = ingestor
        self.batches: queue.Queue[_Batch] = queue.Queue(maxsize=PREFETCH_BATCHES_MAX)
        self.stopping = threading.Event()
        self.error: Exception | None = None
        self._lag_request = threading.Event()
        self._lag_answer: queue.Queue[int] = queue.Queue(maxsize=1)
        self._lag_measured_s = float("-inf")  # measured on the first round

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                if self._lag_request.is_set():
                    self._lag_request.clear()
                    self._lag_answer.put(self.ingestor._unread() + self._queued())
                    self._lag_measured_s = time.monotonic()
                elif time.monotonic() - self._lag_measured_s >= LAG_METRIC_INTERVAL_S:
                    self.ingestor._unread()  # keeps the per-partition lag gauges current
                    self._lag_measured_s = time.monotonic()
                try:
                    batch = self.ingestor._fetch()
                except KafkaError as error:
                    if not error.retriable:
                        raise
                    # the broker is away or restarting: the positions are kept, and checked
                    # (by fingerprint) once a new connection is made
                    log.warning("ingest_fetch_retry", topic=self.ingestor.topic, error=repr(error))
                    self.stopping.wait(FETCH_RETRY_S)
                    continue
                while batch is not None and not self.stopping.is_set():
                    try:
                        self.batches.put(batch, timeout=FETCHER_WAIT_S)
                        batch = None
                    except queue.Full:
                        continue
        except Exception as error:  # noqa: BLE001 - handed to the booking thread by take()
            self.error = error

    def _queued(self) -> int:
        return sum(len(inbound) for inbound, _ in list(self.batches.queue))

    def drop_queued(self) -> None:
        while True:
            try:
                self.batches.get_nowait()
            except queue.Empty:
                return

    def take(self, timeout_s: float) -> _Batch | None:
        if self.error is not None:
            raise RuntimeError("reading from Kafka failed") from self.error
        try:
            return self.batches.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def lag(self) -> int:
        self._lag_request.set()
        try:
            return self._lag_answer.get(timeout=LAG_ANSWER_TIMEOUT_S)
        except queue.Empty:
            return 1  # the fetcher is busy reading: not idle

    def stop(self) -> None:
        self.stopping.set()
        self.join(FETCHER_JOIN_TIMEOUT_S)
