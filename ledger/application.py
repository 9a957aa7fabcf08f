"""The ledger: a thin set of use cases over the aggregates (get, decide, save).

`Ledger.record_batch` takes a batch of upstream messages in order and, for each,
records its fate in a `Receipt`: accepted with the transfer it booked, rejected
with a reason code, or recognised as a re-delivery. Everything a batch changes is
saved in one call, hence one database transaction, together with whatever the
caller passes as `save_kwargs` (the consumer passes its Kafka positions).
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from typing import Any, ClassVar, Literal, Protocol, TypeVar, cast, runtime_checkable
from uuid import UUID, uuid5

import structlog
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, AggregateEvent
from eventsourcing.persistence import IntegrityError, Notification, PersistenceError

from ledger import accounts, movements
from ledger.aggregates import (
    POLICY_BOOK_ID,
    Fund,
    PolicyBook,
    Receipt,
    position_receipt_id,
    receipt_id,
)
from ledger.clock import business_date_of, fiscal_year_of
from ledger.errors import Reason, Rejected
from ledger.policy import load_packaged_policy
from schemas.events import (
    AdjustmentFundAllocated,
    AdjustmentFundExtracted,
    BudgetAdjusted,
    BudgetApproved,
    ClaimPaid,
    ContributionReceived,
    EventReversed,
    FiscalYearClosed,
    InterestCredited,
    InvalidJson,
    InvalidSchema,
    MessageTooLarge,
    OpeningBalanceRecorded,
    PolicyAdopted,
    SubsidyDisbursed,
    UpstreamEvent,
    json_object_or_none,
    parse_event,
)
from schemas.policy import ExtractionBase, Policy, Scheme

log = structlog.get_logger("ledger")
_Found = TypeVar("_Found", bound=Aggregate)

#: How often a batch is retried when another writer saved the same aggregate first.
SAVE_ATTEMPTS_MAX = 20
#: Random wait before a retry, times the attempt number, so colliding writers spread out.
RETRY_BACKOFF_S = 0.02
#: Fund snapshots keep aggregate reconstruction bounded however long the history.
FUND_SNAPSHOT_INTERVAL = 1000
#: Messages above this many bytes are refused unparsed (`message_too_large`); the default of
#: POOLING_MESSAGE_SIZE_MAX. Kafka's own limit is 1 MiB, and outcomes must stay below it.
MESSAGE_SIZE_MAX_BYTES = 256 * 1024
#: Of a message refused as too large, its receipt keeps this many first bytes (and its sha256).
RAW_EXCERPT_BYTES = 1024
#: An unexpected error is described in at most this many characters.
ERROR_TEXT_CHARS_MAX = 1000


@dataclass(frozen=True)
class SourcePosition:
    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


class ParseFailed(Exception):
    """Parsing raised what it never should (a bug): the message is `unprocessable`."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


InputError = InvalidJson | InvalidSchema | MessageTooLarge | ParseFailed


@dataclass(frozen=True)
class Inbound:
    """One upstream message: parsed, or with the reason it could not be.

    `raw` is the message's value (empty for a tombstone, a message without one); of a
    message refused as too large, replay has only the first bytes, and `size_bytes` the size.
    """

    raw: bytes
    position: SourcePosition | None = None
    event: UpstreamEvent | None = None
    error: InputError | None = None
    tombstone: bool = False
    size_bytes: int | None = None

    @property
    def size(self) -> int:
        return len(self.raw) if self.size_bytes is None else self.size_bytes

    @classmethod
    def parse(
        cls,
        raw: bytes | None,
        position: SourcePosition | None = None,
        size_max_bytes: int = MESSAGE_SIZE_MAX_BYTES,
        *,
        size_bytes: int | None = None,
    ) -> Inbound:
        """Never raises: whatever `raw` holds, the result is an event or the reason why not."""
        if raw is None:
            detail = "the message has no value (a Kafka tombstone); expected one JSON object"
            return cls(b"", position, error=InvalidJson(detail), tombstone=True)
        size = len(raw) if size_bytes is None else size_bytes
        if size > size_max_bytes:
            return cls(raw, position, error=MessageTooLarge(size, size_max_bytes), size_bytes=size_bytes)
        try:
            return cls(raw, position, event=parse_event(raw))
        except (InvalidJson, InvalidSchema) as error:
            return cls(raw, position, error=error)
        except Exception as error:  # noqa: BLE001 - parsing is total: a bug becomes a fate
            return cls(raw, position, error=ParseFailed(f"parsing failed: {_error_text(error)}"))


@dataclass(frozen=True)
class Outcome:
    status: Literal["accepted", "rejected", "duplicate"]
    event_id: str | None
    event_type: str | None
    reason: str | None = None
    detail: str | None = None
    position: SourcePosition | None = None


@runtime_checkable
class FindsOriginators(Protocol):
    """A recorder that can tell in one query which aggregates exist (PostgreSQL)."""

    def select_existing_originators(self, ids: Sequence[UUID]) -> set[UUID]: ...


@runtime_checkable
class SerialisesWriters(Protocol):
    """A recorder that can make writers of the same named aggregates take turns (PostgreSQL)."""

    def serialised(self, keys: Sequence[str]) -> AbstractContextManager[object]: ...


def _shared_aggregates(batch: Sequence[Inbound]) -> set[str]:
    """The aggregates this batch may write that writers of other partitions share."""
    keys: set[str] = set()
    for inbound in batch:
        e = inbound.event
        if e is None:
            continue
        if isinstance(e, AdjustmentFundExtracted | AdjustmentFundAllocated) or isinstance(e, InterestCredited | OpeningBalanceRecorded | FiscalYearClosed) and e.city is None:
            keys.add(accounts.province_adjustment(e.scheme))
        elif isinstance(e, EventReversed):  # may undo an extraction or an allocation
            keys.update(accounts.province_adjustment(s) for s in Scheme)
        elif isinstance(e, PolicyAdopted):
            keys.add("policy-book")
    return keys


@dataclass
class _WorkingSet:
    """The aggregates one batch reads and changes; saved together or not at all."""

    ledger: Ledger
    stored_receipt_ids: set[UUID]
    aggregates: dict[UUID, Aggregate] = field(default_factory=dict)

    def get(self, id: UUID, create: Callable[[], Aggregate] | None = None) -> Aggregate | None:
        if id not in self.aggregates:
            try:
                found: Aggregate = self.ledger.repository.get(id)
            except AggregateNotFoundError:
                if create is None:
                    return None
                found = create()
            else:
                # The cache saves re-reading what this process wrote, but another writer (a
                # consumer of other partitions, or of these after a rebalance) may have moved
                # the aggregate on: a decision, even a rejection, is taken on its latest state.
                for event in self.ledger.events.get(id, gt=found.version):
                    cast(AggregateEvent, event).mutate(found)
            self.aggregates[id] = found
        return self.aggregates[id]

    def fund(self, account: str) -> Fund:
        fund = self.get(accounts.fund_id(account), lambda: Fund.open(account))
        assert isinstance(fund, Fund)
        return fund

    def receipt(self, id: UUID) -> Receipt | None:
        if id in self.aggregates or id in self.stored_receipt_ids:
            receipt = self.get(id)
            assert isinstance(receipt, Receipt)
            return receipt
        return None

    def add(self, aggregate: Aggregate) -> None:
        self.aggregates[aggregate.id] = aggregate


class Ledger(Application[UUID]):
    """The provincial pooling ledger."""

    name = "Ledger"
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {Fund: FUND_SNAPSHOT_INTERVAL}
    # Aggregates stay in memory between batches; each is brought up to date with the events
    # recorded since (by any writer) when a batch reads it, instead of being rebuilt.
    env: ClassVar[dict[str, str]] = {
        "AGGREGATE_CACHE_MAXSIZE": "5000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
    }

    def __init__(self, env: dict[str, str] | None = None, seed_policy: Policy | None = None):
        super().__init__(env)
        self.seed_policy = seed_policy or load_packaged_policy()
        self._handlers: dict[str, Callable[[Any, Policy, _WorkingSet], Any]] = {
            "ContributionReceived": self._contribution,
            "SubsidyDisbursed": self._subsidy,
            "ClaimPaid": self._claim,
            "InterestCredited": self._interest,
            "OpeningBalanceRecorded": self._opening,
            "BudgetApproved": self._budget,
            "BudgetAdjusted": self._budget,
            "AdjustmentFundExtracted": self._extraction,
            "AdjustmentFundAllocated": self._allocation,
            "FiscalYearClosed": self._close_year,
            "EventReversed": self._reversal,
            "PolicyAdopted": self._adopt_policy,
        }

    # -- use cases ------------------------------------------------------------

    def record_batch(self, batch: Sequence[Inbound], **save_kwargs: Any) -> list[Outcome]:
        """Decides every message of `batch` in order and saves all of it in one transaction.

        A message whose decision raises an unexpected error is `unprocessable`: the working
        set, which that decision may have left half-changed, is dropped and the batch decided
        again from the stored state with that message rejected, so the partition goes on and
        nothing half-done is saved.
        """
        receipt_ids = [_receipt_id_of(i, _event_id_of(i)) for i in batch]
        failed: dict[int, str] = {}  # index in the batch -> the error deciding it raised
        encode_each = False  # after a save that failed to encode: find the message behind it
        with self._serialised(_shared_aggregates(batch)):
            attempt = 0
            while attempt < SAVE_ATTEMPTS_MAX:
                work = _WorkingSet(self, self._stored_receipts(receipt_ids))
                try:
                    outcomes = self._record_all(batch, receipt_ids, failed, work, encode_each)
                except _DecisionFailed as failure:
                    failed[failure.index] = failure.text
                    continue  # at most once per message of the batch
                attempt += 1
                try:
                    self.save(*work.aggregates.values(), **save_kwargs)
                except IntegrityError:
                    # Another writer saved one of our aggregates first: decide again on fresh state.
                    log.warning("batch_conflict_retry", attempt=attempt, size=len(batch))
                    self._forget_cached_aggregates()
                    time.sleep(random.uniform(0, RETRY_BACKOFF_S * attempt))
                    continue
                except PersistenceError:
                    raise
                except Exception as error:
                    if encode_each:
                        raise  # not the events of any one message: not for a rejection to hide
                    log.error("batch_save_failed", error=_error_text(error), size=len(batch),
                              action="deciding the batch again, encoding each message's events")
                    encode_each = True
                    continue
                return outcomes
        raise RuntimeError(f"batch still conflicting after {SAVE_ATTEMPTS_MAX} attempts")

    def _record_all(
        self,
        batch: Sequence[Inbound],
        receipt_ids: list[UUID],
        failed: dict[int, str],
        work: _WorkingSet,
        encode_each: bool = False,
    ) -> list[Outcome]:
        outcomes = []
        encoded: set[int] = set()  # ids of the pending events already encoded
        for index, (inbound, rid) in enumerate(zip(batch, receipt_ids, strict=True)):
            if index in failed:
                outcomes.append(self._unprocessable(inbound, failed[index], work))
                continue
            try:
                outcomes.append(self._record_one(inbound, rid, work))
                if encode_each:
                    self._encode_pending(work, encoded)
            except (PersistenceError, MemoryError):
                raise  # the database or the machine, not this message: the caller retries
            except Exception as error:  # one message's bug must not stop its partition
                raise _DecisionFailed(index, _error_text(error)) from error
        return outcomes

    def _encode_pending(self, work: _WorkingSet, encoded: set[int]) -> None:
        """Encodes the events decided so far as saving would: raises what saving would raise."""
        for aggregate in work.aggregates.values():
            for event in aggregate.pending_events:
                if id(event) not in encoded:
                    self.mapper.to_stored_event(event)
                    encoded.add(id(event))

    def _unprocessable(self, inbound: Inbound, text: str, work: _WorkingSet) -> Outcome:
        """Rejects a message whose decision failed, under a receipt of its own delivery.

        The event's own receipt stays free: once the bug is fixed, the same message published
        again is decided like any other (README, "Unprocessable messages").
        """
        fields = _safe_receipt_fields(inbound)
        rejection = Rejected(Reason.unprocessable, "I2", f"deciding the message failed: {text}")
        log.error(
            "event_unprocessable",
            event_id=fields["event_id"],
            event_type=fields["event_type"],
            reason=rejection.reason.value,
            detail=rejection.detail,
            source=fields["source"],
        )
        rid = _unprocessable_receipt_id(inbound, fields["payload_sha256"])
        if work.get(rid) is not None:  # this very delivery was rejected so before
            return Outcome("duplicate", fields["event_id"], fields["event_type"], position=inbound.position)
        work.add(Receipt.reject(rid, reason=rejection.reason.value, rule=rejection.rule,
                                detail=rejection.detail, **_kept_raw(inbound, fields), **fields))
        return Outcome("rejected", fields["event_id"], fields["event_type"], reason=rejection.reason.value,
                       detail=rejection.detail, position=inbound.position)

    def _serialised(self, keys: set[str]) -> AbstractContextManager[object]:
        """Writers of shared aggregates (the adjustment funds, the policy book) take turns.

        Optimistic concurrency alone keeps them correct, but a writer that keeps losing the
        race to a busy one could starve; a lock per shared aggregate lets each decide on
        fresh state and save without a conflict.
        """
        if keys and isinstance(self.recorder, SerialisesWriters):
            return self.recorder.serialised(sorted(keys))
        return nullcontext()

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

    # -- one message ----------------------------------------------------------

    def _record_one(self, inbound: Inbound, rid: UUID, work: _WorkingSet) -> Outcome:
        fields = _receipt_fields(inbound)
        prior = work.receipt(rid)
        if prior is not None:
            return self._redelivered(prior, fields, inbound)
        if inbound.event is None:
            assert inbound.error is not None
            rejection = Rejected(_INPUT_REASONS[type(inbound.error)], "I2", inbound.error.detail)
            return self._reject(rid, fields, rejection, work, inbound)
        try:
            transfer, balances = self._decide(inbound.event, work)
        except Rejected as rejection:
            return self._reject(rid, fields, rejection, work, inbound)
        work.add(Receipt.accept(rid, transfer=transfer, balances=balances, **fields))
        return Outcome("accepted", fields["event_id"], fields["event_type"], position=inbound.position)

    def _redelivered(self, prior: Receipt, fields: dict[str, Any], inbound: Inbound) -> Outcome:
        if prior.is_same_delivery(fields["payload_sha256"]):
            return Outcome("duplicate", fields["event_id"], fields["event_type"], position=inbound.position)
        rejection = Rejected(
            Reason.event_id_conflict,
            "I1",
            f"event_id {fields['event_id']} was already {prior.status} with a different payload; "
            "a new fact needs a new event_id",
        )
        prior.reject_conflicting_delivery(
            event_id=fields["event_id"],
            event_type=fields["event_type"],
            payload_sha256=fields["payload_sha256"],
            payload=fields["payload"],
            source=fields["source"],
            reason=rejection.reason.value,
            rule=rejection.rule,
            detail=rejection.detail,
        )
        return self._rejected_outcome(fields, rejection, inbound)

    def _reject(
        self, rid: UUID, fields: dict[str, Any], rejection: Rejected, work: _WorkingSet, inbound: Inbound
    ) -> Outcome:
        work.add(
            Receipt.reject(
                rid,
                reason=rejection.reason.value,
                rule=rejection.rule,
                detail=rejection.detail,
                **_kept_raw(inbound, fields),
                **fields,
            )
        )
        return self._rejected_outcome(fields, rejection, inbound)

    @staticmethod
    def _rejected_outcome(fields: dict[str, Any], rejection: Rejected, inbound: Inbound) -> Outcome:
        log.warning(
            "event_rejected",
            event_id=fields["event_id"],
            event_type=fields["event_type"],
            reason=rejection.reason.value,
            rule=rejection.rule,
            detail=rejection.detail,
            source=fields["source"],
        )
        return Outcome(
            "rejected",
            fields["event_id"],
            fields["event_type"],
            reason=rejection.reason.value,
            detail=rejection.detail,
            position=inbound.position,
        )

    # -- decisions -----------------------------------------------------------

    def _decide(
        self, event: UpstreamEvent, work: _WorkingSet
    ) -> tuple[dict[str, Any] | None, dict[str, int]]:
        policy = self._policy_in_force(event, work)
        self.check_known_codes(event, policy)
        transfer: movements.Transfer | None = self._handlers[event.type](event, policy, work)
        if transfer is None:
            return None, {}
        return transfer.as_booking(), self._balances_after(transfer, work)

    def _policy_in_force(self, event: UpstreamEvent, work: _WorkingSet) -> Policy:
        book = work.get(POLICY_BOOK_ID, self._seeded_policy_book)
        assert isinstance(book, PolicyBook)
        day = business_date_of(event.occurred_at)
        policy = book.timeline.in_force(day)
        if policy is None:
            raise Rejected(Reason.policy_violation, "M2", f"no policy is in force on {day}")
        return policy

    def _seeded_policy_book(self) -> PolicyBook:
        book = PolicyBook.start()
        book.adopt(self.seed_policy, event_id=f"seed:{self.seed_policy.name}")
        return book

    @staticmethod
    def check_known_codes(event: UpstreamEvent, policy: Policy) -> None:
        """I2: the province and city codes are the policy's."""
        if event.province != policy.province:
            raise Rejected(
                Reason.unknown_city,
                "I2",
                f"province {event.province} is not {policy.province}, the province of policy {policy.name!r}",
            )
        city = getattr(event, "city", None)
        if city is not None and city not in policy.cities:
            raise Rejected(Reason.unknown_city, "I2", f"city {city} is not in policy {policy.name!r}")

    @staticmethod
    def check_subsidised_scheme(event: SubsidyDisbursed, policy: Policy) -> None:
        """E5: fiscal subsidies go to the subsidised schemes only (resident by default)."""
        if event.scheme not in policy.subsidised_schemes:
            allowed = ", ".join(s.value for s in policy.subsidised_schemes)
            raise Rejected(
                Reason.earmark_violation,
                "E5",
                f"subsidies may go to the {allowed} scheme only, not {event.scheme.value}",
            )

    def _contribution(self, e: ContributionReceived, policy: Policy, work: _WorkingSet) -> movements.Transfer:
        return self._book(movements.contribution(e), work)

    def _subsidy(self, e: SubsidyDisbursed, policy: Policy, work: _WorkingSet) -> movements.Transfer:
        self.check_subsidised_scheme(e, policy)
        self.check_subsidy_standard(e, policy)
        return self._book(movements.subsidy(e), work)

    def _claim(self, e: ClaimPaid, policy: Policy, work: _WorkingSet) -> movements.Transfer:
        transfer = movements.claim(e)
        fund = work.fund(transfer.debit_account)
        fund.check_period_open(transfer.fiscal_year)  # a closed year's reason comes first
        fund.check_within_budget(transfer.fiscal_year, e.amount_fen, policy.require_budget)
        return self._book(transfer, work)

    def _interest(self, e: InterestCredited, policy: Policy, work: _WorkingSet) -> movements.Transfer:
        return self._book(movements.interest(e), work)

    def _opening(self, e: OpeningBalanceRecorded, policy: Policy, work: _WorkingSet) -> movements.Transfer:
        transfer = movements.opening(e)
        fund = work.fund(transfer.credit_account)
        fund.check_period_open(transfer.fiscal_year)
        fund.check_opening_comes_first()
        fund.record_opening(transfer.as_booking(), e.previous_year_income_fen, e.fiscal_year)
        return transfer

    def _budget(self, e: BudgetApproved | BudgetAdjusted, policy: Policy, work: _WorkingSet) -> None:
        fund = work.fund(accounts.city_pooling(e.city, e.scheme))
        kind = "approved" if e.type == "BudgetApproved" else "adjusted"
        fund.set_budget(e.fiscal_year, e.income_fen, e.expenditure_fen, str(e.event_id), kind)

    def _extraction(self, e: AdjustmentFundExtracted, policy: Policy, work: _WorkingSet) -> movements.Transfer:
        self.check_phase_active(e, policy)
        transfer = movements.extraction(e)
        city, province = work.fund(transfer.debit_account), work.fund(transfer.credit_account)
        with_subsidies = policy.extraction_base == ExtractionBase.contributions_and_subsidies
        city.check_period_open(e.fiscal_year)
        city.check_extraction_within_cap(
            e.fiscal_year,
            e.amount_fen,
            city.extraction_base_fen(e.fiscal_year, with_subsidies),
            policy.extraction_rate_bp,
        )
        province.check_adjustment_fund_ceiling(
            e.amount_fen,
            self._province_income_fen(province, e.fiscal_year - 1, policy, work),
            policy.pause_ratio_bp,
            e.fiscal_year,
        )
        return self._book(transfer, work)

    def _allocation(self, e: AdjustmentFundAllocated, policy: Policy, work: _WorkingSet) -> movements.Transfer:
        self.check_phase_active(e, policy)
        transfer = movements.allocation(e)
        city = work.fund(transfer.credit_account)
        city.check_period_open(e.fiscal_year)
        city.check_allocation_within_share(
            e.fiscal_year, e.gap_fen, e.amount_fen, policy.gap_share_bp[e.reason], e.reason.value
        )
        return self._book(transfer, work)

    def _close_year(self, e: FiscalYearClosed, policy: Policy, work: _WorkingSet) -> None:
        """P1: locks the year of one fund and fixes its income as next year's base."""
        fund = work.fund(accounts.fund_account(e.city, e.scheme))
        if e.city is None:
            income_fen = self._province_income_fen(fund, e.fiscal_year, policy, work)
        else:
            with_subsidies = policy.extraction_base == ExtractionBase.contributions_and_subsidies
            income_fen = fund.extraction_base_fen(e.fiscal_year + 1, with_subsidies)
        fund.close_year(e.fiscal_year, income_fen, str(e.event_id))

    def _reversal(self, e: EventReversed, policy: Policy, work: _WorkingSet) -> movements.Transfer:
        """P2: the exact opposite of an accepted movement, once."""
        original = work.get(receipt_id(str(e.original_event_id)))
        if not isinstance(original, Receipt) or original.status != "accepted" or original.transfer is None:
            fate = "unknown" if original is None else (
                "rejected" if isinstance(original, Receipt) and original.status == "rejected"
                else "not a movement"
            )
            raise Rejected(
                Reason.unknown_original,
                "P2",
                f"event {e.original_event_id} is {fate}: only an accepted movement can be reversed",
            )
        if original.transfer.get("reversal_of"):
            # Undoing a reversal would book the original movement again without its rules
            # (caps, budgets): the fact has to come again as a new event instead.
            raise Rejected(
                Reason.unknown_original,
                "P2",
                f"event {e.original_event_id} is itself a reversal; to restore the movement it "
                "reversed, publish that movement again as a new event",
            )
        if original.reversed_by is not None:
            raise Rejected(
                Reason.already_reversed,
                "P2",
                f"event {e.original_event_id} was already reversed by {original.reversed_by}",
            )
        booked = movements.Transfer(**original.transfer)
        funds = [work.fund(a) for a in (booked.debit_account, booked.credit_account) if accounts.is_fund(a)]
        own_year = fiscal_year_of(e.occurred_at)
        prior_year = any(booked.fiscal_year in f.closed_years for f in funds)
        opposite = booked.opposite(
            event_id=str(e.event_id),
            fiscal_year=own_year if prior_year else booked.fiscal_year,
            occurred_at=e.occurred_at.isoformat(),
            prior_year_adjustment=prior_year,
        )
        self._book(opposite, work)
        original.mark_reversed(str(e.event_id))
        return opposite

    def _adopt_policy(self, e: PolicyAdopted, policy: Policy, work: _WorkingSet) -> None:
        """Effective-dated parameters: adopted ahead of (or on) the day they take effect."""
        if e.policy.province != e.province:
            raise Rejected(
                Reason.policy_violation,
                "I2",
                f"the policy is for province {e.policy.province}, the event for {e.province}",
            )
        day = business_date_of(e.occurred_at)
        if e.effective_from < day:
            raise Rejected(
                Reason.policy_violation,
                "M2",
                f"effective_from {e.effective_from} is before the adoption day {day}: a policy "
                "cannot change decisions already taken",
            )
        self.check_no_booking_on_or_after(e.effective_from, policy, work)
        book = work.get(POLICY_BOOK_ID)
        assert isinstance(book, PolicyBook)
        book.adopt(e.policy.model_copy(update={"effective_from": e.effective_from}), str(e.event_id))

    @staticmethod
    def check_no_booking_on_or_after(effective_from: date, policy: Policy, work: _WorkingSet) -> None:
        """A policy arriving late must not take effect where movements were already booked."""
        for city in [*policy.cities, None]:
            for scheme in Scheme:
                fund = work.get(accounts.fund_id(accounts.fund_account(city, scheme)))
                if not isinstance(fund, Fund) or fund.last_business_day is None:
                    continue
                if date.fromisoformat(fund.last_business_day) >= effective_from:
                    raise Rejected(
                        Reason.policy_violation,
                        "M2",
                        f"{fund.account} has movements booked on {fund.last_business_day}, on or "
                        f"after effective_from {effective_from}: a policy cannot change decisions "
                        "already taken",
                    )

    @staticmethod
    def check_phase_active(e: AdjustmentFundExtracted | AdjustmentFundAllocated, policy: Policy) -> None:
        """X1: the adjustment fund of a scheme works only from its phase date."""
        start = policy.adjustment_from.get(e.scheme)
        day = business_date_of(e.occurred_at)
        # Both the day it happens and the fiscal year it is for must be in the phase.
        if start is None or day < start or e.fiscal_year < start.year:
            when = f"from {start}" if start else "not at all under this policy"
            raise Rejected(
                Reason.phase_not_active,
                "X1",
                f"the {e.scheme.value} adjustment fund operates {when}; the event is dated {day} "
                f"(China Standard Time) for fiscal year {e.fiscal_year}",
                {"adjustment_from": str(start) if start else None, "business_date": str(day)},
            )

    @staticmethod
    def check_subsidy_standard(e: SubsidyDisbursed, policy: Policy) -> None:
        """I3: with a headcount, a subsidy matches the per-capita standard of its level and year."""
        if e.headcount is None:
            return
        year = fiscal_year_of(e.occurred_at)
        standards = [
            s for s in policy.subsidy_standards
            if s.fiscal_year == year and s.level == e.level and s.scheme == e.scheme
        ]
        if not standards:
            return
        expected = sorted({e.headcount * fen for s in standards for fen in s.per_capita_fen})
        tolerance = max(s.rounding_tolerance_fen for s in standards)
        if not any(abs(e.amount_fen - fen) <= tolerance for fen in expected):
            raise Rejected(
                Reason.policy_violation,
                "I3",
                f"{e.amount_fen} fen for {e.headcount} people does not match the {e.level.value} "
                f"standard of {year} ({', '.join(str(f) for s in standards for f in s.per_capita_fen)} "
                f"fen a head): expected one of {expected} (within {tolerance} fen)",
                {"expected_fen": expected},
            )

    def _province_income_fen(
        self, province: Fund, fiscal_year: int, policy: Policy, work: _WorkingSet
    ) -> int:
        """X4: the province's collected income of a year, for one scheme.

        Fixed by the province's year close; else the sum of the cities' figures (the
        adjustment fund's own opening speaks of its own income, not the province's).
        """
        if fiscal_year in province.closed_years:
            return province.closed_years[fiscal_year]
        with_subsidies = policy.extraction_base == ExtractionBase.contributions_and_subsidies
        total = 0
        for city in policy.cities:
            fund = work.get(accounts.fund_id(accounts.city_pooling(city, str(province.scheme))))
            if isinstance(fund, Fund):
                total += fund.extraction_base_fen(fiscal_year + 1, with_subsidies)
        return total

    def _book(self, transfer: movements.Transfer, work: _WorkingSet) -> movements.Transfer:
        """Books both legs, after checking every rule on every fund it touches."""
        violation = accounts.edge_violation(
            transfer.debit_account, transfer.credit_account, reversal=transfer.reversal_of is not None
        )
        if violation is not None:
            raise Rejected(Reason.earmark_violation, "E3", violation)
        booking = transfer.as_booking()
        funds = [work.fund(a) for a in (transfer.debit_account, transfer.credit_account) if accounts.is_fund(a)]
        for fund in funds:
            fund.check_period_open(transfer.fiscal_year)
            fund.check_stays_non_negative(fund.delta_fen(booking))
            fund.check_stays_within_bound(booking)
        for fund in funds:
            fund.book(booking)
        return transfer

    @staticmethod
    def _balances_after(transfer: movements.Transfer, work: _WorkingSet) -> dict[str, int]:
        return {
            a: work.fund(a).balance_fen
            for a in (transfer.debit_account, transfer.credit_account)
            if accounts.is_fund(a)
        }

    # -- infrastructure seams -----------------------------------------------

    def _stored_receipts(self, ids: Sequence[UUID]) -> set[UUID]:
        if isinstance(self.recorder, FindsOriginators):
            return self.recorder.select_existing_originators(ids)
        return {i for i in ids if self.recorder.select_events(i, limit=1)}

    def _forget_cached_aggregates(self) -> None:
        self._repository = self.construct_repository()

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


_INPUT_REASONS: dict[type[Exception], Reason] = {
    InvalidJson: Reason.invalid_json,
    InvalidSchema: Reason.invalid_schema,
    MessageTooLarge: Reason.message_too_large,
    ParseFailed: Reason.unprocessable,
}


class _DecisionFailed(Exception):
    """Deciding the message at `index` of a batch raised an unexpected error."""

    def __init__(self, index: int, text: str) -> None:
        super().__init__(text)
        self.index = index
        self.text = text


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= ERROR_TEXT_CHARS_MAX else text[: ERROR_TEXT_CHARS_MAX - 3] + "..."


def _kept_raw(inbound: Inbound, fields: dict[str, Any]) -> dict[str, Any]:
    """What a rejection keeps of a message it has no JSON object of: its bytes, or their start.

    `raw_base64` is None for a tombstone; of a message above the size limit it holds only the
    first RAW_EXCERPT_BYTES, and `raw_size_bytes` tells the size, so replay decides it again.
    """
    if fields["payload"] is not None:
        return {"raw_base64": None, "raw_size_bytes": None}
    if inbound.tombstone:
        return {"raw_base64": None, "raw_size_bytes": 0}
    kept = inbound.raw[:RAW_EXCERPT_BYTES] if isinstance(inbound.error, MessageTooLarge) else inbound.raw
    return {"raw_base64": base64.b64encode(kept).decode(), "raw_size_bytes": inbound.size}


def _unprocessable_receipt_id(inbound: Inbound, payload_sha256: str) -> UUID:
    p = inbound.position
    where = f"{p.topic}/{p.partition}/{p.offset}" if p is not None else "-"
    return uuid5(accounts.LEDGER_NAMESPACE, f"unprocessable:{where}:{payload_sha256}")


def _safe_receipt_fields(inbound: Inbound) -> dict[str, Any]:
    """The receipt fields of a message whose decision failed, even if computing them fails."""
    try:
        return _receipt_fields(inbound)
    except Exception:  # noqa: BLE001 - the message is recorded by its bytes alone
        return {
            "event_id": None,
            "event_type": None,
            "payload_sha256": hashlib.sha256(inbound.raw).hexdigest(),
            "payload": None,
            "source": inbound.position.as_dict() if inbound.position else None,
        }


def _event_id_of(inbound: Inbound) -> str | None:
    if inbound.event is not None:
        return str(inbound.event.event_id)
    if isinstance(inbound.error, InvalidSchema) and inbound.error.event_id:
        try:  # the same spelling a valid message's event_id gets, so a later reuse is a conflict
            return str(UUID(inbound.error.event_id))
        except ValueError:
            return inbound.error.event_id
    return None


def _receipt_id_of(inbound: Inbound, event_id: str | None) -> UUID:
    if event_id is not None:
        return receipt_id(event_id)
    p = inbound.position
    if p is None:  # not from Kafka: the bytes themselves are the only identity it has
        return uuid5(accounts.LEDGER_NAMESPACE, "raw:" + hashlib.sha256(inbound.raw).hexdigest())
    return position_receipt_id(p.topic, p.partition, p.offset)


def _receipt_fields(inbound: Inbound) -> dict[str, Any]:
    """What every receipt keeps of the message it decides."""
    payload: dict[str, Any] | None
    if inbound.event is not None:
        payload = inbound.event.model_dump(mode="json")
        digest = hashlib.sha256(inbound.event.model_dump_json().encode()).hexdigest()
        event_type: str | None = inbound.event.type
    else:
        too_large = isinstance(inbound.error, MessageTooLarge)
        payload = None if too_large or inbound.tombstone else json_object_or_none(inbound.raw)
        digest = hashlib.sha256(inbound.raw).hexdigest()
        event_type = getattr(inbound.error, "event_type", None)
    return {
        "event_id": _event_id_of(inbound),
        "event_type": event_type,
        "payload_sha256": digest,
        "payload": payload,
        "source": inbound.position.as_dict() if inbound.position else None,
    }

