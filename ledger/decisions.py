"""The decision kernel: one short function per event type.

Each decision takes the event, the policy in force on its business day and the state it
reads (funds, receipts, the policy book), runs the rule checks of RULES.md in the order
that sets which reason wins when several rules are broken, and returns the transfer it
booked (None for an event that moves no money), or raises `Rejected`. The checks
themselves live on what owns the state they read: `Fund`, `Receipt`, `PolicyBook`
(`ledger.aggregates`), `Transfer` (`ledger.movements`), `PolicyTerms` (`ledger.policy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from typing import Any, Protocol

from ledger import accounts, formulas, movements
from ledger.aggregates import Fund, PolicyBook, Receipt
from ledger.clock import business_date_of, fiscal_year_of
from ledger.movements import Transfer
from ledger.policy import PolicyTerms
from schemas.events import (
    AdjustmentFundAllocated,
    AdjustmentFundExtracted,
    BudgetAdjusted,
    BudgetApproved,
    ClaimPaid,
    ContributionReceived,
    CriticalIllnessPremiumPaid,
    EventReversed,
    FiscalYearClosed,
    InterestCredited,
    OpeningBalanceRecorded,
    PolicyAdopted,
    RecoveryReceived,
    SubsidyDisbursed,
)
from schemas.policy import PaidFrom, Scheme


class State(Protocol):
    """The aggregates a decision reads and changes (the Application's working set)."""

    def fund(self, account: str) -> Fund:
        """The fund of `account`, opened if it has no history yet."""

    def opened_fund(self, account: str) -> Fund | None:
        """The fund of `account` if it has a history, else None."""

    def receipt_of(self, event_id: str) -> Receipt | None: ...

    def policy_book(self) -> PolicyBook: ...

    def latest_decision_day(self, since: date) -> date | None:
        """I4: the latest business day, from `since` on, of an event already decided."""


def book(transfer: Transfer, state: State, *, period_checked: Fund | None = None) -> Transfer:
    """Books both legs of `transfer` once every rule holds on every fund it touches."""
    book_together([transfer], state, period_checked=period_checked)
    return transfer


def book_together(transfers: list[Transfer], state: State, *, period_checked: Fund | None = None) -> list[Transfer]:
    """Books the transfers of one event (one, or two for a split: E6) once every rule holds on
    every fund each touches.

    E3 first, then per fund, debit first: P1 (unless the decision checked it already on
    `period_checked`, where a closed year's reason comes before the event's own rules),
    E1 and M1. Only then does any fund book, so nothing is half-booked.
    """
    legs = []
    for transfer in transfers:
        transfer.check_edge_allowed()
        for fund in [state.fund(account) for account in transfer.fund_accounts()]:
            if fund is not period_checked:
                fund.check_period_open(transfer.fiscal_year)
            fund.check_stays_non_negative(fund.delta_fen(transfer), transfer.occurred_at)
            fund.check_stays_within_bound(transfer)
            legs.append((fund, transfer))
    for fund, transfer in legs:
        fund.book(transfer)
    return transfers


def contribution(e: ContributionReceived, terms: PolicyTerms, state: State) -> list[Transfer]:
    """E6: an employee's own contribution goes (by policy share) to the personal accounts."""
    movements.check_resident_scheme_only(e)
    return book_together(movements.contribution(e, terms.policy.personal_account_share_bp), state)


def premium(e: CriticalIllnessPremiumPaid, terms: PolicyTerms, state: State) -> Transfer:
    """E8: a benefit expenditure of the resident pooling fund, within the approved budget (B3)."""
    movements.check_resident_scheme_only(e)
    transfer = movements.premium(e)
    fund = state.fund(transfer.debit_account)
    fund.check_period_open(transfer.fiscal_year)  # a closed year's reason comes first
    movements.check_dated_in_fiscal_year(e.fiscal_year, e.occurred_at)
    fund.check_within_budget(transfer.fiscal_year, e.amount_fen, terms.policy.require_budget)
    return book(transfer, state, period_checked=fund)


def subsidy(e: SubsidyDisbursed, terms: PolicyTerms, state: State) -> Transfer:
    terms.check_subsidised_scheme(e)
    terms.check_subsidy_standard(e)
    return book(movements.subsidy(e), state)


def claim(e: ClaimPaid, terms: PolicyTerms, state: State) -> Transfer:
    """B3 binds the pooling fund's budget; the personal accounts (E6) have none."""
    transfer = movements.claim(e)
    fund = state.fund(transfer.debit_account)
    fund.check_period_open(transfer.fiscal_year)  # a closed year's reason comes first
    if e.paid_from == PaidFrom.pooling:
        fund.check_within_budget(transfer.fiscal_year, e.amount_fen, terms.policy.require_budget)
    return book(transfer, state, period_checked=fund)


def recovery(e: RecoveryReceived, terms: PolicyTerms, state: State) -> Transfer:
    """P4: money clawed back into the fund that paid, never more than a named claim paid."""
    transfer = movements.recovery(e)
    claim_receipt = None
    if e.claim_event_id is not None:
        claim_receipt = state.receipt_of(str(e.claim_event_id))
        Receipt.check_recoverable(claim_receipt, str(e.claim_event_id), transfer.credit_account, e.amount_fen)
    book(transfer, state)
    if claim_receipt is not None:
        claim_receipt.record_recovery(str(e.event_id), e.amount_fen)
    return transfer


def interest(e: InterestCredited, terms: PolicyTerms, state: State) -> Transfer:
    return book(movements.interest(e), state)


def opening(e: OpeningBalanceRecorded, terms: PolicyTerms, state: State) -> Transfer:
    movements.check_dated_in_fiscal_year(e.fiscal_year, e.occurred_at)
    transfer = movements.opening(e)
    state.fund(transfer.credit_account).record_opening(transfer, e.previous_year_income_fen, e.fiscal_year)
    return transfer


def budget(e: BudgetApproved | BudgetAdjusted, terms: PolicyTerms, state: State) -> None:
    fund = state.fund(accounts.city_pooling(e.city, e.scheme))
    kind = "approved" if e.type == "BudgetApproved" else "adjusted"
    fund.set_budget(e.fiscal_year, e.income_fen, e.expenditure_fen, str(e.event_id), kind)


def extraction(e: AdjustmentFundExtracted, terms: PolicyTerms, state: State) -> Transfer:
    terms.check_phase_active(e)
    transfer = movements.extraction(e)
    city, province = state.fund(transfer.debit_account), state.fund(transfer.credit_account)
    city.check_period_open(e.fiscal_year)
    movements.check_dated_in_fiscal_year(e.fiscal_year, e.occurred_at)
    city.check_extraction_within_cap(
        e.fiscal_year,
        e.amount_fen,
        city.extraction_base_fen(e.fiscal_year, terms.extraction_base_with_subsidies),
        terms.policy.extraction_rate_bp,
    )
    province.check_adjustment_fund_ceiling(
        e.amount_fen,
        province_income_fen(province, e.fiscal_year - 1, terms, state),
        terms.policy.pause_ratio_bp,
        e.fiscal_year,
    )
    return book(transfer, state, period_checked=city)


def allocation(e: AdjustmentFundAllocated, terms: PolicyTerms, state: State) -> Transfer:
    terms.check_phase_active(e)
    transfer = movements.allocation(e)
    city = state.fund(transfer.credit_account)
    city.check_period_open(e.fiscal_year)
    movements.check_dated_in_fiscal_year(e.fiscal_year, e.occurred_at)
    city.check_allocation_within_share(
        e.fiscal_year, e.gap_fen, e.amount_fen, terms.policy.gap_share_bp[e.reason], e.reason.value
    )
    return book(transfer, state, period_checked=city)


def close_year(e: FiscalYearClosed, terms: PolicyTerms, state: State) -> None:
    """P1: locks the year of one fund and fixes its income as next year's base; a city's employee
    scope also locks its personal accounts (E6), where they have a history."""
    fund = state.fund(accounts.fund_account(e.city, e.scheme))
    if e.city is None:
        income_fen = province_income_fen(fund, e.fiscal_year, terms, state)
    else:
        income_fen = fund.extraction_base_fen(e.fiscal_year + 1, terms.extraction_base_with_subsidies)
    day = business_date_of(e.occurred_at)
    personal = state.opened_fund(accounts.city_personal(e.city)) if e.city and e.scheme == "employee" else None
    if personal is not None:
        personal.check_year_has_ended(e.fiscal_year, day)
        personal.check_previous_year_closed(e.fiscal_year)
    fund.close_year(e.fiscal_year, income_fen, str(e.event_id), day)
    if personal is not None:
        personal.close_year(e.fiscal_year, personal.collected_income_fen(e.fiscal_year, with_subsidies=False),
                            str(e.event_id), day)


def reversal(e: EventReversed, terms: PolicyTerms, state: State) -> list[Transfer]:
    """P2: the exact opposite of an accepted movement (each of its transfers), once, booked under
    the movement rules."""
    original = state.receipt_of(str(e.original_event_id))
    Receipt.check_reversible(original, str(e.original_event_id), e.occurred_at)
    assert original is not None and original.transfer is not None
    opposites = []
    for booking in original.transfers:
        booked = Transfer.from_booking(booking)
        funds = [state.fund(account) for account in booked.fund_accounts()]
        prior_year = any(booked.fiscal_year in f.closed_years for f in funds)
        opposites.append(booked.opposite(
            event_id=str(e.event_id),
            fiscal_year=fiscal_year_of(e.occurred_at) if prior_year else booked.fiscal_year,
            occurred_at=e.occurred_at.isoformat(),
            prior_year_adjustment=prior_year,
        ))
    book_together(opposites, state)
    original.mark_reversed(str(e.event_id))
    recovered_claim = original.recovered_claim_event_id
    if recovered_claim is not None:  # P4: what a reversed recovery brought back counts no more
        claim_receipt = state.receipt_of(recovered_claim)
        if claim_receipt is not None:
            claim_receipt.record_recovery(str(e.event_id), -opposites[0].amount_fen)
    return opposites


def adopt_policy(e: PolicyAdopted, terms: PolicyTerms, state: State) -> None:
    """Effective-dated parameters: adopted ahead of (or on) the day they take effect."""
    policy_book = state.policy_book()
    policy_book.check_adopted_for_its_province(e.policy, e.province)
    policy_book.check_takes_effect_after_adoption(e.effective_from, business_date_of(e.occurred_at))
    for fund in opened_funds(terms, state):
        fund.check_not_retroactive(e.effective_from)  # also in stores older than the day markers
    PolicyBook.check_after_every_decision(e.effective_from, state.latest_decision_day(e.effective_from))
    policy_book.adopt(e.policy.model_copy(update={"effective_from": e.effective_from}), str(e.event_id))


def opened_funds(terms: PolicyTerms, state: State) -> Iterator[Fund]:
    """Every fund of the policy's cities (personal accounts too), then the adjustment funds, that
    has a history."""
    for city in [*terms.policy.cities, None]:
        names = [accounts.fund_account(city, scheme) for scheme in Scheme]
        for account in [*names, accounts.city_personal(city)] if city else names:
            fund = state.opened_fund(account)
            if fund is not None:
                yield fund


def province_income_fen(province: Fund, fiscal_year: int, terms: PolicyTerms, state: State) -> int:
    """X4: the province's collected income of a year, for one scheme.

    Fixed by the province's year close; else the sum of the cities' figures (the
    adjustment fund's own opening speaks of its own income, not the province's).
    """
    with_subsidies = terms.extraction_base_with_subsidies
    city_funds = (state.opened_fund(accounts.city_pooling(city, str(province.scheme))) for city in terms.policy.cities)
    return formulas.province_income_fen(
        province.closed_years.get(fiscal_year),
        (fund.extraction_base_fen(fiscal_year + 1, with_subsidies) for fund in city_funds if fund is not None),
    )


Decision = Callable[[Any, PolicyTerms, State], Transfer | list[Transfer] | None]

#: The decision of each event type (`UpstreamEvent.type`).
DECISIONS: dict[str, Decision] = {
    "ContributionReceived": contribution,
    "SubsidyDisbursed": subsidy,
    "ClaimPaid": claim,
    "InterestCredited": interest,
    "OpeningBalanceRecorded": opening,
    "BudgetApproved": budget,
    "BudgetAdjusted": budget,
    "AdjustmentFundExtracted": extraction,
    "AdjustmentFundAllocated": allocation,
    "FiscalYearClosed": close_year,
    "EventReversed": reversal,
    "PolicyAdopted": adopt_policy,
    "RecoveryReceived": recovery,
    "CriticalIllnessPremiumPaid": premium,
}
