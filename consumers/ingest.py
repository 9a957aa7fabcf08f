"""Kafka in: `pooling.events.v1` to the ledger, exactly once.

Each poll batch is decided by the ledger and saved in one PostgreSQL transaction
together with the next offset of every partition it read (DESIGN §6). On start
the consumer seeks to those stored offsets; Kafka's own committed offsets are
never used. A stored offset beyond a partition's end (a broker that lost its
data) is reported and the partition is read again from its start: receipts in
PostgreSQL recognise what was already booked.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

from consumers.store import ledger_recorder
from consumers.topics import record_exists
from ledger.application import MESSAGE_SIZE_MAX_BYTES, Inbound, Ledger, Outcome, SourcePosition

log = structlog.get_logger("consumers.ingest")

METADATA_WAIT_S = 30
#: Batches read ahead while one is booked; a bound on memory and on work redone after a crash.
PREFETCH_BATCHES_MAX = 2
FETCHER_WAIT_S = 0.2
FETCHER_JOIN_TIMEOUT_S = 10
LAG_ANSWER_TIMEOUT_S = 5
METADATA_RETRY_S = 0.2
FETCH_MAX_BYTES = 50 * 1024 * 1024
#: Short group timeouts: a group join takes ~3 s instead of ~23 s with kafka-python's defaults.
GROUP_SESSION_TIMEOUT_MS = 6000
GROUP_HEARTBEAT_INTERVAL_MS = 1000


@dataclass(frozen=True)
class PositionReset:
    topic: str
    partition: int
    stored_offset: int
    end_offset: int


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
        self._stored_at_seek: dict[TopicPartition, int] = {}
        self._unchecked: list[TopicPartition] = []
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
        """Seeks to the positions stored in PostgreSQL; reports and rewinds any beyond the end."""
        self._seek_without_checking(partitions)
        self._rewind_positions_beyond_end(partitions)

    def _seek_without_checking(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        stored = ledger_recorder(self.ledger).select_positions(self.consumer_name)
        positions = {}
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
                positions[tp] = offset
        log.info("ingest_positions", topic=self.topic, partitions=sorted(tp.partition for tp in partitions))
        self._stored_at_seek = positions
        return positions

    def _rewind_positions_beyond_end(self, partitions: list[TopicPartition]) -> None:
        positions = {tp: o for tp, o in self._stored_at_seek.items() if tp in partitions}
        if not positions:
            return
        ends = self.consumer.end_offsets(list(positions))
        for tp, offset in positions.items():
            if offset <= ends[tp] or record_exists(self.bootstrap_servers, tp, offset - 1):
                continue  # the broker under-reported its end (see consumers.topics)
            self.resets.append(PositionReset(tp.topic, tp.partition, offset, ends[tp]))
            log.error(
                "stored_position_beyond_end",
                topic=tp.topic,
                partition=tp.partition,
                stored_offset=offset,
                end_offset=ends[tp],
                action="reading the partition from its start; receipts prevent double booking",
            )
            self.consumer.seek_to_beginning(tp)

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
        outcomes = self.ledger.record_batch(inbound, positions=positions)
        self._unsaved = None
        return outcomes

    def _next_batch(self) -> _Batch | None:
        if self._fetcher is None:
            self._fetcher = _Fetcher(self)
            self._fetcher.start()
        return self._fetcher.take(self.poll_timeout_ms / 1000)

    def _fetch(self) -> _Batch | None:
        """Polls and parses one batch (in the fetcher thread, which alone uses the consumer)."""
        if self._unchecked:  # assigned by the group in the last poll: check outside the callback
            unchecked, self._unchecked = self._unchecked, []
            self._rewind_positions_beyond_end(unchecked)
        records = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.batch_size_max)
        if not records:
            return None
        inbound: list[Inbound] = []
        positions: list[tuple[str, str, int, int]] = []
        for tp, messages in records.items():
            for m in messages:
                position = SourcePosition(tp.topic, tp.partition, m.offset)
                inbound.append(Inbound.parse(m.value, position, self.message_size_max_bytes))
            positions.append((self.consumer_name, tp.topic, tp.partition, messages[-1].offset + 1))
        return inbound, positions

    def _unread(self) -> int:
        if self.group and not self.assigned:
            return 1  # not in the group yet: nothing is known about what is waiting
        ends = self.consumer.end_offsets(self.partitions)
        return sum(max(0, ends[tp] - self.consumer.position(tp)) for tp in self.partitions)

    def lag(self) -> int:
        """Messages on the broker not yet booked by this consumer (read ahead or not)."""
        if self._fetcher is None:
            return self._unread()
        return self._fetcher.lag()

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.stop()
        self.consumer.close()


_Batch = tuple[list[Inbound], list[tuple[str, str, int, int]]]


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
        # Runs inside the consumer's poll: seeking is fine, asking the broker (end offsets)
        # is not, so the check for positions beyond the end waits for the next fetch.
        self.ingestor.partitions = sorted(assigned, key=lambda tp: tp.partition)
        self.ingestor.assigned = True
        if assigned:
            self.ingestor._seek_without_checking(list(assigned))
            self.ingestor._unchecked = list(assigned)


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

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                if self._lag_request.is_set():
                    self._lag_request.clear()
                    self._lag_answer.put(self.ingestor._unread() + self._queued())
                batch = self.ingestor._fetch()
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
