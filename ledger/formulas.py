"""The ledger's formulas, each in one home: pure functions on integer fen and basis points.

The aggregates call them to decide (X2, X4, P1) and the read side calls them to report
(the province summary, budget execution, the risk view), so a figure the dashboard shows
is the figure a decision used. Every division floors, as the rules' "at most" requires:
a cap is never rounded up into a fen the policy does not allow.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Basis points in a whole (100 %).
BP_PER_WHOLE = 10_000
#: Hundredths in a whole: months covered are reported to two decimals.
HUNDREDTHS_PER_WHOLE = 100


def share_fen(amount_fen: int, share_bp: int) -> int:
    """`share_bp` of `amount_fen`, rounded down to the fen."""
    return amount_fen * share_bp // BP_PER_WHOLE


# -- extraction (X2, X3, X4, P1) ---------------------------------------------------------


def extraction_cap_fen(base_fen: int, rate_bp: int) -> int:
    """X2: the most a city may extract in a year: `rate_bp` of its extraction base."""
    return share_fen(base_fen, rate_bp)


def adjustment_fund_ceiling_fen(province_income_fen: int, pause_ratio_bp: int) -> int:
    """X4: the balance at which a scheme's adjustment fund stops taking extractions."""
    return share_fen(province_income_fen, pause_ratio_bp)


def extraction_paused(adjustment_fund_fen: int, ceiling_fen: int) -> bool:
    """X4: extraction is paused once the adjustment fund holds its ceiling."""
    return adjustment_fund_fen >= ceiling_fen


def extraction_base_fen(
    opening_income_fen: int | None, closed_income_fen: int | None, collected_fen: int
) -> int:
    """X2/P1: a fund's collected income of the year before the one extracted for.

    `opening_income_fen`: the audited figure of the go-live opening, when the year
    extracted for is the go-live year (the ledger has no history of the year before);
    `closed_income_fen`: the figure the close of the year before fixed, if closed;
    `collected_fen`: the ledger's own total of that year's collected income (X3).
    The first of them that is known wins.
    """
    if opening_income_fen is not None:
        return opening_income_fen
    if closed_income_fen is not None:
        return closed_income_fen
    return collected_fen


def province_income_fen(closed_income_fen: int | None, city_bases_fen: Iterable[int]) -> int:
    """X4: the province's collected income of a year for one scheme.

    Fixed by the province's year close; else the sum of its cities' extraction bases
    (the adjustment fund's own opening speaks of its own income, not the province's).
    """
    if closed_income_fen is not None:
        return closed_income_fen
    return sum(city_bases_fen)


# -- budgets (B3) --------------------------------------------------------------------------


def budget_execution_bp(claims_paid_fen: int, budgeted_expenditure_fen: int) -> int | None:
    """Claims paid as a share of the approved expenditure budget, rounded down to the bp.

    None when nothing was budgeted for expenditure (no share to speak of).
    """
    if budgeted_expenditure_fen == 0:
        return None
    return claims_paid_fen * BP_PER_WHOLE // budgeted_expenditure_fen


def is_over_budget(execution_bp: int | None) -> bool:
    """B3's view: paid claims above the approved expenditure budget."""
    return execution_bp is not None and execution_bp > BP_PER_WHOLE


def percent_text(bp: int) -> str:
    """Basis points as a percentage with two decimals: 10_050 -> "100.50"."""
    return hundredths_text(bp)


def hundredths_text(hundredths: int) -> str:
    """A count of hundredths with two decimals: 1_234 -> "12.34"."""
    return f"{hundredths // HUNDREDTHS_PER_WHOLE}.{hundredths % HUNDREDTHS_PER_WHOLE:02d}"


# -- risk (B4) -----------------------------------------------------------------------------


def monthly_expenditure_fen(expenditure_fen: int, months: int) -> int:
    """B4: average expenditure per month over `months` (at least one), rounded down."""
    return expenditure_fen // max(1, months)


def months_covered_hundredths(balance_fen: int, monthly_expenditure_fen: int) -> int | None:
    """B4: months of expenditure the balance covers, in hundredths, rounded down.

    None when there is no expenditure: any balance covers it forever.
    """
    if monthly_expenditure_fen <= 0:
        return None
    return balance_fen * HUNDREDTHS_PER_WHOLE // monthly_expenditure_fen


def risk_level(covered_hundredths: int | None, low_months: int, high_months: int) -> str:
    """B4: where months covered stand against the policy's band.

    `critical` below half the band's low end, `low` below it, `high` above its high end,
    `ok` within it, and `no_expenditure` when nothing was spent.
    """
    if covered_hundredths is None:
        return "no_expenditure"
    if covered_hundredths < low_months * HUNDREDTHS_PER_WHOLE // 2:
        return "critical"
    if covered_hundredths < low_months * HUNDREDTHS_PER_WHOLE:
        return "low"
    if covered_hundredths > high_months * HUNDREDTHS_PER_WHOLE:
        return "high"
    return "ok"
