"""Budgets (B1-B3), the provincial adjustment fund (X1-X5), year close (P1), reversals (P2)
and effective-dated policies (PolicyAdopted), on the in-memory store.

Each test feeds upstream JSON messages through `Ledger.record_batch` and checks the
outcomes, receipts and funds. Money is integer fen, ratios integer basis points and
caps are floor-rounded (M1); every expected figure is computed here from the test's
own inputs.
"""

from __future__ import annotations

import copy
import re
import uuid
from datetime import date
from typing import Any

import pytest

from ledger.aggregates import Fund
from ledger.application import Ledger, Outcome
from ledger.movements import Transfer
from ledger.policy import load_packaged_policy
from schemas.policy import Policy
from tests.upstream import (
    BENGBU,
    HEFEI,
    OCCURRED_AT,
    PROVINCE,
    WUHU,
    allocation,
    balance,
    budget,
    claim,
    close,
    contribution,
    event,
    extraction,
    feed,
    interest,
    new_ledger,
    opening,
    pooling,
    reversal,
    statuses,
    subsidy,
    trial_balance,
)

PROVINCE_RESIDENT = "province:resident:adjustment"
ACCEPTED = ("accepted", None)

#: The Anhui defaults RULES.md names (X2, X4, X5).
RATE_BP = 500
PAUSE_BP = 1000
SHARE_BP = 5000


# --------------------------------------------------------------------------- helpers


def anhui(**changes: Any) -> Policy:
    """The packaged Anhui policy with `changes`, validated like a policy file."""
    data = load_packaged_policy("anhui").model_dump(mode="json")
    return Policy.model_validate({**data, **changes})


def adopt(
    policy: Policy, effective_from: str, *, occurred_at: str = "2025-05-20T10:00:00+08:00"
) -> dict[str, Any]:
    return event(
        "PolicyAdopted",
        occurred_at=occurred_at,
        policy=policy.model_dump(mode="json"),
        effective_from=effective_from,
    )


def again(message: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The same fact under a NEW event_id (a new message, not a re-delivery)."""
    return {**message, **changes, "event_id": str(uuid.uuid4())}


def one(ledger: Ledger, message: dict[str, Any]) -> Outcome:
    (outcome,) = feed(ledger, message)
    return outcome


def fund(ledger: Ledger, account: str) -> Fund:
    found = ledger.fund(account)
    assert found is not None, account
    return found


def mentions(text: str | None, number: int) -> bool:
    """`number` appears in `text` as a whole number (not part of a longer one)."""
    return text is not None and re.search(rf"(?<![0-9]){number}(?![0-9])", text) is not None


# ============================================================== B1 no deficit budget


@pytest.mark.parametrize("type_", ["BudgetApproved", "BudgetAdjusted"])
def test_budget_with_expenditure_one_fen_above_income_is_rejected_deficit_budget(
    type_: str,
) -> None:
    ledger = new_ledger()
    approved = approved_first(ledger, type_)  # B5: only an approved budget is adjusted
    message = budget(500_000, 500_001, type_=type_)

    outcome = one(ledger, message)

    assert (outcome.status, outcome.reason) == ("rejected", "deficit_budget")
    assert mentions(outcome.detail, 500_000) and mentions(outcome.detail, 500_001)
    found = ledger.fund(pooling())
    assert found is None or found.budgets.get(2025, {}).get("event_id") == approved


def approved_first(ledger: Ledger, type_: str, income_fen: int = 400_000, expenditure_fen: int = 300_000) -> str | None:
    """For a BudgetAdjusted, the approved budget it adjusts (B5); its event_id."""
    if type_ != "BudgetAdjusted":
        return None
    approved = budget(income_fen, expenditure_fen)
    assert statuses(feed(ledger, approved)) == [ACCEPTED]
    return str(approved["event_id"])


@pytest.mark.parametrize("type_", ["BudgetApproved", "BudgetAdjusted"])
def test_budget_with_expenditure_exactly_equal_to_income_is_accepted(type_: str) -> None:
    ledger = new_ledger()
    approved_first(ledger, type_)
    message = budget(500_000, 500_000, type_=type_)

    assert statuses(feed(ledger, message)) == [ACCEPTED]

    set_budget = fund(ledger, pooling()).budgets[2025]
    assert set_budget["income_fen"] == 500_000
    assert set_budget["expenditure_fen"] == 500_000
    assert set_budget["event_id"] == message["event_id"]


def test_deficit_budget_is_rejected_even_when_the_balance_brought_forward_would_cover_it() -> None:
    """B1 is its own rule: a large accumulated balance does not allow a current-year deficit."""
    ledger = new_ledger()
    feed(ledger, opening(HEFEI, balance_fen=50_000_000))
    assert statuses(feed(ledger, budget(100, 101))) == [("rejected", "deficit_budget")]


def test_rejected_budget_adjustment_leaves_the_approved_budget_in_force() -> None:
    ledger = new_ledger()
    approved = budget(800_000, 700_000)
    outcomes = feed(ledger, approved, budget(800_000, 800_001, type_="BudgetAdjusted"))

    assert statuses(outcomes) == [ACCEPTED, ("rejected", "deficit_budget")]
    in_force = fund(ledger, pooling()).budgets[2025]
    assert (in_force["expenditure_fen"], in_force["event_id"]) == (700_000, approved["event_id"])


# ======================================================= B2 no cumulative deficit budget


def negative_start_of_2025(contributed_2025: int, late_claim_2024: int) -> Ledger:
    """A fund whose balance at the start of 2025 is negative: 2025 money paid a 2024 claim.

    Since RULES revision 2 (E1 in business time) no history decided by the ledger can hold
    this: the late claim is refused (`test_a_late_claim_can_no_longer_make_a_year_start_negative`).
    A store decided under revision 1 can, so the two legs are booked here straight on the
    fund, as that ledger booked them, and B2 still guards the budgets of such a fund.
    """
    ledger = new_ledger()
    hefei = Fund.open(pooling())
    hefei.book(Transfer(
        event_id="c2025", kind="ContributionReceived", debit_account="external:contributors:340100:resident:individual",
        credit_account=pooling(), amount_fen=contributed_2025, category="contribution.individual",
        fiscal_year=2025, occurred_at="2025-01-05T10:00:00+08:00",
    ))
    hefei.book(Transfer(
        event_id="c2024", kind="ClaimPaid", debit_account=pooling(), credit_account="external:institutions:340100",
        amount_fen=late_claim_2024, category="claim.inpatient", fiscal_year=2024,
        occurred_at="2024-12-20T10:00:00+08:00",
    ))
    ledger.save(hefei)
    return ledger


def test_a_late_claim_can_no_longer_make_a_year_start_negative() -> None:
    """E1 in business time: nothing was in the fund on 20 December, so the late claim is refused."""
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        contribution(amount_fen=100_000, occurred_at="2025-01-05T10:00:00+08:00"),
        claim(amount_fen=80_000, occurred_at="2024-12-20T10:00:00+08:00"),
    )
    assert statuses(outcomes) == [ACCEPTED, ("rejected", "insufficient_funds")]
    assert fund(ledger, pooling()).balance_at_start_of(2025) == 0


@pytest.mark.parametrize("type_", ["BudgetApproved", "BudgetAdjusted"])
def test_budget_is_rejected_cumulative_deficit_when_start_balance_plus_income_minus_expenditure_is_negative(
    type_: str,
) -> None:
    contributed, late_claim = 100_000, 80_000
    ledger = negative_start_of_2025(contributed, late_claim)
    start_of_2025 = -late_claim  # the 2025 contribution is booked in 2025, the claim in 2024
    income, expenditure = 50_000, 50_000  # no current-year deficit (B1 holds)
    assert start_of_2025 + income - expenditure < 0

    approved = approved_first(ledger, type_, income_fen=200_000, expenditure_fen=50_000)

    outcome = one(ledger, budget(income, expenditure, type_=type_))

    assert (outcome.status, outcome.reason) == ("rejected", "cumulative_deficit_budget")
    assert mentions(outcome.detail, start_of_2025)
    assert fund(ledger, pooling()).budgets.get(2025, {}).get("event_id") == approved


def test_budget_bringing_the_cumulative_balance_exactly_to_zero_is_accepted() -> None:
    contributed, late_claim = 100_000, 80_000
    ledger = negative_start_of_2025(contributed, late_claim)
    start_of_2025 = -late_claim
    expenditure = 50_000
    exact_income = expenditure - start_of_2025  # start + income - expenditure == 0

    outcomes = feed(
        ledger,
        budget(exact_income - 1, expenditure),
        budget(exact_income, expenditure),
    )

    assert statuses(outcomes) == [("rejected", "cumulative_deficit_budget"), ACCEPTED]
    assert fund(ledger, pooling()).budgets[2025]["income_fen"] == exact_income


def test_budget_of_the_next_year_starts_from_the_balance_carried_forward() -> None:
    """The 2026 start balance is everything booked up to the end of 2025, opening included,
    late 2025 claims too (paid from what the fund held on their own day, E1)."""
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        opening(HEFEI, balance_fen=30_000),
        contribution(amount_fen=20_000, occurred_at="2025-06-01T10:00:00+08:00"),
        claim(amount_fen=45_000, occurred_at="2025-07-01T10:00:00+08:00"),
        claim(amount_fen=5_000, occurred_at="2026-01-05T10:00:00+08:00"),
        contribution(amount_fen=9_000, occurred_at="2026-01-06T10:00:00+08:00"),
        # a 2025 claim arriving late: 5,000 fen held from 1 July on, then 0 from 5 January
        claim(amount_fen=1, occurred_at="2025-12-30T10:00:00+08:00"),
        claim(amount_fen=3_000, occurred_at="2025-12-30T10:00:00+08:00"),
    )
    assert statuses(outcomes)[-2:] == [("rejected", "insufficient_funds"), ("rejected", "insufficient_funds")]
    assert fund(ledger, pooling()).balance_at_start_of(2026) == 30_000 + 20_000 - 45_000

    outcomes = feed(
        ledger,
        claim(amount_fen=5_000, occurred_at="2025-12-30T10:00:00+08:00"),  # the lowest later balance, but
        budget(1_000, 1_000, fiscal_year=2026, occurred_at="2026-01-10T10:00:00+08:00"),
    )
    assert statuses(outcomes) == [("rejected", "insufficient_funds"), ACCEPTED]  # 0 fen from 5 January on


# =================================================== B3 claims within the approved budget


def test_claims_up_to_the_approved_expenditure_budget_are_accepted_and_one_fen_more_is_rejected_over_budget() -> None:
    ledger = new_ledger()
    expenditure = 500_000
    feed(ledger, opening(HEFEI, balance_fen=2_000_000), budget(600_000, expenditure))

    outcomes = feed(ledger, claim(amount_fen=300_000), claim(amount_fen=200_000))
    assert statuses(outcomes) == [ACCEPTED, ACCEPTED]
    one_more = one(ledger, claim(amount_fen=1))

    assert (one_more.status, one_more.reason) == ("rejected", "over_budget")
    assert mentions(one_more.detail, expenditure)
    assert mentions(one_more.detail, 300_000 + 200_000)
    assert fund(ledger, pooling()).claims_paid_fen(2025) == expenditure
    assert balance(ledger, pooling()) == 2_000_000 - expenditure


def test_over_budget_claim_is_accepted_with_a_new_event_id_once_a_budget_adjustment_raises_the_budget() -> None:
    ledger = new_ledger()
    feed(ledger, opening(HEFEI, balance_fen=2_000_000), budget(600_000, 500_000))
    feed(ledger, claim(amount_fen=500_000))
    refused = claim(amount_fen=1_000)
    assert statuses(feed(ledger, refused)) == [("rejected", "over_budget")]

    adjusted = budget(600_000, 501_000, type_="BudgetAdjusted", occurred_at=OCCURRED_AT)
    assert statuses(feed(ledger, adjusted)) == [ACCEPTED]
    # the rejected message itself keeps its fate (I1) ...
    assert statuses(feed(ledger, refused)) == [("duplicate", None)]
    # ... and the same claim sent again under a new event_id goes through
    assert statuses(feed(ledger, again(refused))) == [ACCEPTED]
    # up to the new figure exactly
    assert statuses(feed(ledger, claim(amount_fen=1))) == [("rejected", "over_budget")]

    found = fund(ledger, pooling())
    assert found.claims_paid_fen(2025) == 501_000
    assert found.budgets[2025]["kind"] == "adjusted"
    assert found.budgets[2025]["event_id"] == adjusted["event_id"]


def test_claims_without_an_approved_budget_are_accepted_when_the_policy_does_not_require_one() -> None:
    ledger = new_ledger()  # Anhui: require_budget false
    feed(ledger, opening(HEFEI, balance_fen=1_000_000))
    assert statuses(feed(ledger, claim(amount_fen=999_999))) == [ACCEPTED]
    assert balance(ledger, pooling()) == 1


def test_claims_without_an_approved_budget_are_rejected_over_budget_when_the_policy_requires_one() -> None:
    ledger = new_ledger(anhui(require_budget=True))
    feed(ledger, opening(HEFEI, balance_fen=1_000_000))

    assert statuses(feed(ledger, claim(amount_fen=1))) == [("rejected", "over_budget")]

    feed(ledger, budget(900_000, 800_000))
    assert statuses(feed(ledger, claim(amount_fen=800_000))) == [ACCEPTED]
    # the 2025 budget does not cover 2026
    late = claim(amount_fen=1, occurred_at="2026-01-02T10:00:00+08:00")
    assert statuses(feed(ledger, late)) == [("rejected", "over_budget")]
    assert balance(ledger, pooling()) == 1_000_000 - 800_000


def test_a_budget_limits_only_the_claims_of_its_own_city_scheme_and_year() -> None:
    ledger = new_ledger()
    feed(
        ledger,
        opening(HEFEI, balance_fen=1_000_000),
        opening(HEFEI, "employee", balance_fen=1_000_000),
        opening(WUHU, balance_fen=1_000_000),
        budget(1_000, 1_000),
        claim(amount_fen=20_000, occurred_at="2024-11-01T10:00:00+08:00"),  # 2024: no budget
    )
    outcomes = feed(
        ledger,
        claim(HEFEI, "employee", 5_000),
        claim(WUHU, "resident", 5_000),
        claim(HEFEI, "resident", 5_000, occurred_at="2026-02-01T10:00:00+08:00"),
        claim(HEFEI, "resident", 1_000),
        claim(HEFEI, "resident", 1),
    )
    assert statuses(outcomes) == [ACCEPTED] * 4 + [("rejected", "over_budget")]


def test_a_reversed_claim_no_longer_counts_against_the_budget() -> None:
    ledger = new_ledger()
    feed(ledger, opening(HEFEI, balance_fen=1_000_000), budget(100_000, 100_000))
    paid = claim(amount_fen=100_000)
    assert statuses(feed(ledger, paid, claim(amount_fen=1))) == [
        ACCEPTED,
        ("rejected", "over_budget"),
    ]
    assert statuses(feed(ledger, reversal(paid), claim(amount_fen=100_000))) == [ACCEPTED, ACCEPTED]
    assert fund(ledger, pooling()).claims_paid_fen(2025) == 100_000


# ============================================================== X1 phases of the fund


def test_resident_extraction_one_second_before_2025_in_beijing_is_rejected_phase_not_active_and_at_midnight_accepted() -> None:
    ledger = new_ledger()
    feed(ledger, opening(HEFEI, previous_year_income_fen=1_000_000))
    before = extraction(1_000, fiscal_year=2025, occurred_at="2024-12-31T15:59:59Z")
    at_midnight = again(before, occurred_at="2024-12-31T16:00:00Z")

    rejected = one(ledger, before)
    assert (rejected.status, rejected.reason) == ("rejected", "phase_not_active")
    assert rejected.detail is not None and "2025-01-01" in rejected.detail
    assert statuses(feed(ledger, at_midnight)) == [ACCEPTED]

    assert balance(ledger, PROVINCE_RESIDENT) == 1_000
    assert balance(ledger, pooling()) == 10_000_000 - 1_000


def test_employee_extraction_in_2025_is_rejected_phase_not_active_and_in_2026_accepted() -> None:
    ledger = new_ledger()
    feed(
        ledger,
        opening(HEFEI, "employee", previous_year_income_fen=1_000_000),
        contribution(HEFEI, "employee", 1_000_000, payer_kind="employer"),
    )
    in_2025 = [
        extraction(1_000, scheme="employee", fiscal_year=2025, occurred_at=OCCURRED_AT),
        extraction(1_000, scheme="employee", fiscal_year=2025, occurred_at="2025-12-31T15:59:59Z"),
    ]
    in_2026 = extraction(
        1_000, scheme="employee", fiscal_year=2026, occurred_at="2025-12-31T16:00:00Z"
    )

    assert statuses(feed(ledger, *in_2025)) == [("rejected", "phase_not_active")] * 2
    assert statuses(feed(ledger, in_2026)) == [ACCEPTED]
    assert balance(ledger, "province:employee:adjustment") == 1_000


def test_allocation_before_the_phase_date_is_rejected_phase_not_active() -> None:
    ledger = new_ledger()
    feed(
        ledger,
        opening(None, balance_fen=1_000_000, occurred_at="2024-12-01T00:00:00+08:00", fiscal_year=2024),
        opening(HEFEI, balance_fen=1_000_000, occurred_at="2024-12-01T00:00:00+08:00", fiscal_year=2024),
        claim(amount_fen=100_000, occurred_at="2024-12-10T10:00:00+08:00"),
    )
    early = allocation(100_000, 1_000, fiscal_year=2024, occurred_at="2024-12-31T15:59:59Z")
    employee = allocation(100_000, 1_000, scheme="employee", occurred_at=OCCURRED_AT)

    assert statuses(feed(ledger, early, employee)) == [("rejected", "phase_not_active")] * 2
    assert balance(ledger, PROVINCE_RESIDENT) == 1_000_000


# ========================================================== X2 extraction cap of a city


def test_extraction_of_exactly_five_percent_is_accepted_and_one_fen_more_is_rejected() -> None:
    ledger = new_ledger()
    base = 1_234_567  # the go-live year's previous-year income, from the opening
    feed(ledger, opening(HEFEI, previous_year_income_fen=base))
    allowed = base * RATE_BP // 10_000
    assert allowed == 61_728  # 61,728.35 floored

    over = one(ledger, extraction(allowed + 1))
    exact = one(ledger, extraction(allowed))
    after = one(ledger, extraction(1))

    assert (over.status, over.reason) == ("rejected", "extraction_cap_exceeded")
    for number in (base, RATE_BP, 0, allowed):  # base, rate, already extracted, maximum
        assert mentions(over.detail, number), (number, over.detail)
    assert (exact.status, exact.reason) == ACCEPTED
    assert (after.status, after.reason) == ("rejected", "extraction_cap_exceeded")
    assert mentions(after.detail, allowed)  # already extracted = allowed
    assert after.detail is not None and re.search(r"(?<![0-9])0 fen more", after.detail)
    assert fund(ledger, pooling()).total_fen(2025, "extraction") == allowed
    assert balance(ledger, PROVINCE_RESIDENT) == allowed


def test_several_extractions_in_a_year_add_up_against_the_cap() -> None:
    ledger = new_ledger()
    base = 2_000_019
    feed(ledger, opening(HEFEI, previous_year_income_fen=base))
    allowed = base * RATE_BP // 10_000
    first, second = 40_000, 30_000
    third = allowed - first - second

    outcomes = feed(
        ledger,
        extraction(first),
        extraction(second),
        extraction(third + 1),
        extraction(third),
        extraction(1),
    )

    assert statuses(outcomes) == [
        ACCEPTED,
        ACCEPTED,
        ("rejected", "extraction_cap_exceeded"),
        ACCEPTED,
        ("rejected", "extraction_cap_exceeded"),
    ]
    assert mentions(outcomes[2].detail, first + second)  # already extracted
    assert mentions(outcomes[2].detail, third)  # at most this much more
    assert balance(ledger, PROVINCE_RESIDENT) == allowed


def test_extraction_base_is_the_citys_contributions_of_the_previous_year_from_its_own_history() -> None:
    ledger = new_ledger()
    in_2024 = "2024-06-01T10:00:00+08:00"
    feed(
        ledger,
        contribution(amount_fen=700_003, payer_kind="employer", occurred_at=in_2024),
        contribution(amount_fen=300_011, payer_kind="individual", occurred_at=in_2024),
        contribution(amount_fen=5_000, occurred_at="2024-12-31T16:00:00Z"),  # 2025 in Beijing
        claim(amount_fen=100_000, occurred_at=in_2024),  # payouts do not lower the base
        interest(amount_fen=9_999, city=HEFEI, occurred_at=in_2024),  # interest is not income
        contribution(amount_fen=2_000_000),  # 2025 income: next year's base
    )
    base = 700_003 + 300_011
    allowed = base * RATE_BP // 10_000

    outcomes = feed(ledger, extraction(allowed + 1), extraction(allowed))

    assert statuses(outcomes) == [("rejected", "extraction_cap_exceeded"), ACCEPTED]
    assert mentions(outcomes[0].detail, base)


def test_the_openings_previous_year_income_is_the_base_of_its_fiscal_year_only() -> None:
    ledger = new_ledger()
    income_2025 = 300_007
    feed(
        ledger,
        opening(HEFEI, previous_year_income_fen=2_000_000, fiscal_year=2025),
        contribution(amount_fen=income_2025),
    )
    allowed_2026 = income_2025 * RATE_BP // 10_000
    in_2026 = "2026-02-01T10:00:00+08:00"

    outcomes = feed(
        ledger,
        extraction(allowed_2026 + 1, fiscal_year=2026, occurred_at=in_2026),
        extraction(allowed_2026, fiscal_year=2026, occurred_at=in_2026),
    )

    assert statuses(outcomes) == [("rejected", "extraction_cap_exceeded"), ACCEPTED]
    assert mentions(outcomes[0].detail, income_2025)


def test_closing_a_year_fixes_its_income_as_the_next_years_extraction_base() -> None:
    ledger = new_ledger()
    in_2024 = "2024-06-01T10:00:00+08:00"
    first = contribution(amount_fen=600_000, occurred_at=in_2024)
    feed(ledger, first, contribution(amount_fen=400_000, occurred_at=in_2024))
    income_2024 = 600_000 + 400_000
    assert statuses(feed(ledger, close(HEFEI, 2024, occurred_at="2025-01-05T10:00:00+08:00"))) == [
        ACCEPTED
    ]
    assert fund(ledger, pooling()).closed_years == {2024: income_2024}

    late = contribution(amount_fen=1_000_000, occurred_at="2024-12-31T10:00:00+08:00")
    # a prior-year reversal is booked in 2025 and does not touch the fixed 2024 income
    corrected = reversal(first, occurred_at="2025-02-01T10:00:00+08:00")
    assert statuses(feed(ledger, late, corrected)) == [("rejected", "period_closed"), ACCEPTED]

    allowed = income_2024 * RATE_BP // 10_000
    outcomes = feed(ledger, extraction(allowed + 1), extraction(allowed))
    assert statuses(outcomes) == [("rejected", "extraction_cap_exceeded"), ACCEPTED]
    assert mentions(outcomes[0].detail, income_2024)
    assert fund(ledger, pooling()).closed_years == {2024: income_2024}


def test_without_a_close_a_reversal_of_last_years_contribution_lowers_this_years_base() -> None:
    """The contrast to the test above: an open year's reversal is booked in that year (P2)."""
    ledger = new_ledger()
    in_2024 = "2024-06-01T10:00:00+08:00"
    first = contribution(amount_fen=600_000, occurred_at=in_2024)
    feed(ledger, first, contribution(amount_fen=400_000, occurred_at=in_2024))
    assert statuses(feed(ledger, reversal(first, occurred_at="2025-02-01T10:00:00+08:00"))) == [
        ACCEPTED
    ]

    allowed = 400_000 * RATE_BP // 10_000
    outcomes = feed(ledger, extraction(allowed + 1), extraction(allowed))
    assert statuses(outcomes) == [("rejected", "extraction_cap_exceeded"), ACCEPTED]


def test_a_reversed_extraction_no_longer_counts_against_the_cap() -> None:
    ledger = new_ledger()
    base = 1_000_000
    feed(ledger, opening(HEFEI, previous_year_income_fen=base))
    allowed = base * RATE_BP // 10_000
    taken = extraction(allowed)
    assert statuses(feed(ledger, taken, extraction(1))) == [
        ACCEPTED,
        ("rejected", "extraction_cap_exceeded"),
    ]
    assert statuses(feed(ledger, reversal(taken), extraction(allowed))) == [ACCEPTED, ACCEPTED]
    assert balance(ledger, PROVINCE_RESIDENT) == allowed


# ============================================================== X3 collected income


@pytest.mark.parametrize(
    ("extraction_base", "subsidies_count"),
    [("contributions", False), ("contributions_and_subsidies", True)],
)
def test_subsidies_count_in_the_extraction_base_only_under_contributions_and_subsidies(
    extraction_base: str, subsidies_count: bool
) -> None:
    ledger = new_ledger(anhui(extraction_base=extraction_base))
    in_2024 = "2024-06-01T10:00:00+08:00"
    contributions, subsidies = 1_000_003, 600_017
    feed(
        ledger,
        contribution(amount_fen=contributions, occurred_at=in_2024),
        subsidy(amount_fen=400_000, level="central", occurred_at=in_2024),
        subsidy(amount_fen=200_017, level="county", occurred_at=in_2024),
    )
    base = contributions + (subsidies if subsidies_count else 0)
    allowed = base * RATE_BP // 10_000

    outcomes = feed(ledger, extraction(allowed + 1), extraction(allowed))

    assert statuses(outcomes) == [("rejected", "extraction_cap_exceeded"), ACCEPTED]
    assert mentions(outcomes[0].detail, base)
    assert balance(ledger, PROVINCE_RESIDENT) == allowed


def test_default_anhui_policy_counts_contributions_only() -> None:
    assert load_packaged_policy("anhui").extraction_base.value == "contributions"


# ====================================================== X4 ceiling of the adjustment fund


def test_extraction_may_fill_the_adjustment_fund_exactly_to_its_ceiling_and_is_then_paused() -> None:
    pause_bp = 300  # below the 5 % a city may give, so that the ceiling can be reached
    ledger = new_ledger(anhui(pause_ratio_bp=pause_bp))
    incomes = {HEFEI: 1_000_003, WUHU: 2_000_001, BENGBU: 1_500_005}
    feed(ledger, *(opening(c, previous_year_income_fen=i) for c, i in incomes.items()))
    ceiling = sum(incomes.values()) * pause_bp // 10_000
    hefei = incomes[HEFEI] * RATE_BP // 10_000
    to_ceiling = ceiling - hefei
    assert to_ceiling <= incomes[WUHU] * RATE_BP // 10_000  # Wuhu's own cap (X2) allows it

    outcomes = feed(
        ledger,
        extraction(hefei, city=HEFEI),
        extraction(to_ceiling + 1, city=WUHU),
        extraction(to_ceiling, city=WUHU),
        extraction(1, city=BENGBU),
        extraction(1, city=WUHU),
    )

    assert statuses(outcomes) == [
        ACCEPTED,
        ("rejected", "extraction_cap_exceeded"),
        ACCEPTED,
        ("rejected", "extraction_paused"),
        ("rejected", "extraction_paused"),
    ]
    assert mentions(outcomes[1].detail, ceiling)
    assert mentions(outcomes[3].detail, ceiling)
    assert balance(ledger, PROVINCE_RESIDENT) == ceiling
    assert balance(ledger, pooling(BENGBU)) == 10_000_000


def test_interest_credited_to_the_adjustment_fund_counts_towards_its_ceiling() -> None:
    ledger = new_ledger()  # Anhui: pause at 10 %
    incomes = {HEFEI: 1_000_000, WUHU: 600_000}
    feed(ledger, *(opening(c, previous_year_income_fen=i) for c, i in incomes.items()))
    ceiling = sum(incomes.values()) * PAUSE_BP // 10_000
    room = 30_000
    assert statuses(feed(ledger, interest(amount_fen=ceiling - room))) == [ACCEPTED]

    outcomes = feed(
        ledger,
        extraction(room + 1, city=HEFEI),
        extraction(room, city=HEFEI),
        extraction(1, city=WUHU),
    )

    assert statuses(outcomes) == [
        ("rejected", "extraction_cap_exceeded"),
        ACCEPTED,
        ("rejected", "extraction_paused"),
    ]
    assert balance(ledger, PROVINCE_RESIDENT) == ceiling


def test_the_ceiling_of_one_scheme_does_not_pause_the_other() -> None:
    ledger = new_ledger()
    feed(
        ledger,
        opening(HEFEI, previous_year_income_fen=1_000_000),
        opening(HEFEI, "employee", previous_year_income_fen=1_000_000, fiscal_year=2026,
                occurred_at="2026-01-01T10:00:00+08:00"),
        interest("resident", 1_000_000),  # far above the resident ceiling
    )
    in_2026 = "2026-02-01T10:00:00+08:00"
    outcomes = feed(
        ledger,
        extraction(1, occurred_at="2025-12-01T10:00:00+08:00", fiscal_year=2025),
        extraction(1, scheme="employee", occurred_at=in_2026, fiscal_year=2026),
    )
    assert statuses(outcomes) == [("rejected", "extraction_paused"), ACCEPTED]


def test_closing_the_province_year_fixes_the_province_income_behind_the_ceiling() -> None:
    ledger = new_ledger()
    income_2024 = 1_000_000
    feed(ledger, contribution(amount_fen=income_2024, occurred_at="2024-06-01T10:00:00+08:00"))
    assert statuses(feed(ledger, close(None, 2024, occurred_at="2025-01-05T10:00:00+08:00"))) == [
        ACCEPTED
    ]
    assert fund(ledger, PROVINCE_RESIDENT).closed_years == {2024: income_2024}
    # Hefei's own year is still open: a late 2024 contribution doubles its base (X2) ...
    late = contribution(amount_fen=income_2024, occurred_at="2024-12-30T10:00:00+08:00")
    assert statuses(feed(ledger, late)) == [ACCEPTED]
    # ... but the province's income for the ceiling stays as closed
    ceiling = income_2024 * PAUSE_BP // 10_000
    city_cap = 2 * income_2024 * RATE_BP // 10_000
    room = 50_000
    feed(ledger, interest(amount_fen=ceiling - room))
    assert room + 1 <= city_cap

    outcomes = feed(ledger, extraction(room + 1), extraction(room), extraction(1))

    assert statuses(outcomes) == [
        ("rejected", "extraction_cap_exceeded"),
        ACCEPTED,
        ("rejected", "extraction_paused"),
    ]
    assert mentions(outcomes[0].detail, ceiling)
    assert balance(ledger, PROVINCE_RESIDENT) == ceiling


# ================================================================ X5 allocations


def city_with_a_gap() -> tuple[Ledger, int]:
    """Hefei (resident) paid more in 2025 than it took in: the gap the ledger computes."""
    ledger = new_ledger()
    contributions, subsidies, interest_fen, claims = 100_000, 50_000, 1_001, 350_000
    outcomes = feed(
        ledger,
        opening(HEFEI, balance_fen=1_000_000),  # money, but not income
        opening(None, balance_fen=5_000_000),  # the province fund
        contribution(amount_fen=contributions),
        subsidy(amount_fen=subsidies),
        interest(amount_fen=interest_fen, city=HEFEI),
        claim(amount_fen=200_000),
        claim(amount_fen=claims - 200_000),
    )
    assert [o.status for o in outcomes] == ["accepted"] * 7
    return ledger, claims - (contributions + subsidies + interest_fen)


def test_allocation_of_exactly_the_share_of_the_gap_is_accepted_and_one_fen_more_is_rejected() -> None:
    ledger, gap = city_with_a_gap()
    assert gap == 198_999
    share = gap * SHARE_BP // 10_000
    assert share == 99_499  # 99,499.5 floored

    over = one(ledger, allocation(gap, share + 1))
    exact = one(ledger, allocation(gap, share))

    assert (over.status, over.reason) == ("rejected", "allocation_exceeds_share")
    assert mentions(over.detail, share)
    assert (exact.status, exact.reason) == ACCEPTED
    assert balance(ledger, PROVINCE_RESIDENT) == 5_000_000 - share
    assert fund(ledger, pooling()).total_fen(2025, "allocation") == share


def test_allocation_claiming_a_gap_above_the_ledgers_gap_is_rejected() -> None:
    ledger, gap = city_with_a_gap()
    outcomes = feed(ledger, allocation(gap + 1, 1), allocation(gap, 1))
    assert statuses(outcomes) == [("rejected", "allocation_exceeds_share"), ACCEPTED]
    assert mentions(outcomes[0].detail, gap)


def test_allocation_within_the_share_of_a_smaller_claimed_gap_only() -> None:
    ledger, gap = city_with_a_gap()
    claimed = 100_001
    assert claimed < gap
    share = claimed * SHARE_BP // 10_000
    outcomes = feed(ledger, allocation(claimed, share + 1), allocation(claimed, share))
    assert statuses(outcomes) == [("rejected", "allocation_exceeds_share"), ACCEPTED]


def test_allocations_of_a_year_add_up_against_the_share_of_the_ledgers_gap() -> None:
    ledger, gap = city_with_a_gap()
    share = gap * SHARE_BP // 10_000
    first = 60_000
    rest = share - first

    outcomes = feed(
        ledger,
        allocation(gap, first),
        allocation(gap, rest + 1),
        allocation(gap, rest),
        allocation(gap, 1),
    )

    assert statuses(outcomes) == [
        ACCEPTED,
        ("rejected", "allocation_exceeds_share"),
        ACCEPTED,
        ("rejected", "allocation_exceeds_share"),
    ]
    assert fund(ledger, pooling()).total_fen(2025, "allocation") == share


def test_allocation_to_a_city_without_a_gap_is_rejected() -> None:
    ledger = new_ledger()
    feed(
        ledger,
        opening(None, balance_fen=5_000_000),
        contribution(amount_fen=100_000),
        claim(amount_fen=100_000),  # expenditure == income: no gap
    )
    assert statuses(feed(ledger, allocation(2, 1))) == [("rejected", "allocation_exceeds_share")]


def test_allocation_share_comes_from_the_policy_by_reason() -> None:
    shares = {
        "policy_adjustment": 5000,
        "major_epidemic": 8000,
        "other_reasonable": 2500,
        "benefit_increase": 5000,
    }
    ledger = new_ledger(anhui(gap_share_bp=shares))
    feed(
        ledger,
        opening(HEFEI, balance_fen=1_000_000),
        opening(None, balance_fen=5_000_000),
        claim(amount_fen=100_003),
    )
    gap = 100_003
    epidemic = gap * shares["major_epidemic"] // 10_000

    outcomes = feed(
        ledger,
        allocation(gap, gap * shares["other_reasonable"] // 10_000 + 1, reason="other_reasonable"),
        allocation(gap, epidemic + 1, reason="major_epidemic"),
        allocation(gap, epidemic, reason="major_epidemic"),
    )

    assert statuses(outcomes) == [
        ("rejected", "allocation_exceeds_share"),
        ("rejected", "allocation_exceeds_share"),
        ACCEPTED,
    ]


def test_allocation_from_an_empty_province_fund_is_rejected_insufficient_funds() -> None:
    ledger = new_ledger()
    feed(ledger, opening(HEFEI, balance_fen=1_000_000), claim(amount_fen=100_000))
    gap = 100_000
    share = gap * SHARE_BP // 10_000

    assert statuses(feed(ledger, allocation(gap, share))) == [("rejected", "insufficient_funds")]

    feed(ledger, interest(amount_fen=share - 1))
    assert statuses(feed(ledger, allocation(gap, share))) == [("rejected", "insufficient_funds")]
    feed(ledger, interest(amount_fen=1))
    assert statuses(feed(ledger, allocation(gap, share))) == [ACCEPTED]
    assert balance(ledger, PROVINCE_RESIDENT) == 0
    assert balance(ledger, pooling()) == 1_000_000 - gap + share


# =================================================================== P1 year close


def closed_hefei_2025() -> Ledger:
    """Hefei (resident) with money, a 2025 gap and a province fund; its 2025 is then closed."""
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        opening(HEFEI, balance_fen=1_000_000, previous_year_income_fen=1_000_000),
        opening(None, balance_fen=1_000_000),
        contribution(amount_fen=100_000),
        claim(amount_fen=400_000),
        close(HEFEI, 2025),
    )
    assert [o.status for o in outcomes] == ["accepted"] * 5
    return ledger


LATE_IN_2025 = "2025-12-31T12:00:00+08:00"
IN_2026 = "2026-02-01T10:00:00+08:00"


@pytest.mark.parametrize(
    "late",
    [
        lambda: contribution(occurred_at=LATE_IN_2025),
        lambda: subsidy(occurred_at=LATE_IN_2025),
        lambda: claim(occurred_at=LATE_IN_2025),
        lambda: interest(city=HEFEI, occurred_at=LATE_IN_2025),
        lambda: budget(1_000, 1_000, occurred_at=LATE_IN_2025),
        lambda: budget(1_000, 1_000, type_="BudgetAdjusted", occurred_at=IN_2026),
        lambda: extraction(1_000, occurred_at=LATE_IN_2025),
        lambda: extraction(1_000, occurred_at=IN_2026),  # for fiscal 2025, made in 2026
        lambda: allocation(100_000, 1_000, occurred_at=LATE_IN_2025),
        lambda: allocation(100_000, 1_000, occurred_at=IN_2026),
    ],
    ids=[
        "contribution",
        "subsidy",
        "claim",
        "interest",
        "budget-approved",
        "budget-adjusted",
        "extraction",
        "extraction-for-2025-made-in-2026",
        "allocation",
        "allocation-for-2025-made-in-2026",
    ],
)
def test_event_for_a_closed_year_of_the_fund_is_rejected_period_closed(late: Any) -> None:
    ledger = closed_hefei_2025()
    before = copy.deepcopy(fund(ledger, pooling()).totals_fen)
    before_balance = balance(ledger, pooling())

    outcome = one(ledger, late())

    assert (outcome.status, outcome.reason) == ("rejected", "period_closed")
    assert fund(ledger, pooling()).totals_fen == before
    assert balance(ledger, pooling()) == before_balance
    assert balance(ledger, PROVINCE_RESIDENT) == 1_000_000


def test_a_closed_year_locks_only_its_own_fund_and_year() -> None:
    ledger = closed_hefei_2025()
    feed(ledger, opening(WUHU, balance_fen=1_000))
    outcomes = feed(
        ledger,
        contribution(HEFEI, "resident", 10, occurred_at=IN_2026),
        contribution(HEFEI, "employee", 10, occurred_at=LATE_IN_2025),
        contribution(WUHU, "resident", 10, occurred_at=LATE_IN_2025),
        interest(amount_fen=10, occurred_at=LATE_IN_2025),  # the province fund is open
    )
    assert statuses(outcomes) == [ACCEPTED] * 4


def test_closing_the_province_fund_locks_it_but_not_the_cities() -> None:
    ledger = new_ledger()
    feed(
        ledger,
        opening(None, balance_fen=1_000),
        opening(HEFEI, previous_year_income_fen=1_000_000),
        close(None, 2025),
    )
    outcomes = feed(
        ledger,
        interest(amount_fen=10, occurred_at=LATE_IN_2025),
        contribution(amount_fen=10, occurred_at=LATE_IN_2025),
        interest(amount_fen=10, occurred_at=IN_2026),
    )
    assert statuses(outcomes) == [("rejected", "period_closed"), ACCEPTED, ACCEPTED]
    assert balance(ledger, PROVINCE_RESIDENT) == 1_010
    # an extraction for 2025 would be booked into the closed province year
    assert statuses(feed(ledger, extraction(1_000, occurred_at=LATE_IN_2025))) == [
        ("rejected", "period_closed")
    ]
    assert balance(ledger, pooling()) == 10_000_000 + 10


def test_closing_a_year_twice_is_accepted_and_changes_nothing() -> None:
    ledger = new_ledger()
    contributions, subsidies = 100_000, 40_000
    feed(ledger, contribution(amount_fen=contributions), subsidy(amount_fen=subsidies))
    first = close(HEFEI, 2025, occurred_at="2026-01-01T00:00:00+08:00")
    assert statuses(feed(ledger, first)) == [ACCEPTED]
    closed = fund(ledger, pooling())
    state = (closed.version, copy.deepcopy(closed.closed_years), closed.balance_fen)
    assert closed.closed_years == {2025: contributions}
    # From 2026 subsidies count in the base: a second close would fix another figure.
    with_subsidies = anhui(extraction_base="contributions_and_subsidies")
    # effective the day after the first close was decided (I4: not on that day)
    adopted = adopt(with_subsidies, "2026-01-02", occurred_at="2026-01-01T00:30:00+08:00")
    assert statuses(feed(ledger, adopted)) == [ACCEPTED]

    assert statuses(feed(ledger, close(HEFEI, 2025))) == [ACCEPTED]

    closed = fund(ledger, pooling())
    assert (closed.version, closed.closed_years, closed.balance_fen) == state
    allowed = contributions * RATE_BP // 10_000
    outcomes = feed(
        ledger,
        extraction(allowed + 1, fiscal_year=2026, occurred_at=IN_2026),
        extraction(allowed, fiscal_year=2026, occurred_at=IN_2026),
    )
    assert statuses(outcomes) == [("rejected", "extraction_cap_exceeded"), ACCEPTED]


def test_claim_dated_in_a_closed_year_is_rejected_period_closed_even_when_over_budget() -> None:
    """P1 names the reason: the year is closed, whatever else is wrong with the claim."""
    ledger = new_ledger()
    feed(ledger, opening(HEFEI, balance_fen=1_000_000), budget(10_000, 10_000), close(HEFEI, 2025))

    outcome = one(ledger, claim(amount_fen=10_001, occurred_at=LATE_IN_2025))

    assert (outcome.status, outcome.reason) == ("rejected", "period_closed")
    assert balance(ledger, pooling()) == 1_000_000


def test_opening_balance_dated_in_a_closed_year_is_rejected_period_closed() -> None:
    """P1: any event dated in a closed year of a fund is refused, its opening balance too."""
    ledger = new_ledger()
    assert statuses(feed(ledger, close(HEFEI, 2025))) == [ACCEPTED]

    late = opening(HEFEI, balance_fen=1_000, occurred_at="2025-06-01T10:00:00+08:00")
    outcome = one(ledger, late)

    assert (outcome.status, outcome.reason) == ("rejected", "period_closed")
    assert fund(ledger, pooling()).totals_fen.get(2025, {}) == {}
    assert balance(ledger, pooling()) == 0


# ==================================================================== P2 reversals


def test_reversal_books_the_exact_opposite_and_restores_the_balances() -> None:
    ledger = new_ledger()
    paid = claim(amount_fen=3_000)
    feed(ledger, contribution(amount_fen=10_000), paid)
    reversed_ = reversal(paid)

    assert statuses(feed(ledger, reversed_)) == [ACCEPTED]

    original = ledger.receipt(paid["event_id"])
    receipt = ledger.receipt(reversed_["event_id"])
    assert original is not None and original.transfer is not None
    assert receipt is not None and receipt.transfer is not None
    t, o = receipt.transfer, original.transfer
    assert (t["debit_account"], t["credit_account"]) == (o["credit_account"], o["debit_account"])
    assert (t["amount_fen"], t["category"], t["fiscal_year"]) == (3_000, o["category"], 2025)
    assert t["reversal_of"] == paid["event_id"]
    assert t["prior_year_adjustment"] is False
    assert original.reversed_by == reversed_["event_id"]

    assert balance(ledger, pooling()) == 10_000
    assert fund(ledger, pooling()).claims_paid_fen(2025) == 0
    tb = trial_balance(ledger)
    assert tb.total_fen == 0
    assert tb.balances_fen["external:institutions:340100"] == 0
    assert tb.balances_fen[pooling()] == 10_000


@pytest.mark.parametrize("same_batch", [True, False], ids=["one-batch", "two-batches"])
def test_an_event_is_reversed_only_once_already_reversed(same_batch: bool) -> None:
    ledger = new_ledger()
    paid = contribution(amount_fen=5_000)
    feed(ledger, paid)
    first, second = reversal(paid), reversal(paid)

    if same_batch:
        outcomes = feed(ledger, first, second)
    else:
        outcomes = feed(ledger, first) + feed(ledger, second)

    assert statuses(outcomes) == [ACCEPTED, ("rejected", "already_reversed")]
    assert outcomes[1].detail is not None and first["event_id"] in outcomes[1].detail
    assert balance(ledger, pooling()) == 0
    assert trial_balance(ledger).total_fen == 0


def test_reversal_of_an_unknown_event_is_rejected_unknown_original() -> None:
    ledger = new_ledger()
    feed(ledger, contribution(amount_fen=5_000))
    assert statuses(feed(ledger, reversal(str(uuid.uuid4())))) == [("rejected", "unknown_original")]
    assert balance(ledger, pooling()) == 5_000


def test_reversal_of_a_rejected_event_is_rejected_unknown_original() -> None:
    ledger = new_ledger()
    refused = claim(amount_fen=1_000)
    assert statuses(feed(ledger, refused)) == [("rejected", "insufficient_funds")]
    feed(ledger, contribution(amount_fen=5_000))

    assert statuses(feed(ledger, reversal(refused))) == [("rejected", "unknown_original")]
    assert balance(ledger, pooling()) == 5_000
    assert trial_balance(ledger).total_fen == 0


def test_reversal_that_would_take_a_fund_negative_is_rejected_insufficient_funds() -> None:
    ledger = new_ledger()
    paid_in = contribution(amount_fen=10_000)
    feed(ledger, paid_in, claim(amount_fen=8_000))

    assert statuses(feed(ledger, reversal(paid_in))) == [("rejected", "insufficient_funds")]
    original = ledger.receipt(paid_in["event_id"])
    assert original is not None and original.reversed_by is None
    assert balance(ledger, pooling()) == 2_000

    # once the fund holds the money again, a new reversal goes through
    feed(ledger, contribution(amount_fen=8_000))
    assert statuses(feed(ledger, reversal(paid_in))) == [ACCEPTED]
    assert balance(ledger, pooling()) == 0
    assert trial_balance(ledger).total_fen == 0


def test_reversal_of_a_closed_years_event_is_booked_in_the_open_year_as_a_prior_year_adjustment() -> None:
    ledger = new_ledger()
    wrong = contribution(amount_fen=100_000)
    feed(ledger, wrong, contribution(amount_fen=20_000), close(HEFEI, 2025))
    before = fund(ledger, pooling())
    totals_2025 = copy.deepcopy(before.totals_fen[2025])
    closed_years = dict(before.closed_years)
    reversed_ = reversal(wrong, occurred_at=IN_2026)

    assert statuses(feed(ledger, reversed_)) == [ACCEPTED]

    receipt = ledger.receipt(reversed_["event_id"])
    assert receipt is not None and receipt.transfer is not None
    t = receipt.transfer
    assert t["prior_year_adjustment"] is True
    assert t["fiscal_year"] == 2026
    assert t["category"] == "prior_year_adjustment.contribution.individual"
    assert (t["debit_account"], t["amount_fen"]) == (pooling(), 100_000)
    assert t["reversal_of"] == wrong["event_id"]
    after = fund(ledger, pooling())
    assert after.totals_fen[2025] == totals_2025
    assert after.closed_years == closed_years
    assert after.balance_fen == 20_000
    assert trial_balance(ledger).total_fen == 0


def test_reversal_dated_inside_the_closed_year_is_rejected_period_closed() -> None:
    ledger = new_ledger()
    wrong = contribution(amount_fen=100_000)
    feed(ledger, wrong, close(HEFEI, 2025))
    outcome = one(ledger, reversal(wrong, occurred_at=LATE_IN_2025))
    assert (outcome.status, outcome.reason) == ("rejected", "period_closed")
    assert balance(ledger, pooling()) == 100_000


# ======================================================= PolicyAdopted: effective dates


def three_cities_with_openings(income: int = 1_000_000) -> Ledger:
    ledger = new_ledger()
    outcomes = feed(
        ledger, *(opening(c, previous_year_income_fen=income) for c in (HEFEI, WUHU, BENGBU))
    )
    assert [o.status for o in outcomes] == ["accepted"] * 3
    return ledger


def test_mid_year_policy_change_judges_each_extraction_by_the_policy_in_force_on_its_date() -> None:
    income = 1_000_000
    ledger = three_cities_with_openings(income)
    lower_bp = 300
    change = adopt(
        anhui(extraction_rate_bp=lower_bp), "2025-07-01", occurred_at="2025-05-20T10:00:00+08:00"
    )
    assert statuses(feed(ledger, change)) == [ACCEPTED]
    five, three = income * RATE_BP // 10_000, income * lower_bp // 10_000

    june = feed(ledger, extraction(five, city=HEFEI, occurred_at="2025-06-15T10:00:00+08:00"))
    august = feed(
        ledger,
        extraction(three + 1, city=WUHU, occurred_at="2025-08-15T10:00:00+08:00"),
        extraction(three, city=WUHU, occurred_at="2025-08-15T10:00:00+08:00"),
    )
    # the change takes effect at midnight in Beijing
    boundary = feed(
        ledger,
        extraction(three + 1, city=BENGBU, occurred_at="2025-06-30T15:59:59Z"),
        extraction(1, city=BENGBU, occurred_at="2025-06-30T16:00:00Z"),
    )

    assert statuses(june) == [ACCEPTED]
    assert statuses(august) == [("rejected", "extraction_cap_exceeded"), ACCEPTED]
    assert mentions(august[0].detail, lower_bp) and mentions(august[0].detail, three)
    assert statuses(boundary) == [ACCEPTED, ("rejected", "extraction_cap_exceeded")]
    assert balance(ledger, PROVINCE_RESIDENT) == five + three + three + 1
    book = ledger.policy_book()
    assert book is not None
    june_policy = book.timeline.in_force(date(2025, 6, 30))
    july_policy = book.timeline.in_force(date(2025, 7, 1))
    assert june_policy is not None and june_policy.extraction_rate_bp == RATE_BP
    assert july_policy is not None and july_policy.extraction_rate_bp == lower_bp
    assert july_policy.effective_from == date(2025, 7, 1)


@pytest.mark.parametrize(
    ("occurred_at", "effective_from"),
    [
        ("2025-07-02T09:00:00+08:00", "2025-07-01"),
        ("2025-06-30T16:00:00Z", "2025-06-30"),  # already 1 July in Beijing
        ("2025-01-01T00:00:00+08:00", "2020-01-01"),
    ],
)
def test_retroactive_policy_adoption_is_rejected_policy_violation(
    occurred_at: str, effective_from: str
) -> None:
    ledger = three_cities_with_openings()
    late = adopt(anhui(extraction_rate_bp=300), effective_from, occurred_at=occurred_at)

    assert statuses(feed(ledger, late)) == [("rejected", "policy_violation")]

    book = ledger.policy_book()
    assert book is not None and len(book.timeline) == 1
    # decisions keep using the policy that was in force
    allowed = 1_000_000 * RATE_BP // 10_000
    assert statuses(feed(ledger, extraction(allowed, occurred_at="2025-08-01T10:00:00+08:00"))) == [
        ACCEPTED
    ]


@pytest.mark.parametrize("occurred_at", ["2025-06-30T16:00:00Z", "2025-06-30T15:59:59Z"])
def test_policy_adopted_on_or_before_its_effective_day_in_beijing_is_accepted(
    occurred_at: str,
) -> None:
    ledger = three_cities_with_openings()
    assert statuses(
        feed(ledger, adopt(anhui(extraction_rate_bp=300), "2025-07-01", occurred_at=occurred_at))
    ) == [ACCEPTED]
    book = ledger.policy_book()
    assert book is not None and len(book.timeline) == 2


def test_policy_for_another_province_is_rejected_policy_violation() -> None:
    ledger = three_cities_with_openings()
    guangxi = load_packaged_policy("guangxi-2022")
    assert guangxi.province != PROVINCE

    assert statuses(feed(ledger, adopt(guangxi, "2026-01-01"))) == [
        ("rejected", "policy_violation")
    ]
    book = ledger.policy_book()
    assert book is not None and len(book.timeline) == 1
    assert statuses(feed(ledger, contribution(occurred_at=IN_2026))) == [ACCEPTED]


# ============================================================================ replay


def test_rebuilding_every_aggregate_from_the_stored_events_gives_the_same_state() -> None:
    ledger = new_ledger()
    in_2024 = "2024-06-01T10:00:00+08:00"
    wrong = contribution(WUHU, amount_fen=77_777, occurred_at="2025-04-01T10:00:00+08:00")
    messages = [
        [
            contribution(HEFEI, amount_fen=2_000_000, occurred_at=in_2024),
            contribution(WUHU, amount_fen=1_000_000, occurred_at=in_2024),
            subsidy(HEFEI, amount_fen=300_000, occurred_at=in_2024),
            contribution(HEFEI, "employee", 500_000, payer_kind="employer", occurred_at=in_2024),
            opening(BENGBU, previous_year_income_fen=1_000_000),
            opening(None, balance_fen=100_000, occurred_at="2024-12-01T00:00:00+08:00", fiscal_year=2024),
            close(HEFEI, 2024, occurred_at="2025-01-03T10:00:00+08:00"),
            close(WUHU, 2024, occurred_at="2025-01-03T10:00:00+08:00"),  # before its 2025 (P1)
            close(None, 2024, occurred_at="2025-01-03T10:00:00+08:00"),
        ],
        [
            budget(1_000_000, 900_000),
            budget(900_000, 800_000, city=WUHU),  # approved, then adjusted (B5)
            budget(1_000_000, 1_000_000, city=WUHU, type_="BudgetAdjusted"),
            adopt(anhui(extraction_rate_bp=300), "2025-07-01"),
            extraction(100_000, occurred_at="2025-06-01T10:00:00+08:00"),
            extraction(30_000, city=WUHU, occurred_at="2025-08-01T10:00:00+08:00"),
            extraction(1, city=WUHU, occurred_at="2025-08-02T10:00:00+08:00"),  # above 3 %
            wrong,
            claim(WUHU, amount_fen=1_000_000),
            claim(HEFEI, amount_fen=900_000),
            claim(HEFEI, amount_fen=1),  # over budget
        ],
        [
            allocation(1_000_000 - 77_777, 100_000, city=WUHU),
            reversal(wrong, occurred_at="2025-11-01T10:00:00+08:00"),
            interest(amount_fen=1_234, occurred_at="2025-12-01T10:00:00+08:00"),
            close(WUHU, 2025, occurred_at="2026-01-05T10:00:00+08:00"),
            contribution(WUHU, amount_fen=5, occurred_at=LATE_IN_2025),  # period closed
        ],
    ]
    outcomes = [o for batch in messages for o in feed(ledger, *batch)]
    assert [o.reason for o in outcomes if o.status != "accepted"] == [
        "extraction_cap_exceeded",
        "over_budget",
        "period_closed",
    ]
    fund_accounts = [
        pooling(HEFEI),
        pooling(WUHU),
        pooling(BENGBU),
        pooling(HEFEI, "employee"),
        PROVINCE_RESIDENT,
    ]

    def state() -> dict[str, Any]:
        funds = {}
        for account in fund_accounts:
            f = fund(ledger, account)
            funds[account] = copy.deepcopy(
                {
                    "balance_fen": f.balance_fen,
                    "booking_count": f.booking_count,
                    "opening": f.opening,
                    "totals_fen": f.totals_fen,
                    "year_net_fen": f.year_net_fen,
                    "budgets": f.budgets,
                    "closed_years": f.closed_years,
                    "version": f.version,
                }
            )
        book = ledger.policy_book()
        assert book is not None
        receipts = {}
        for m in (m for batch in messages for m in batch):
            r = ledger.receipt(m["event_id"])
            assert r is not None
            receipts[m["event_id"]] = copy.deepcopy((r.status, r.reason, r.transfer, r.reversed_by))
        return {
            "funds": funds,
            "policies": [p.model_dump(mode="json") for p in book.timeline._policies],
            "book_version": book.version,
            "receipts": receipts,
        }

    live = state()
    live_policy_book = ledger.policy_book()

    ledger._forget_cached_aggregates()  # forget every aggregate kept in memory
    ledger._repository = ledger.construct_repository()
    rebuilt = state()

    assert ledger.policy_book() is not live_policy_book
    assert rebuilt == live
    # a few figures the inputs imply, so that "equal" is not "equally empty"
    province_income_2024 = 2_000_000 + 1_000_000 + 1_000_000  # Hefei, Wuhu, Bengbu's opening
    assert rebuilt["funds"][PROVINCE_RESIDENT]["closed_years"] == {2024: province_income_2024}
    assert rebuilt["funds"][PROVINCE_RESIDENT]["balance_fen"] == (
        100_000 + 100_000 + 30_000 - 100_000 + 1_234
    )
    assert rebuilt["funds"][pooling(HEFEI)]["closed_years"] == {2024: 2_000_000}
    assert rebuilt["funds"][pooling(WUHU)]["closed_years"] == {2024: 1_000_000, 2025: 77_777 - 77_777}
    assert rebuilt["funds"][pooling(WUHU)]["budgets"][2025]["kind"] == "adjusted"
    assert [p["extraction_rate_bp"] for p in rebuilt["policies"]] == [RATE_BP, 300]
    tb = trial_balance(ledger)
    assert tb.total_fen == 0
    for account in fund_accounts:
        assert tb.balances_fen[account] == live["funds"][account]["balance_fen"]
    # decisions after the rebuild still follow the adopted policy (3 % from July)
    three = 1_000_000 * 300 // 10_000
    in_september = "2025-09-01T10:00:00+08:00"
    outcomes = feed(
        ledger,
        extraction(three + 1, city=BENGBU, occurred_at=in_september),
        extraction(three, city=BENGBU, occurred_at=in_september),
    )
    assert statuses(outcomes) == [("rejected", "extraction_cap_exceeded"), ACCEPTED]


# ====================================================================== corrections
# Cases the first review of these rules found open; each is settled here.


def test_extraction_for_a_fiscal_year_before_the_phase_is_rejected_even_when_dated_after_it() -> None:
    ledger = new_ledger()
    feed(ledger, opening(HEFEI, previous_year_income_fen=1_000_000))
    outcome = one(ledger, extraction(1_000, fiscal_year=2024, occurred_at="2025-01-05T10:00:00+08:00"))
    assert (outcome.status, outcome.reason) == ("rejected", "phase_not_active")
    assert outcome.detail is not None and "fiscal year 2024" in outcome.detail


def test_a_reversal_cannot_be_reversed_because_that_would_rebook_without_the_rules() -> None:
    """Undoing a reversal of an extraction would extract again past X2/X4: refused."""
    ledger = new_ledger()
    feed(ledger, opening(HEFEI, previous_year_income_fen=1_000_000))
    original = extraction(1_000_000 * RATE_BP // 10_000)
    first = reversal(original)
    assert statuses(feed(ledger, original, first)) == [ACCEPTED, ACCEPTED]
    outcome = one(ledger, reversal(first))
    assert (outcome.status, outcome.reason) == ("rejected", "unknown_original")
    assert outcome.detail is not None and "itself a reversal" in outcome.detail
    assert balance(ledger, PROVINCE_RESIDENT) == 0
    assert trial_balance(ledger).total_fen == 0


def test_the_go_live_openings_income_is_the_extraction_base_even_after_an_empty_year_was_closed() -> None:
    """An opening for 2025 declares audited 2024 income; closing 2024 first fixed nothing real."""
    ledger = new_ledger()
    feed(ledger, close(HEFEI, 2024, occurred_at="2025-01-01T08:00:00+08:00"))
    feed(ledger, opening(HEFEI, previous_year_income_fen=1_000_000, occurred_at="2025-01-01T09:00:00+08:00"))
    cap = 1_000_000 * RATE_BP // 10_000
    assert statuses(feed(ledger, extraction(cap), extraction(1))) == [
        ACCEPTED,
        ("rejected", "extraction_cap_exceeded"),
    ]


def test_a_policy_arriving_after_movements_dated_on_or_after_its_effective_day_is_rejected() -> None:
    """Adopted on 20 May to take effect on 1 July, but booked only after an August movement."""
    ledger = new_ledger()
    feed(ledger, contribution(WUHU, amount_fen=1_000, occurred_at="2025-08-15T10:00:00+08:00"))
    late = adopt(anhui(extraction_rate_bp=300), "2025-07-01", occurred_at="2025-05-20T10:00:00+08:00")
    outcome = one(ledger, late)
    assert (outcome.status, outcome.reason) == ("rejected", "policy_retroactive")  # RULES rev 2, I4
    assert outcome.detail is not None and "2025-08-15" in outcome.detail
    book = ledger.policy_book()
    assert book is not None and len(book.timeline) == 1
    # taking effect after the latest movement is still possible
    on_time = adopt(anhui(extraction_rate_bp=300), "2025-08-16", occurred_at="2025-05-20T10:00:00+08:00")
    assert statuses(feed(ledger, on_time)) == [ACCEPTED]
