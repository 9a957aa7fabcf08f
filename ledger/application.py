"""The ledger: a thin set of use cases over the aggregates (get, decide, save).

`Ledger.record_batch` takes a batch of upstream messages in order and, for each,
records its fate in a `Receipt`: accepted with the transfer it booked, rejected
with a reason code, or recognised as a re-delivery. Everything a batch changes is
saved in one call, hence one database transaction, together with whatever the
caller passes as `save_kwargs` (the consumer passes its Kafka positions).

The ledger sees messages as the adapter that received them describes them
(`Message`): the parsed event or why there is none, and opaque references to keep.
Bytes, digests, Kafka positions, retries and locks are the adapters' business
(`consumers/inbound.py`, `consumers/booking.py`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from typing import Any, ClassVar, Literal, Protocol, TypeVar, cast, runtime_checkable
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate, AggregateEvent
from eventsourcing.persistence import Notification, PersistenceError, Recording, StoredEvent

from ledger import accounts, decisions
from ledger.aggregates import (
    POLICY_BOOK_ID,
    DecisionDay,
    Fund,
    PolicyBook,
    Receipt,
    decision_day_id,
    delivery_receipt_id,
    receipt_id,
    unprocessable_receipt_id,
)
from ledger.clock import business_date_of
from ledger.errors import Reason, Rejected
from ledger.movements import Transfer
from ledger.policy import PolicyTerms, load_packaged_policy
from schemas.events import OCCURRED_YEAR_MAX, EventReversed, RecoveryReceived, UpstreamEvent
from schemas.policy import Policy

log = structlog.get_logger("ledger")
_Found = TypeVar("_Found", bound=Aggregate)

#: Fund snapshots keep aggregate reconstruction bounded however long the history: one every
#: this many events of the fund (an event holds the legs one batch booked on it).
FUND_SNAPSHOT_INTERVAL = 100
#: At most this many funds (and the policy book) are kept in memory between batches.
HOT_AGGREGATES_MAX = 10_000
#: An unexpected error is described in at most this many characters.
ERROR_TEXT_CHARS_MAX = 1000


@dataclass(frozen=True)
class Message:
    """One upstream message, as the adapter that received it describes it to the ledger.

    Either `event` is the parsed event, or `refusal` says why there is none (I2). The rest
    is kept by its receipt, opaque to the ledger: `payload_digest` tells a re-delivery from
    a conflicting reuse of an event_id (I1); `delivery_key` names a message that has no
    event_id (where it came from); `source` is the adapter's reference to it; `raw_excerpt`
    and `raw_size_bytes` keep what a rejection without a JSON payload has of it.
    """

    event: UpstreamEvent | None
    refusal: Rejected | None
    event_id: str | None
    event_type: str | None
    payload: dict[str, Any] | None
    payload_digest: str
    delivery_key: str
    source: dict[str, Any] | None = None
    raw_excerpt: str | None = None
    raw_size_bytes: int | None = None

    @property
    def receipt_id(self) -> UUID:
        """I1: one fate per event_id; a message without one has a receipt of its delivery."""
        if self.event_id is not None:
            return receipt_id(self.event_id)
        return delivery_receipt_id(self.delivery_key)

    def receipt_fields(self) -> dict[str, Any]:
        """What every receipt keeps of the message it decides."""
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "payload_sha256": self.payload_digest,
            "payload": self.payload,
            "source": self.source,
        }


@dataclass(frozen=True)
class Outcome:
    status: Literal["accepted", "rejected", "duplicate"]
    event_id: str | None
    event_type: str | None
    reason: str | None = None
    detail: str | None = None
    source: dict[str, Any] | None = None


@runtime_checkable
class FindsOriginators(Protocol):
    """A recorder that can tell in one query which aggregates exist (PostgreSQL)."""

    def select_existing_originators(self, ids: Sequence[UUID]) -> set[UUID]: ...


@runtime_checkable
class ReadsStreams(Protocol):
    """A recorder that reads the streams of many aggregates in one query (PostgreSQL)."""

    def select_streams(self, ids: Sequence[UUID]) -> list[StoredEvent]: ...


@runtime_checkable
class KnowsVersions(Protocol):
    """A recorder that can tell in one query the latest version of many aggregates (PostgreSQL)."""

    def select_versions(self, ids: Sequence[UUID]) -> dict[UUID, int]: ...


@dataclass
class _WorkingSet:
    """The aggregates one batch reads and changes; saved together or not at all.

    It is the `State` the decisions (`ledger.decisions`) read.
    """

    ledger: Ledger
    stored_receipt_ids: set[UUID]
    aggregates: dict[UUID, Aggregate] = field(default_factory=dict)
    #: I4: the business days of the events this batch decided so far
    decided_days: set[date] = field(default_factory=set)

    def get(self, id: UUID, create: Callable[[], Aggregate] | None = None) -> Aggregate | None:
        if id in self.aggregates:
            return self.aggregates[id]
        found = self.ledger.load(id)
        if found is None:
            if create is None:
                return None
            found = create()
        self.aggregates[id] = found
        return found

    def fund(self, account: str) -> Fund:
        fund = self.get(accounts.fund_id(account), lambda: Fund.open(account))
        assert type(fund) is Fund
        return fund

    def opened_fund(self, account: str) -> Fund | None:
        fund = self.get(accounts.fund_id(account))
        assert fund is None or type(fund) is Fund
        return fund

    def receipt(self, id: UUID) -> Receipt | None:
        if id in self.aggregates or id in self.stored_receipt_ids:
            receipt = self.get(id)
            assert type(receipt) is Receipt
            return receipt
        return None

    def receipt_of(self, event_id: str) -> Receipt | None:
        receipt = self.get(receipt_id(event_id))
        assert receipt is None or type(receipt) is Receipt
        return receipt

    def policy_book(self) -> PolicyBook:
        book = self.get(POLICY_BOOK_ID, self.ledger.seeded_policy_book)
        assert type(book) is PolicyBook
        return book

    def latest_decision_day(self, since: date) -> date | None:
        """I4: the latest business day, from `since` on, of an event decided before (this batch included)."""
        days = {d for d in self.decided_days if d >= since} | self.ledger.decision_days_since(since)
        return max(days, default=None)

    def add(self, aggregate: Aggregate) -> None:
        self.aggregates[aggregate.id] = aggregate


class Ledger(Application[UUID]):
    """The provincial pooling ledger."""

    name = "Ledger"
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Fund: FUND_SNAPSHOT_INTERVAL}

    def __init__(self, env: dict[str, str] | None = None, seed_policy: Policy | None = None):
        super().__init__(env)
        self.seed_policy = seed_policy or load_packaged_policy()
        #: The decision of each event type; a test may put a faulty one in its place.
        self.decisions: dict[str, decisions.Decision] = dict(decisions.DECISIONS)
        #: The funds and the policy book as this process last saved or read them: kept in memory
        #: between batches instead of rebuilt, and brought up to date at the start of each batch
        #: with what other writers recorded since (`_catch_up`).
        self._hot: dict[UUID, Aggregate] = {}
        #: I4: business days known to have their `DecisionDay` marker stored
        self._noted_days: set[date] = set()

    # -- use cases ------------------------------------------------------------

    def record_batch(self, batch: Sequence[Message], **save_kwargs: Any) -> list[Outcome]:
        """Decides every message of `batch` in order and saves all of it in one transaction.

        One attempt: if another writer saved one of the same aggregates first, the save
        raises `IntegrityError` and nothing is saved; the cached aggregates are dropped so
        that the caller (`consumers.booking`) can submit the batch again on fresh state.

        A message whose decision raises an unexpected error is `unprocessable`: the working
        set, which that decision may have left half-changed, is dropped and the batch decided
        again from the stored state with that message rejected, so the partition goes on and
        nothing half-done is saved.
        """
        receipt_ids = [m.receipt_id for m in batch]
        failed: dict[int, str] = {}  # index in the batch -> the error deciding it raised
        encode_each = False  # after a save that failed to encode: find the message behind it
        while True:  # at most once per message of the batch, and once more to encode each
            self._catch_up()
            work = _WorkingSet(self, self._stored_receipts(receipt_ids))
            self._prefetch_referenced_receipts(batch, work)
            try:
                outcomes = self._record_all(batch, receipt_ids, failed, work, encode_each)
            except BaseException as error:
                self._forget_cached_aggregates()  # the decisions may have changed them
                if not isinstance(error, _DecisionFailed):
                    raise
                failed[error.index] = error.text
                continue
            markers, new_days = self._note_decision_days(work)
            try:
                # the day markers first: a batch's last notification stays a receipt, which is
                # where the relay's position ends (its backlog counts to the last notification)
                self.save(*markers, *work.aggregates.values(), **save_kwargs)
            except BaseException as error:
                # Changed in memory, not saved: another writer moved them on (IntegrityError),
                # the database is away, or an event could not be encoded.
                self._forget_cached_aggregates()
                if isinstance(error, PersistenceError) or not isinstance(error, Exception) or encode_each:
                    raise  # the caller retries; or not the events of any one message
                log.error("batch_save_failed", error=error_text(error), size=len(batch),
                          action="deciding the batch again, encoding each message's events")
                encode_each = True
                continue
            for aggregate in work.aggregates.values():
                if _kept_in_memory(aggregate):
                    self._hot[aggregate.id] = aggregate
            self._noted_days |= new_days
            return outcomes

    def _prefetch_referenced_receipts(self, batch: Sequence[Message], work: _WorkingSet) -> None:
        """The stored receipts the batch's recoveries (their claim, P4) and reversals (their
        original, P2) will read, loaded in one query instead of one per event."""
        if not isinstance(self.recorder, ReadsStreams):
            return
        wanted = set()
        for message in batch:
            event = message.event
            if isinstance(event, RecoveryReceived) and event.claim_event_id is not None:
                wanted.add(receipt_id(str(event.claim_event_id)))
            elif isinstance(event, EventReversed):
                wanted.add(receipt_id(str(event.original_event_id)))
        wanted -= work.aggregates.keys()
        if not wanted:
            return
        streams: dict[UUID, Aggregate | None] = {}
        for stored in self.recorder.select_streams(list(wanted)):
            domain_event = cast(AggregateEvent, self.mapper.to_domain_event(stored))
            oid = cast(UUID, stored.originator_id)
            streams[oid] = domain_event.mutate(streams.get(oid))
        for id, aggregate in streams.items():
            if aggregate is not None:
                work.aggregates[id] = aggregate

    def _note_decision_days(self, work: _WorkingSet) -> tuple[list[DecisionDay], set[date]]:
        """I4: a `DecisionDay` for each day the batch decided an event on that has none yet (to
        save with the batch), and the days the batch decided on."""
        days = work.decided_days - self._noted_days
        if not days:
            return [], set()
        stored = self._existing({decision_day_id(d): d for d in days})
        return [DecisionDay.note(day) for day in sorted(days - stored)], days

    def decision_days_since(self, since: date) -> set[date]:
        """I4: the business days from `since` to the last one an event may be dated on that have a
        `DecisionDay` stored (one query on PostgreSQL; a policy adoption is rare)."""
        last = date(OCCURRED_YEAR_MAX, 12, 31)
        candidates = {decision_day_id(since + timedelta(days=n)): since + timedelta(days=n)
                      for n in range(max(0, (last - since).days + 1))}
        return self._existing(candidates)

    def _existing(self, ids_to_days: dict[UUID, date]) -> set[date]:
        if isinstance(self.recorder, FindsOriginators):
            found = self.recorder.select_existing_originators(list(ids_to_days))
        else:
            found = {i for i in ids_to_days if self.load(i) is not None}
        return {ids_to_days[i] for i in found}

    def load(self, id: UUID) -> Aggregate | None:
        """The aggregate `id` as last saved or read by this process, else from the store."""
        found = self._hot.get(id)
        if found is None:
            try:
                found = self.repository.get(id)
            except AggregateNotFoundError:
                return None
            if _kept_in_memory(found):
                if len(self._hot) >= HOT_AGGREGATES_MAX:
                    self._hot.clear()
                self._hot[id] = found
        return found

    def _catch_up(self) -> None:
        """Brings the aggregates kept in memory up to date with what other writers recorded.

        One query for all of them: a consumer of other partitions writes the shared ones (the
        adjustment funds, the policy book), and after a rebalance anyone's. A decision, even a
        rejection, is taken on the latest state; a save that still loses a race meanwhile
        fails on the aggregate's version and the batch is decided again.
        """
        if not self._hot or not isinstance(self.recorder, KnowsVersions):
            return
        for id, version in self.recorder.select_versions(list(self._hot)).items():
            aggregate = self._hot[id]
            if version > aggregate.version:
                for event in self.events.get(id, gt=aggregate.version):
                    cast(AggregateEvent, event).mutate(aggregate)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Application.save without its per-object Protocol checks: `objs` are aggregates."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for aggregate in objs:
            processing_event.events.extend(aggregate.collect_events())
            processing_event.aggregates[aggregate.id] = aggregate
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    def _record_all(
        self,
        batch: Sequence[Message],
        receipt_ids: list[UUID],
        failed: dict[int, str],
        work: _WorkingSet,
        encode_each: bool = False,
    ) -> list[Outcome]:
        outcomes = []
        encoded: set[int] = set()  # ids of the pending events already encoded
        for index, (message, rid) in enumerate(zip(batch, receipt_ids, strict=True)):
            if index in failed:
                outcomes.append(self._unprocessable(message, failed[index], work))
                continue
            try:
                outcomes.append(self._record_one(message, rid, work))
                if encode_each:
                    self._encode_pending(work, encoded)
            except (PersistenceError, MemoryError):
                raise  # the database or the machine, not this message: the caller retries
            except Exception as error:  # one message's bug must not stop its partition
                raise _DecisionFailed(index, error_text(error)) from error
        return outcomes

    def _encode_pending(self, work: _WorkingSet, encoded: set[int]) -> None:
        """Encodes the events decided so far as saving would: raises what saving would raise."""
        for aggregate in work.aggregates.values():
            for event in aggregate.pending_events:
                if id(event) not in encoded:
                    self.mapper.to_stored_event(event)
                    encoded.add(id(event))

    def _unprocessable(self, message: Message, text: str, work: _WorkingSet) -> Outcome:
        """Rejects a message whose decision failed, under a receipt of its own delivery.

        The event's own receipt stays free: once the bug is fixed, the same message published
        again is decided like any other (README, "Unprocessable messages").
        """
        rejection = Rejected(Reason.unprocessable, "I2", f"deciding the message failed: {text}")
        log.error(
            "event_unprocessable",
            event_id=message.event_id,
            event_type=message.event_type,
            reason=rejection.reason.value,
            detail=rejection.detail,
            source=message.source,
        )
        rid = unprocessable_receipt_id(message.delivery_key, message.payload_digest)
        if work.get(rid) is not None:  # this very delivery was rejected so before
            return Outcome("duplicate", message.event_id, message.event_type, source=message.source)
        return self._reject(rid, message, rejection, work, logged=True)

    def receipt(self, event_id: str) -> Receipt | None:
        return self._find(receipt_id(event_id), Receipt)

    def fund(self, account: str) -> Fund | None:
        return self._find(accounts.fund_id(account), Fund)

    def policy_book(self) -> PolicyBook | None:
        return self._find(POLICY_BOOK_ID, PolicyBook)

    def _find(self, id: UUID, kind: type[_Found]) -> _Found | None:
        try:
            found: object = self.repository.get(id)
        except AggregateNotFoundError:
            return None
        assert isinstance(found, kind), (id, type(found))
        return found

    def seeded_policy_book(self) -> PolicyBook:
        """The policy book of a new ledger: its seed policy adopted."""
        book = PolicyBook.start()
        book.adopt(self.seed_policy, event_id=f"seed:{self.seed_policy.name}")
        return book

    # -- one message ----------------------------------------------------------

    def _record_one(self, message: Message, rid: UUID, work: _WorkingSet) -> Outcome:
        prior = work.receipt(rid)
        if prior is not None:
            return self._redelivered(prior, message)
        day = None if message.event is None else business_date_of(message.event.occurred_at)
        try:
            decided = self._decide(message, day, work)
        except Rejected as rejection:
            # A refusal kept on its message came back with this batch's frames on its traceback:
            # a cycle holding the whole batch that only Python's full collection would free.
            rejection.__traceback__ = None
            return self._reject(rid, message, rejection, work)
        finally:
            if day is not None:  # I4: a decision was taken on the event's business day, whatever its fate
                work.decided_days.add(day)
        transfers = [] if decided is None else [decided] if isinstance(decided, Transfer) else decided
        split = {"split": transfers[1].as_booking()} if len(transfers) > 1 else {}
        work.add(Receipt.accept(
            rid,
            transfer=transfers[0].as_booking() if transfers else None,
            balances=self._balances_after(transfers, work),
            **split,
            **message.receipt_fields(),
        ))
        return Outcome("accepted", message.event_id, message.event_type, source=message.source)

    def _decide(self, message: Message, day: date | None, work: _WorkingSet) -> Transfer | list[Transfer] | None:
        """Get, decide: the policy in force on the event's `day`, then the event type's decision."""
        if message.event is None or day is None:
            assert message.refusal is not None
            raise message.refusal
        event = message.event
        book = work.policy_book()
        book.check_policy_in_force(day)
        terms = PolicyTerms(book.policy_in_force(day))
        terms.check_known_codes(event)
        return self.decisions[event.type](event, terms, work)

    def _redelivered(self, prior: Receipt, message: Message) -> Outcome:
        try:
            prior.check_same_payload(message.payload_digest)
        except Rejected as conflict:
            prior.reject_conflicting_delivery(
                **message.receipt_fields(),
                reason=conflict.reason.value,
                rule=conflict.rule,
                detail=conflict.detail,
            )
            return self._rejected_outcome(message, conflict)
        return Outcome("duplicate", message.event_id, message.event_type, source=message.source)

    def _reject(
        self, rid: UUID, message: Message, rejection: Rejected, work: _WorkingSet, *, logged: bool = False
    ) -> Outcome:
        work.add(
            Receipt.reject(
                rid,
                reason=rejection.reason.value,
                rule=rejection.rule,
                detail=rejection.detail,
                raw_base64=message.raw_excerpt,
                raw_size_bytes=message.raw_size_bytes,
                **message.receipt_fields(),
            )
        )
        return self._rejected_outcome(message, rejection, logged=logged)

    @staticmethod
    def _rejected_outcome(message: Message, rejection: Rejected, *, logged: bool = False) -> Outcome:
        if not logged:
            log.warning(
                "event_rejected",
                event_id=message.event_id,
                event_type=message.event_type,
                reason=rejection.reason.value,
                rule=rejection.rule,
                detail=rejection.detail,
                source=message.source,
            )
        return Outcome(
            "rejected",
            message.event_id,
            message.event_type,
            reason=rejection.reason.value,
            detail=rejection.detail,
            source=message.source,
        )

    @staticmethod
    def _balances_after(transfers: list[Transfer], work: _WorkingSet) -> dict[str, int]:
        return {a: work.fund(a).balance_fen for t in transfers for a in t.fund_accounts()}

    # -- infrastructure seams -----------------------------------------------

    def _stored_receipts(self, ids: Sequence[UUID]) -> set[UUID]:
        if isinstance(self.recorder, FindsOriginators):
            return self.recorder.select_existing_originators(ids)
        return {i for i in ids if self.recorder.select_events(i, limit=1)}

    def _forget_cached_aggregates(self) -> None:
        self._hot.clear()

    def notifications(self, topics: Sequence[str] = (), page_size: int = 10_000) -> Iterator[Any]:
        """Every recorded domain event in notification order (the auditor's replay)."""
        for notification in self.stored_notifications(topics, page_size):
            yield notification.id, self.mapper.to_domain_event(notification)

    def stored_notifications(
        self, topics: Sequence[str] = (), page_size: int = 10_000, stop: int | None = None
    ) -> Iterator[Notification]:
        """Every recorded event as stored (not decoded), in notification order, up to `stop`."""
        start = 1
        while True:
            page = self.recorder.select_notifications(start, page_size, stop=stop, topics=topics)
            if not page:
                return
            yield from page
            start = page[-1].id + 1


class InMemoryLedger(Ledger):
    """The ledger on plain in-memory state, storing nothing: the auditor's replay.

    Funds and the policy book live in a dict. A batch works on copies of what it reads, so a
    batch whose decision fails leaves nothing half-changed; its save puts the copies in place.
    Of a receipt only its fate is kept, compactly (`_Fate`: not the payload it was decided
    on), which is all a later decision reads of it (I1, P2): a million receipts take a few
    hundred megabytes.
    """

    def __init__(self, seed_policy: Policy | None = None) -> None:
        super().__init__(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, seed_policy=seed_policy)
        self._memory: dict[UUID, Aggregate] = {}
        self._fates: dict[UUID, _Fate] = {}

    def load(self, id: UUID) -> Aggregate | None:
        found = self._memory.get(id)
        if found is not None:
            return deepcopy(found)
        fate = self._fates.get(id)
        return fate.receipt(id) if fate is not None else None

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        for aggregate in objs:
            aggregate.collect_events()
            if type(aggregate) is Receipt:
                self._fates[aggregate.id] = _Fate.of(aggregate)
            else:
                self._memory[aggregate.id] = aggregate
        return []

    def _stored_receipts(self, ids: Sequence[UUID]) -> set[UUID]:
        return {i for i in ids if i in self._fates}

    def _find(self, id: UUID, kind: type[_Found]) -> _Found | None:
        found = self.load(id)
        assert found is None or isinstance(found, kind), (id, type(found))
        return found

    def transfer_of(self, event_id: str) -> dict[str, Any] | None:
        """The transfer the receipt of `event_id` booked, if any (without making the receipt)."""
        fate = self._fates.get(receipt_id(event_id))
        return fate.booked() if fate is not None else None


@dataclass(frozen=True, slots=True)
class _Fate:
    """What `InMemoryLedger` keeps of a receipt."""

    event_id: str | None
    event_type: str | None
    payload_digest: str
    reason: str | None
    transfer: tuple[Any, ...] | None  # its values in `_TRANSFER_FIELDS` order, names shared
    reversed_by: str | None
    recovered_fen: int
    split: tuple[Any, ...] | None = None  # the second transfer of a split event (E6)
    recovers: str | None = None  # P4: the claim a recovery was taken against (its reversal gives it back)

    @classmethod
    def of(cls, receipt: Receipt) -> _Fate:
        return cls(receipt.event_id, receipt.event_type, receipt.payload_sha256, receipt.reason,
                   _compact(receipt.transfer), receipt.reversed_by, receipt.recovered_fen,
                   _compact(receipt.split), receipt.recovered_claim_event_id)

    def booked(self) -> dict[str, Any] | None:
        return _expanded(self.transfer)

    def receipt(self, id: UUID) -> Receipt:
        payload = {"claim_event_id": self.recovers} if self.recovers is not None else None
        common = {"event_id": self.event_id, "event_type": self.event_type,
                  "payload_sha256": self.payload_digest, "payload": payload, "source": None}
        if self.reason is None:
            split = {"split": _expanded(self.split)} if self.split else {}
            receipt = Receipt.accept(id, transfer=self.booked(), balances={}, **split, **common)
        else:
            receipt = Receipt.reject(id, reason=self.reason, rule="", detail="", raw_base64=None, **common)
        receipt.collect_events()
        receipt.reversed_by = self.reversed_by
        receipt.recovered_fen = self.recovered_fen
        return receipt


def _compact(booked: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """A booked transfer as a tuple in `_TRANSFER_FIELDS` order, its repeated names shared."""
    if booked is None:
        return None
    return tuple(
        sys.intern(v) if type(v) is str and k in _SHARED_FIELDS else v
        for k, v in ((k, booked[k]) for k in _TRANSFER_FIELDS)
    )


def _expanded(compact: tuple[Any, ...] | None) -> dict[str, Any] | None:
    """The booked transfer `_compact` made a tuple of, as a dict again."""
    return dict(zip(_TRANSFER_FIELDS, compact, strict=True)) if compact is not None else None


_TRANSFER_FIELDS = tuple(field.name for field in fields(Transfer))
#: Fields whose values repeat across transfers (account names, categories): kept once each.
_SHARED_FIELDS = frozenset({"kind", "debit_account", "credit_account", "category"})


def _kept_in_memory(aggregate: Aggregate) -> bool:
    """The funds and the policy book stay in memory between batches; receipts do not."""
    return type(aggregate) is Fund or type(aggregate) is PolicyBook


class _DecisionFailed(Exception):
    """Deciding the message at `index` of a batch raised an unexpected error."""

    def __init__(self, index: int, text: str) -> None:
        super().__init__(text)
        self.index = index
        self.text = text


def error_text(error: BaseException) -> str:
    """An unexpected error, named and bounded (ERROR_TEXT_CHARS_MAX) for a rejection's detail."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= ERROR_TEXT_CHARS_MAX else text[: ERROR_TEXT_CHARS_MAX - 3] + "..."
