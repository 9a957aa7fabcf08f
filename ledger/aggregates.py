"""Event-sourced aggregates: funds, receipts (the fate of each upstream event), the policy book.

Each command checks its rule in a `check_*` method named after RULES.md and raises
`Rejected` with the rule's reason code; only then does it trigger one event, whose
`apply` is the only place state changes.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, AggregateCreated, AggregateEvent

from ledger import accounts
from ledger.errors import Reason, Rejected
from ledger.policy import PolicyTimeline
from schemas.policy import Policy

POLICY_BOOK_ID = uuid5(accounts.LEDGER_NAMESPACE, "policy-book")


class Fund(Aggregate):
    """A city pooling fund or a provincial adjustment fund: one account that never goes negative."""

    class Opened(AggregateCreated):
        account: str

    def __init__(self, account: str) -> None:
        name = accounts.AccountName.parse(account)
        self.account = account
        self.city = name.city
        self.scheme = name.scheme
        self.balance_fen = 0
        self.booking_count = 0
        self.opening: dict[str, int] | None = None
        # fiscal year -> category -> fen; categories are those of `Booking.category`.
        self.totals_fen: dict[int, dict[str, int]] = {}

    @classmethod
    def open(cls, account: str) -> Fund:
        return cls._create(cls.Opened, id=accounts.fund_id(account), account=account)

    # -- commands ---------------------------------------------------------

    def book(self, booking: dict[str, Any]) -> None:
        """Books this fund's leg of a transfer (`booking` as made by `ledger.movements`)."""
        self.check_stays_non_negative(self.delta_fen(booking))
        self.trigger_event(self.TransferBooked, **booking)

    def record_opening(
        self, booking: dict[str, Any], previous_year_income_fen: int, fiscal_year: int
    ) -> None:
        self.check_opening_comes_first()
        self.trigger_event(
            self.OpeningRecorded,
            previous_year_income_fen=previous_year_income_fen,
            opening_fiscal_year=fiscal_year,
            **booking,
        )

    # -- rule checks ------------------------------------------------------

    def check_stays_non_negative(self, delta_fen: int) -> None:
        """E1: a fund never goes negative."""
        if self.balance_fen + delta_fen < 0:
            raise Rejected(
                Reason.insufficient_funds,
                "E1",
                f"{self.account} holds {self.balance_fen} fen; "
                f"{-delta_fen} fen would take it to {self.balance_fen + delta_fen}",
                {"balance_fen": self.balance_fen, "requested_fen": -delta_fen},
            )

    def check_opening_comes_first(self) -> None:
        """P3: the opening balance is recorded once, before any other movement of the fund."""
        if self.opening is not None or self.booking_count:
            raise Rejected(
                Reason.opening_balance_exists,
                "P3",
                f"{self.account} already has "
                + ("an opening balance" if self.opening is not None else "movements")
                + "; an opening balance must be its first movement",
            )

    # -- queries ----------------------------------------------------------

    def delta_fen(self, booking: dict[str, Any]) -> int:
        amount = int(booking["amount_fen"])
        if booking["credit_account"] == self.account:
            return amount
        assert booking["debit_account"] == self.account, (booking, self.account)
        return -amount

    def total_fen(self, fiscal_year: int, *categories: str) -> int:
        year = self.totals_fen.get(fiscal_year, {})
        return sum(year.get(c, 0) for c in categories)

    # -- events -----------------------------------------------------------

    class TransferBooked(AggregateEvent):
        """One leg of a transfer. A counterparty that is not a fund is booked with it."""

        event_id: str
        kind: str
        debit_account: str
        credit_account: str
        amount_fen: int
        category: str
        fiscal_year: int
        occurred_at: str
        reversal_of: str | None

        def apply(self, aggregate: Aggregate) -> None:
            fund = cast(Fund, aggregate)
            fund.balance_fen += fund.delta_fen(self.__dict__)
            fund.booking_count += 1
            sign = -1 if self.reversal_of else 1
            year = fund.totals_fen.setdefault(self.fiscal_year, {})
            year[self.category] = year.get(self.category, 0) + sign * self.amount_fen

    class OpeningRecorded(TransferBooked):
        previous_year_income_fen: int
        opening_fiscal_year: int

        def apply(self, aggregate: Aggregate) -> None:
            super().apply(aggregate)
            cast(Fund, aggregate).opening = {
                "balance_fen": self.amount_fen,
                "previous_year_income_fen": self.previous_year_income_fen,
                "fiscal_year": self.opening_fiscal_year,
            }


def receipt_id(event_id: str) -> UUID:
    """The receipt of an upstream `event_id` (I1: one fate per producer's idempotency key)."""
    return uuid5(accounts.LEDGER_NAMESPACE, f"event:{event_id}")


def position_receipt_id(topic: str, partition: int, offset: int) -> UUID:
    """The receipt of a message that has no usable event_id (e.g. not JSON)."""
    return uuid5(accounts.LEDGER_NAMESPACE, f"position:{topic}/{partition}/{offset}")


class Receipt(Aggregate):
    """The fate of one upstream event: accepted with its transfer, or rejected with a reason.

    It keeps the payload it was decided on, so the decision can be audited and a
    re-delivery can be told apart from a conflicting reuse of the event_id.
    """

    class Accepted(AggregateCreated):
        event_id: str
        event_type: str
        payload_sha256: str
        payload: dict[str, Any]
        source: dict[str, Any] | None
        transfer: dict[str, Any] | None
        balances: dict[str, int]

    class Rejected(AggregateCreated):
        event_id: str | None
        event_type: str | None
        payload_sha256: str
        payload: dict[str, Any] | None
        raw_base64: str | None
        source: dict[str, Any] | None
        reason: str
        rule: str
        detail: str

    def __init__(
        self,
        event_id: str | None,
        event_type: str | None,
        payload_sha256: str,
        payload: dict[str, Any] | None,
        reason: str | None = None,
        transfer: dict[str, Any] | None = None,
    ) -> None:
        self.event_id = event_id
        self.event_type = event_type
        self.payload_sha256 = payload_sha256
        self.payload = payload
        self.status = "accepted" if reason is None else "rejected"
        self.reason = reason
        self.transfer = transfer
        self.reversed_by: str | None = None

    @classmethod
    def accept(cls, id: UUID, **fields: Any) -> Receipt:
        return cls._create(cls.Accepted, id=id, **fields)

    @classmethod
    def reject(cls, id: UUID, **fields: Any) -> Receipt:
        return cls._create(cls.Rejected, id=id, **fields)

    def is_same_delivery(self, payload_sha256: str) -> bool:
        return self.payload_sha256 == payload_sha256

    def reject_conflicting_delivery(self, **fields: Any) -> None:
        """I1: the same event_id with another payload is refused and recorded."""
        self.trigger_event(self.ConflictingDeliveryRejected, **fields)

    def mark_reversed(self, reversal_event_id: str) -> None:
        self.trigger_event(self.MarkedReversed, reversal_event_id=reversal_event_id)

    class ConflictingDeliveryRejected(AggregateEvent):
        event_id: str
        event_type: str | None
        payload_sha256: str
        payload: dict[str, Any] | None
        source: dict[str, Any] | None
        reason: str
        rule: str
        detail: str

        def apply(self, aggregate: Aggregate) -> None:
            """The first delivery's fate stands; the conflict is on record."""

    class MarkedReversed(AggregateEvent):
        reversal_event_id: str

        def apply(self, aggregate: Aggregate) -> None:
            cast(Receipt, aggregate).reversed_by = self.reversal_event_id


class PolicyBook(Aggregate):
    """Every policy adopted, by effective date, so each decision uses the policy then in force."""

    class Started(AggregateCreated):
        pass

    def __init__(self) -> None:
        self.timeline = PolicyTimeline()

    @classmethod
    def start(cls) -> PolicyBook:
        return cls._create(cls.Started, id=POLICY_BOOK_ID)

    def adopt(self, policy: Policy, event_id: str) -> None:
        self.trigger_event(
            self.PolicyAdopted, policy=policy.model_dump(mode="json"), event_id=event_id
        )

    class PolicyAdopted(AggregateEvent):
        policy: dict[str, Any]
        event_id: str

        def apply(self, aggregate: Aggregate) -> None:
            cast(PolicyBook, aggregate).timeline.adopt(Policy.model_validate(self.policy))
