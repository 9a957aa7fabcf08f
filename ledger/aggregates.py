"""Event-sourced aggregates: funds, receipts (the fate of each upstream event), the policy book.

Each command checks its rule in a `check_*` method named after RULES.md and raises
`Rejected` with the rule's reason code; only then does it trigger one event, whose
`apply` is the only place state changes.
"""

from __future__ import annotations

import functools
from copy import deepcopy
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Any, Protocol, cast
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, AggregateCreated, AggregateEvent
from eventsourcing.domain import Snapshot as AggregateSnapshot

from ledger import accounts, daybook, formulas
from ledger.clock import CHINA_STANDARD_TIME
from ledger.errors import Reason, Rejected
from ledger.policy import PolicyTimeline
from schemas.policy import MAX_FEN, Policy

if TYPE_CHECKING:  # movements builds on this module's categories
    from ledger.movements import Transfer

# Categories under which funds total their bookings (made in `ledger.movements`).
OPENING_CATEGORY = "opening"
INTEREST_CATEGORY = "interest"
EXTRACTION_CATEGORY = "extraction"
ALLOCATION_CATEGORY = "allocation"
CONTRIBUTION_PREFIX = "contribution."
SUBSIDY_PREFIX = "subsidy."
CLAIM_PREFIX = "claim."
PRIOR_YEAR_PREFIX = "prior_year_adjustment."
RECOVERY_PREFIX = "recovery."
#: The major-illness insurance premium (E8): a benefit expenditure beside the claims (B3).
PREMIUM_CATEGORY = "premium.critical_illness"
#: Fund state keyed by fiscal year (JSON object keys are strings in a stored snapshot).
YEAR_KEYED_STATE = ("totals_fen", "year_net_fen", "budgets", "closed_years")

POLICY_BOOK_ID = uuid5(accounts.LEDGER_NAMESPACE, "policy-book")
#: Receipt ids kept computed: a message's is asked for by the batch, its decision and replay's
#: comparison (uuid5 was 5 % of replay's samples).
RECEIPT_IDS_CACHED = 8192


class Leg(Protocol):
    """What a fund reads of a transfer, or of the event that booked its leg."""

    @property
    def debit_account(self) -> str: ...
    @property
    def credit_account(self) -> str: ...
    @property
    def amount_fen(self) -> int: ...


class Fund(Aggregate):
    """A city pooling fund or a provincial adjustment fund: one account that never goes negative.

    Besides its balance, a fund keeps per fiscal year what the rules need: totals by
    category, the approved budget, and, once the year is closed, its fixed income.
    """

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
        # fiscal year -> category -> fen; categories are those of `ledger.movements`.
        self.totals_fen: dict[int, dict[str, int]] = {}
        # fiscal year -> net change of the balance booked in that year (opening excluded).
        self.year_net_fen: dict[int, int] = {}
        # fiscal year -> {"income_fen", "expenditure_fen", "event_id"} of the budget in force.
        self.budgets: dict[int, dict[str, Any]] = {}
        # fiscal year -> the income fixed when the year was closed (P1).
        self.closed_years: dict[int, int] = {}
        # the latest business day (CST, ISO) a movement of this fund happened on
        self.last_business_day: str | None = None
        # E1 in business time: the balance day by day (`ledger.daybook`; open years only)
        self.days: daybook.DayBook = {}
        # P3: the opening was reversed, so a corrected one may be recorded
        self.opening_reversed = False
        # legs booked (and applied) but not yet in an event (`book`)
        self._unsaved_legs: list[dict[str, Any]] = []

    @classmethod
    def open(cls, account: str) -> Fund:
        return cls._create(cls.Opened, id=accounts.fund_id(account), account=account)

    def __deepcopy__(self, memo: dict[int, Any]) -> Fund:
        """A copy (the replay's working copy of a batch): the day book's arrays by slicing, which
        `copy.deepcopy` would rebuild one by one through pickling's reduce."""
        copied = object.__new__(type(self))
        copied.__dict__.update(
            {name: value if name == "days" else deepcopy(value, memo) for name, value in vars(self).items()}
        )
        copied.days = {day: entry[:] for day, entry in self.days.items()}
        return copied

    # -- commands ---------------------------------------------------------

    def book(self, transfer: Transfer) -> None:
        """Books this fund's leg of `transfer`, once the decision has checked both legs.

        A transfer between two funds is checked on both (P1, E1, M1: `ledger.decisions.book`)
        before either books, so a rule broken on the second leaves the first unchanged.

        The leg changes the fund at once; it is recorded with the others this fund books in
        the same batch, in one `Booked` event, made when the batch is saved (or before the
        fund records anything else): a batch costs one stored event per fund it moves, not
        one per leg.
        """
        leg = transfer.as_booking()
        _apply_leg(self, leg)
        self._unsaved_legs.append(leg)

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        self._record_legs()
        super().trigger_event(event_class, **kwargs)

    def collect_events(self) -> Any:
        self._record_legs()
        return super().collect_events()

    def _record_legs(self) -> None:
        """The legs booked since the last event, as one `Booked` event (already applied)."""
        if not self._unsaved_legs:
            return
        fields: dict[str, Any] = {
            "originator_id": self.id,
            "originator_version": self.version + 1,
            "timestamp": self.Booked.create_timestamp(),
            "legs": self._unsaved_legs,
        }
        event = self.Booked(**fields)
        self._unsaved_legs = []
        self.version = event.originator_version
        self.modified_on = event.timestamp
        self._pending_events.append(event)

    def record_opening(self, transfer: Transfer, previous_year_income_fen: int, fiscal_year: int) -> None:
        self.check_period_open(transfer.fiscal_year)
        self.check_opening_comes_first()
        self.trigger_event(
            self.OpeningRecorded,
            previous_year_income_fen=previous_year_income_fen,
            opening_fiscal_year=fiscal_year,
            **transfer.as_booking(),
        )

    def set_budget(
        self, fiscal_year: int, income_fen: int, expenditure_fen: int, event_id: str, kind: str
    ) -> None:
        self.check_period_open(fiscal_year)
        self.check_budget_lifecycle(fiscal_year, expenditure_fen, kind)
        self.check_budget_has_no_deficit(income_fen, expenditure_fen)
        self.check_budget_has_no_cumulative_deficit(fiscal_year, income_fen, expenditure_fen)
        self.trigger_event(
            self.BudgetSet,
            account=self.account,
            fiscal_year=fiscal_year,
            income_fen=income_fen,
            expenditure_fen=expenditure_fen,
            budget_event_id=event_id,
            kind=kind,
        )

    def close_year(self, fiscal_year: int, income_fen: int, event_id: str, day: date) -> bool:
        """P1: locks the year and fixes its income; closing twice changes nothing."""
        self.check_year_has_ended(fiscal_year, day)
        if fiscal_year in self.closed_years:
            return False
        self.check_previous_year_closed(fiscal_year)
        self.trigger_event(
            self.YearClosed,
            account=self.account,
            fiscal_year=fiscal_year,
            income_fen=income_fen,
            close_event_id=event_id,
        )
        return True

    # -- rule checks ------------------------------------------------------

    def check_stays_non_negative(self, delta_fen: int, occurred_at: str) -> None:
        """E1: a fund never goes negative, at any business instant.

        A debit dated before the fund's latest movement is checked against the lowest
        balance the fund has from its instant on (`ledger.daybook`), so a balance read
        `as_of` any instant stays >= 0 whatever order the events arrive in.
        """
        if delta_fen >= 0:
            return
        day, at = daybook.day_and_instant(occurred_at)
        available = daybook.lowest_from(self.days, self.balance_fen, day, at)
        if available + delta_fen < 0:
            later = "" if available == self.balance_fen else f" at its lowest from {occurred_at} on"
            raise Rejected(
                Reason.insufficient_funds,
                "E1",
                f"{self.account} holds {available} fen{later}; "
                f"{-delta_fen} fen would take it to {available + delta_fen}",
                {"balance_fen": available, "requested_fen": -delta_fen},
            )

    def check_stays_within_bound(self, transfer: Transfer) -> None:
        """M1: a fund's balance, and each yearly total it keeps, stay at most MAX_FEN.

        Every amount is at most MAX_FEN on the wire; this keeps their sums there too, so no
        figure of the ledger or its read tables can approach a 64-bit integer's limit.
        """
        delta_fen = self.delta_fen(transfer)
        total_fen = self.total_fen(transfer.fiscal_year, transfer.category)
        if self.balance_fen + delta_fen > MAX_FEN:
            figure = f"its balance to {self.balance_fen + delta_fen} fen"
        elif not transfer.is_reversal and total_fen + transfer.amount_fen > MAX_FEN:
            figure = (f"its {transfer.category} total of {transfer.fiscal_year} to "
                      f"{total_fen + transfer.amount_fen} fen")
        else:
            return
        raise Rejected(
            Reason.amount_out_of_range,
            "M1",
            f"{transfer.amount_fen} fen would take {self.account} {figure}, above the ledger's "
            f"bound of {MAX_FEN} fen",
            {"balance_fen": self.balance_fen, "bound_fen": MAX_FEN},
        )

    def check_opening_comes_first(self) -> None:
        """P3: the opening balance is recorded once, before any other movement of the fund; a
        reversed opening frees its place for a corrected one."""
        if self.opening is not None or (self.booking_count and not self.opening_reversed):
            raise Rejected(
                Reason.opening_balance_exists,
                "P3",
                f"{self.account} already has "
                + ("an opening balance" if self.opening is not None else "movements")
                + "; an opening balance must be its first movement",
            )

    def check_period_open(self, fiscal_year: int) -> None:
        """P1: nothing is booked into a closed fiscal year."""
        if fiscal_year in self.closed_years:
            raise Rejected(
                Reason.period_closed,
                "P1",
                f"fiscal year {fiscal_year} of {self.account} is closed; "
                "book a correction in the open year instead",
                {"fiscal_year": fiscal_year},
            )

    def check_year_has_ended(self, fiscal_year: int, day: date) -> None:
        """P1: a year is closed once it has ended: on or after 1 January of the next year, CST."""
        if day.year <= fiscal_year:
            raise Rejected(
                Reason.period_not_ended,
                "P1",
                f"fiscal year {fiscal_year} of {self.account} has not ended on {day} (China Standard "
                f"Time): close it on or after {fiscal_year + 1}-01-01",
                {"fiscal_year": fiscal_year, "business_date": day.isoformat()},
            )

    def check_previous_year_closed(self, fiscal_year: int) -> None:
        """P1: a year is closed only after the fund's previous year, where it had one."""
        previous = fiscal_year - 1
        if previous not in self.closed_years and (previous in self.totals_fen or previous in self.budgets):
            raise Rejected(
                Reason.earlier_year_open,
                "P1",
                f"fiscal year {previous} of {self.account} is still open: close it before {fiscal_year}",
                {"open_fiscal_year": previous},
            )

    def check_not_retroactive(self, effective_from: date) -> None:
        """I4: a policy never takes effect on or before the business day of a movement this fund
        already booked: history is not re-decided under new parameters."""
        if self.last_business_day is not None and date.fromisoformat(self.last_business_day) >= effective_from:
            raise Rejected(
                Reason.policy_retroactive,
                "I4",
                f"{self.account} has movements booked on {self.last_business_day}, on or "
                f"after effective_from {effective_from}: a policy cannot change decisions "
                "already taken",
            )

    def check_budget_lifecycle(self, fiscal_year: int, expenditure_fen: int, kind: str) -> None:
        """B5: one budget life per fund and year: approved once, then adjusted, never below what
        the fund has already paid that year."""
        existing = self.budgets.get(fiscal_year)
        if kind == "approved":
            if existing is not None:
                raise Rejected(
                    Reason.budget_exists,
                    "B5",
                    f"{self.account} already has a budget for {fiscal_year} (event "
                    f"{existing['event_id']}); send a BudgetAdjusted to change it",
                )
            return
        if existing is None:
            raise Rejected(
                Reason.no_approved_budget,
                "B5",
                f"{self.account} has no approved budget for {fiscal_year} to adjust; send a "
                "BudgetApproved first",
            )
        paid_fen = self.claims_paid_fen(fiscal_year)
        if expenditure_fen < paid_fen:
            raise Rejected(
                Reason.budget_below_actual,
                "B5",
                f"adjusted expenditure {expenditure_fen} fen is below the {paid_fen} fen {self.account} "
                f"has already paid in {fiscal_year}",
                {"paid_fen": paid_fen, "expenditure_fen": expenditure_fen},
            )

    def check_budget_has_no_deficit(self, income_fen: int, expenditure_fen: int) -> None:
        """B1: no current-year deficit budget."""
        if expenditure_fen > income_fen:
            raise Rejected(
                Reason.deficit_budget,
                "B1",
                f"budgeted expenditure {expenditure_fen} fen exceeds budgeted income "
                f"{income_fen} fen by {expenditure_fen - income_fen} fen",
                {"income_fen": income_fen, "expenditure_fen": expenditure_fen},
            )

    def check_budget_has_no_cumulative_deficit(
        self, fiscal_year: int, income_fen: int, expenditure_fen: int
    ) -> None:
        """B2: balance at the start of the year + income - expenditure stays >= 0."""
        start_fen = self.balance_at_start_of(fiscal_year)
        if start_fen + income_fen - expenditure_fen < 0:
            raise Rejected(
                Reason.cumulative_deficit_budget,
                "B2",
                f"the balance at the start of {fiscal_year} ({start_fen} fen) + income "
                f"{income_fen} - expenditure {expenditure_fen} is "
                f"{start_fen + income_fen - expenditure_fen} fen",
                {"start_balance_fen": start_fen},
            )

    def check_within_budget(self, fiscal_year: int, amount_fen: int, require_budget: bool) -> None:
        """B3: paid claims stay within the approved expenditure budget of the year."""
        budget = self.budgets.get(fiscal_year)
        if budget is None:
            if require_budget:
                raise Rejected(
                    Reason.over_budget,
                    "B3",
                    f"{self.account} has no approved budget for {fiscal_year} and the policy "
                    "requires one (require_budget)",
                )
            return
        paid_fen = self.claims_paid_fen(fiscal_year)
        if paid_fen + amount_fen > budget["expenditure_fen"]:
            raise Rejected(
                Reason.over_budget,
                "B3",
                f"claims paid in {fiscal_year} ({paid_fen} fen) + {amount_fen} fen would exceed "
                f"the approved expenditure budget of {budget['expenditure_fen']} fen; "
                "a BudgetAdjusted must raise it first",
                {"paid_fen": paid_fen, "budget_expenditure_fen": budget["expenditure_fen"]},
            )

    def check_extraction_within_cap(
        self, fiscal_year: int, amount_fen: int, base_fen: int, rate_bp: int
    ) -> None:
        """X2: a city's extractions for a year stay within rate x last year's collected income."""
        allowed_fen = formulas.extraction_cap_fen(base_fen, rate_bp)
        extracted_fen = self.total_fen(fiscal_year, EXTRACTION_CATEGORY)
        if extracted_fen + amount_fen > allowed_fen:
            raise Rejected(
                Reason.extraction_cap_exceeded,
                "X2",
                f"extraction base {base_fen} fen (collected income of {fiscal_year - 1}) x "
                f"{rate_bp} bp = {allowed_fen} fen allowed for {fiscal_year}; already extracted "
                f"{extracted_fen} fen, so at most {max(0, allowed_fen - extracted_fen)} fen more",
                {
                    "base_fen": base_fen,
                    "rate_bp": rate_bp,
                    "extracted_fen": extracted_fen,
                    "allowed_fen": allowed_fen,
                    "remaining_fen": max(0, allowed_fen - extracted_fen),
                },
            )

    def check_adjustment_fund_ceiling(
        self, amount_fen: int, province_income_fen: int, pause_ratio_bp: int, fiscal_year: int
    ) -> None:
        """X4: the adjustment fund stops taking extractions at its ceiling, and never passes it."""
        ceiling_fen = formulas.adjustment_fund_ceiling_fen(province_income_fen, pause_ratio_bp)
        facts = {
            "province_income_fen": province_income_fen,
            "pause_ratio_bp": pause_ratio_bp,
            "ceiling_fen": ceiling_fen,
            "balance_fen": self.balance_fen,
        }
        if formulas.extraction_paused(self.balance_fen, ceiling_fen):
            raise Rejected(
                Reason.extraction_paused,
                "X4",
                f"{self.account} holds {self.balance_fen} fen, at or above its ceiling of "
                f"{ceiling_fen} fen ({pause_ratio_bp} bp of the province's collected income of "
                f"{fiscal_year - 1}, {province_income_fen} fen): extraction is paused",
                facts,
            )
        if self.balance_fen + amount_fen > ceiling_fen:
            raise Rejected(
                Reason.extraction_cap_exceeded,
                "X4",
                f"{amount_fen} fen would take {self.account} to {self.balance_fen + amount_fen} fen, "
                f"above its ceiling of {ceiling_fen} fen; at most {ceiling_fen - self.balance_fen} fen",
                facts,
            )

    def check_allocation_within_share(
        self, fiscal_year: int, gap_fen: int, amount_fen: int, share_bp: int, reason: str
    ) -> None:
        """X5: an allocation covers at most `share` of the gap the ledger itself sees."""
        ledger_gap_fen = self.gap_fen(fiscal_year)
        allocated_fen = self.total_fen(fiscal_year, ALLOCATION_CATEGORY)
        facts = {
            "gap_fen": gap_fen,
            "ledger_gap_fen": ledger_gap_fen,
            "share_bp": share_bp,
            "allocated_fen": allocated_fen,
        }
        if gap_fen > ledger_gap_fen:
            raise Rejected(
                Reason.allocation_exceeds_share,
                "X5",
                f"claimed gap {gap_fen} fen exceeds the gap the ledger sees for {self.account} "
                f"in {fiscal_year}: expenditure - income so far = {ledger_gap_fen} fen",
                facts,
            )
        if amount_fen > gap_fen * share_bp // 10_000:
            raise Rejected(
                Reason.allocation_exceeds_share,
                "X5",
                f"{amount_fen} fen exceeds {share_bp} bp ({reason}) of the gap {gap_fen} fen: "
                f"at most {gap_fen * share_bp // 10_000} fen; the city's own balance bears the rest",
                facts,
            )
        total_allowed_fen = ledger_gap_fen * share_bp // 10_000
        if allocated_fen + amount_fen > total_allowed_fen:
            raise Rejected(
                Reason.allocation_exceeds_share,
                "X5",
                f"allocations to {self.account} for {fiscal_year} would total "
                f"{allocated_fen + amount_fen} fen, above {share_bp} bp of its gap "
                f"{ledger_gap_fen} fen ({total_allowed_fen} fen)",
                facts,
            )

    # -- queries ----------------------------------------------------------

    def delta_fen(self, leg: Leg) -> int:
        """How much `leg` changes this fund's balance: credits add, debits take away."""
        return self.signed_fen(leg.debit_account, leg.credit_account, leg.amount_fen)

    def signed_fen(self, debit_account: str, credit_account: str, amount_fen: int) -> int:
        if credit_account == self.account:
            return amount_fen
        assert debit_account == self.account, (debit_account, credit_account, self.account)
        return -amount_fen

    def total_fen(self, fiscal_year: int, *categories: str) -> int:
        year = self.totals_fen.get(fiscal_year, {})
        return sum(year.get(c, 0) for c in categories)

    def total_with_prefix_fen(self, fiscal_year: int, prefix: str) -> int:
        return sum(v for c, v in self.totals_fen.get(fiscal_year, {}).items() if c.startswith(prefix))

    def claims_paid_fen(self, fiscal_year: int) -> int:
        """B3: the benefit expenditure of a year: claims, and the major-illness premium (E8)."""
        return self.total_with_prefix_fen(fiscal_year, CLAIM_PREFIX) + self.total_fen(fiscal_year, PREMIUM_CATEGORY)

    def collected_income_fen(self, fiscal_year: int, with_subsidies: bool) -> int:
        """X3: contributions (and, by policy, subsidies) collected in a fiscal year."""
        income = self.total_with_prefix_fen(fiscal_year, CONTRIBUTION_PREFIX)
        if with_subsidies:
            income += self.total_with_prefix_fen(fiscal_year, SUBSIDY_PREFIX)
        return income

    def extraction_base_fen(self, fiscal_year: int, with_subsidies: bool) -> int:
        """The collected income of the year before `fiscal_year` (X2, P1).

        For the go-live year, the audited figure of the opening (the ledger has no history
        of the year before); else the figure fixed by the close of that year; else the
        ledger's own totals.
        """
        previous = fiscal_year - 1
        opening = self.opening or {}
        return formulas.extraction_base_fen(
            opening.get("previous_year_income_fen") if opening.get("fiscal_year") == fiscal_year else None,
            self.closed_years.get(previous),
            self.collected_income_fen(previous, with_subsidies),
        )

    def gap_fen(self, fiscal_year: int) -> int:
        """X5: expenditure - income of the year so far (claims vs contributions, subsidies, interest)."""
        income = (
            self.total_with_prefix_fen(fiscal_year, CONTRIBUTION_PREFIX)
            + self.total_with_prefix_fen(fiscal_year, SUBSIDY_PREFIX)
            + self.total_fen(fiscal_year, INTEREST_CATEGORY)
        )
        return max(0, self.claims_paid_fen(fiscal_year) - income)

    def balance_at_start_of(self, fiscal_year: int) -> int:
        return self.balance_fen - sum(n for y, n in self.year_net_fen.items() if y >= fiscal_year)

    # -- events -----------------------------------------------------------

    class Snapshot(AggregateSnapshot):
        """A fund's state, stored as JSON: fiscal years come back as int keys."""

        @classmethod
        def take(cls, aggregate: Any) -> Any:
            snapshot = super().take(aggregate)
            snapshot.state["days"] = daybook.to_plain(snapshot.state["days"])
            return snapshot

        def mutate(self, aggregate: Any) -> Any:
            fund = cast(Fund, super().mutate(aggregate))
            for name in YEAR_KEYED_STATE:
                setattr(fund, name, {int(year): value for year, value in getattr(fund, name).items()})
            plain = vars(fund).get("days")
            fund.days = daybook.from_plain(plain) if plain is not None else _days_before_revision_2(fund)
            return fund

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
        prior_year_adjustment: bool

        def apply(self, aggregate: Aggregate) -> None:
            _apply_leg(cast(Fund, aggregate), vars(self))

    class Booked(AggregateEvent):
        """The legs a fund booked in one batch, in order (each as `TransferBooked` would hold it)."""

        legs: list[dict[str, Any]]

        def apply(self, aggregate: Aggregate) -> None:
            fund = cast(Fund, aggregate)
            for leg in self.legs:
                _apply_leg(fund, leg)

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

    class BudgetSet(AggregateEvent):
        account: str
        fiscal_year: int
        income_fen: int
        expenditure_fen: int
        budget_event_id: str
        kind: str

        def apply(self, aggregate: Aggregate) -> None:
            cast(Fund, aggregate).budgets[self.fiscal_year] = {
                "income_fen": self.income_fen,
                "expenditure_fen": self.expenditure_fen,
                "event_id": self.budget_event_id,
                "kind": self.kind,
            }

    class YearClosed(AggregateEvent):
        account: str
        fiscal_year: int
        income_fen: int
        close_event_id: str

        def apply(self, aggregate: Aggregate) -> None:
            fund = cast(Fund, aggregate)
            fund.closed_years[self.fiscal_year] = self.income_fen
            daybook.drop_year(fund.days, self.fiscal_year)


def _apply_leg(fund: Fund, leg: dict[str, Any]) -> None:
    """How one leg (`Transfer.as_booking`'s fields) changes the fund it is booked on."""
    amount_fen: int = leg["amount_fen"]
    delta = fund.signed_fen(leg["debit_account"], leg["credit_account"], amount_fen)
    fund.balance_fen += delta
    fund.booking_count += 1
    fiscal_year: int = leg["fiscal_year"]
    category: str = leg["category"]
    year = fund.totals_fen.setdefault(fiscal_year, {})
    year[category] = year.get(category, 0) + (-amount_fen if leg["reversal_of"] else amount_fen)
    if category != OPENING_CATEGORY:
        fund.year_net_fen[fiscal_year] = fund.year_net_fen.get(fiscal_year, 0) + delta
    day, at = daybook.day_and_instant(leg["occurred_at"])
    daybook.record(fund.days, day, at, delta)
    fund.last_business_day = max(day, fund.last_business_day or day)
    if category == OPENING_CATEGORY and leg["reversal_of"]:  # P3: no longer in force
        fund.opening = None
        fund.opening_reversed = True


def _days_before_revision_2(fund: Fund) -> daybook.DayBook:
    """A snapshot taken before the day book: its whole balance as of the end of its latest day.

    Sound, not exact: a debit dated before that is checked as if the fund held nothing until
    then, so it may be refused, never wrongly accepted.
    """
    if fund.last_business_day is None:
        return {}
    end = datetime.combine(date.fromisoformat(fund.last_business_day), time.max, CHINA_STANDARD_TIME)
    day, at = daybook.day_and_instant(end.isoformat())
    days: daybook.DayBook = {}
    daybook.record(days, day, at, fund.balance_fen)
    return days


@functools.lru_cache(maxsize=RECEIPT_IDS_CACHED)
def receipt_id(event_id: str) -> UUID:
    """The receipt of an upstream `event_id` (I1: one fate per producer's idempotency key)."""
    return uuid5(accounts.LEDGER_NAMESPACE, f"event:{event_id}")


def delivery_receipt_id(delivery_key: str) -> UUID:
    """The receipt of a message that has no usable event_id (e.g. not JSON), by where it came from."""
    return uuid5(accounts.LEDGER_NAMESPACE, delivery_key)


def unprocessable_receipt_id(delivery_key: str, payload_digest: str) -> UUID:
    """The receipt of one delivery whose decision failed (the event's own receipt stays free)."""
    return uuid5(accounts.LEDGER_NAMESPACE, f"unprocessable:{delivery_key}:{payload_digest}")


class Receipt(Aggregate):
    """The fate of one upstream event: accepted with its transfer, or rejected with a reason.

    It keeps the payload it was decided on, so the decision can be audited and a
    re-delivery can be told apart from a conflicting reuse of the event_id.
    """

    class _Created(AggregateCreated):
        """A receipt's first event: the receipt made from it directly (eventsourcing's generic
        `mutate` filters the event's fields through the signatures of two `__init__`s, for every
        message: 3 % of replay)."""

        def mutate(self, aggregate: Any) -> Any:
            assert aggregate is None
            fields = vars(self)
            receipt = object.__new__(Receipt)
            receipt.__base_init__(self.originator_id, self.originator_version, self.timestamp)
            receipt.__init__(  # type: ignore[misc]
                fields["event_id"], fields["event_type"], fields["payload_sha256"], fields["payload"],
                reason=fields.get("reason"), transfer=fields.get("transfer"), split=fields.get("split"),
            )
            return receipt

    class Accepted(_Created):
        event_id: str
        event_type: str
        payload_sha256: str
        payload: dict[str, Any]
        source: dict[str, Any] | None
        transfer: dict[str, Any] | None
        balances: dict[str, int]
        #: The second transfer of an event booked as two (E6: an employee's own contribution
        #: split between the personal accounts and the pooling fund, and its reversal).
        #: Absent from receipts recorded before it was added.
        split: dict[str, Any] | None = None

    class Rejected(_Created):
        event_id: str | None
        event_type: str | None
        payload_sha256: str
        payload: dict[str, Any] | None
        raw_base64: str | None
        source: dict[str, Any] | None
        reason: str
        rule: str
        detail: str
        #: Bytes of a message kept by `raw_base64` (an excerpt if above the size limit); 0 for a
        #: tombstone. Absent from receipts recorded before it was added.
        raw_size_bytes: int | None = None

    def __init__(
        self,
        event_id: str | None,
        event_type: str | None,
        payload_sha256: str,
        payload: dict[str, Any] | None,
        reason: str | None = None,
        transfer: dict[str, Any] | None = None,
        split: dict[str, Any] | None = None,
    ) -> None:
        self.event_id = event_id
        self.event_type = event_type
        self.payload_sha256 = payload_sha256
        self.payload = payload
        self.status = "accepted" if reason is None else "rejected"
        self.reason = reason
        self.transfer = transfer
        self.split = split
        self.reversed_by: str | None = None
        #: P4: fen recovered so far against this claim
        self.recovered_fen = 0

    @classmethod
    def accept(cls, id: UUID, **fields: Any) -> Receipt:
        return cls._create(cls.Accepted, id=id, **fields)

    @classmethod
    def reject(cls, id: UUID, **fields: Any) -> Receipt:
        return cls._create(cls.Rejected, id=id, **fields)

    @property
    def is_accepted_movement(self) -> bool:
        return self.status == "accepted" and self.transfer is not None

    @property
    def transfers(self) -> list[dict[str, Any]]:
        """Every transfer this event booked, in order (none, one, or two: `split`)."""
        return [t for t in (self.transfer, self.split) if t is not None]

    @property
    def recovered_claim_event_id(self) -> str | None:
        """P4: the claim a recovery named, the one its reversal gives the amount back to."""
        if self.event_type != "RecoveryReceived" or not self.payload:
            return None
        claim = self.payload.get("claim_event_id")
        return None if claim is None else str(claim)

    @staticmethod
    def check_reversible(original: Receipt | None, original_event_id: str, reversal_at: datetime) -> None:
        """P2: only an accepted movement is reversed, never a reversal itself, only once, and
        never dated before it."""
        if original is None or not original.is_accepted_movement:
            fate = "unknown" if original is None else (
                "rejected" if original.status == "rejected" else "not a movement"
            )
            raise Rejected(
                Reason.unknown_original,
                "P2",
                f"event {original_event_id} is {fate}: only an accepted movement can be reversed",
            )
        assert original.transfer is not None
        if original.transfer.get("reversal_of"):
            # Undoing a reversal would book the original movement again without its rules
            # (caps, budgets): the fact has to come again as a new event instead.
            raise Rejected(
                Reason.unknown_original,
                "P2",
                f"event {original_event_id} is itself a reversal; to restore the movement it "
                "reversed, publish that movement again as a new event",
            )
        if original.reversed_by is not None:
            raise Rejected(
                Reason.already_reversed,
                "P2",
                f"event {original_event_id} was already reversed by {original.reversed_by}",
            )
        original_at = datetime.fromisoformat(original.transfer["occurred_at"])
        if reversal_at < original_at:
            raise Rejected(
                Reason.reversal_before_original,
                "P2",
                f"the reversal is dated {reversal_at.isoformat()}, before its original "
                f"{original_event_id} ({original.transfer['occurred_at']})",
            )

    @staticmethod
    def check_recoverable(claim: Receipt | None, claim_event_id: str, fund_account: str, amount_fen: int) -> None:
        """P4: a recovery names an accepted, unreversed claim the same fund paid, and the total
        recovered against it never exceeds what it paid."""
        if claim is None or not claim.is_accepted_movement or claim.event_type != "ClaimPaid":
            fate = "unknown" if claim is None else (
                "rejected" if claim.status == "rejected" else f"a {claim.event_type}, not a paid claim"
            )
            raise Rejected(
                Reason.unknown_original, "P4", f"claim {claim_event_id} is {fate}: nothing to recover against"
            )
        assert claim.transfer is not None
        if claim.reversed_by is not None:
            raise Rejected(
                Reason.unknown_original, "P4",
                f"claim {claim_event_id} was reversed by {claim.reversed_by}: nothing to recover against",
            )
        if claim.transfer["debit_account"] != fund_account:
            raise Rejected(
                Reason.unknown_original, "P4",
                f"claim {claim_event_id} was paid by {claim.transfer['debit_account']}, not {fund_account}",
            )
        paid_fen = claim.transfer["amount_fen"]
        if claim.recovered_fen + amount_fen > paid_fen:
            raise Rejected(
                Reason.recovery_exceeds_claim,
                "P4",
                f"claim {claim_event_id} paid {paid_fen} fen and {claim.recovered_fen} fen were recovered "
                f"already: at most {paid_fen - claim.recovered_fen} fen more",
                {"paid_fen": paid_fen, "recovered_fen": claim.recovered_fen},
            )

    def record_recovery(self, recovery_event_id: str, amount_fen: int) -> None:
        self.trigger_event(self.RecoveryRecorded, recovery_event_id=recovery_event_id, amount_fen=amount_fen)

    def check_same_payload(self, payload_digest: str) -> None:
        """I1: a re-delivery of an event_id carries the payload it was decided on."""
        if self.payload_sha256 != payload_digest:
            raise Rejected(
                Reason.event_id_conflict,
                "I1",
                f"event_id {self.event_id} was already {self.status} with a different payload; "
                "a new fact needs a new event_id",
            )

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

    class RecoveryRecorded(AggregateEvent):
        recovery_event_id: str
        amount_fen: int

        def apply(self, aggregate: Aggregate) -> None:
            cast(Receipt, aggregate).recovered_fen += self.amount_fen

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

    def check_policy_in_force(self, day: date) -> None:
        """M2: every decision is taken under the policy in force on its business day."""
        if self.timeline.in_force(day) is None:
            raise Rejected(Reason.policy_violation, "M2", f"no policy is in force on {day}")

    def policy_in_force(self, day: date) -> Policy:
        policy = self.timeline.in_force(day)
        assert policy is not None, f"checked by check_policy_in_force: {day}"
        return policy

    @staticmethod
    def check_adopted_for_its_province(policy: Policy, province: str) -> None:
        """I2: a policy is adopted by an event of its own province."""
        if policy.province != province:
            raise Rejected(
                Reason.policy_violation,
                "I2",
                f"the policy is for province {policy.province}, the event for {province}",
            )

    @staticmethod
    def check_takes_effect_after_adoption(effective_from: date, adoption_day: date) -> None:
        """M2: a policy is adopted ahead of (or on) the day it takes effect."""
        if effective_from < adoption_day:
            raise Rejected(
                Reason.policy_violation,
                "M2",
                f"effective_from {effective_from} is before the adoption day {adoption_day}: a policy "
                "cannot change decisions already taken",
            )

    @staticmethod
    def check_after_every_decision(effective_from: date, latest_decision_day: date | None) -> None:
        """I4: a policy never takes effect on or before the business day of a decision already
        taken, accepted or rejected: history is not re-decided under new parameters."""
        if latest_decision_day is not None and latest_decision_day >= effective_from:
            raise Rejected(
                Reason.policy_retroactive,
                "I4",
                f"an event dated {latest_decision_day} was already decided, on or after effective_from "
                f"{effective_from}: a policy cannot change decisions already taken",
                {"latest_decision_day": latest_decision_day.isoformat()},
            )

    def adopt(self, policy: Policy, event_id: str) -> None:
        self.trigger_event(
            self.PolicyAdopted, policy=policy.model_dump(mode="json"), event_id=event_id
        )

    class PolicyAdopted(AggregateEvent):
        policy: dict[str, Any]
        event_id: str

        def apply(self, aggregate: Aggregate) -> None:
            cast(PolicyBook, aggregate).timeline.adopt(Policy.model_validate(self.policy))


def decision_day_id(day: date) -> UUID:
    """The marker of a business day on which the ledger decided an event (I4)."""
    return uuid5(accounts.LEDGER_NAMESPACE, f"decided-on:{day.isoformat()}")


class DecisionDay(Aggregate):
    """I4: a business day (CST) on which at least one event was decided, accepted or rejected.

    One small aggregate per day, created by the first batch that decides an event dated that
    day and never changed: a `PolicyAdopted` asks which of these exist from its
    `effective_from` on, without any batch writing one shared aggregate.
    """

    class Noted(AggregateCreated):
        day: str

    def __init__(self, day: str) -> None:
        self.day = day

    @classmethod
    def note(cls, day: date) -> DecisionDay:
        return cls._create(cls.Noted, id=decision_day_id(day), day=day.isoformat())
