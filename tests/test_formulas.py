"""The ledger's formulas on literal boundary values: the figures the rules and the read side share."""

from __future__ import annotations

import pytest

from ledger import formulas

# -- X2: the extraction cap ------------------------------------------------------------


def test_extraction_cap_is_the_rate_of_the_base_rounded_down() -> None:
    assert formulas.extraction_cap_fen(1_000_000, 500) == 50_000
    assert formulas.extraction_cap_fen(1_000_001, 500) == 50_000  # 50,000.05 fen floors
    assert formulas.extraction_cap_fen(1_000_019, 500) == 50_000  # 50,000.95 fen floors
    assert formulas.extraction_cap_fen(1_000_020, 500) == 50_001


def test_extraction_cap_of_a_zero_base_or_rate_is_zero() -> None:
    assert formulas.extraction_cap_fen(0, 500) == 0
    assert formulas.extraction_cap_fen(1_000_000, 0) == 0
    assert formulas.extraction_cap_fen(19, 500) == 0  # 0.95 fen
    assert formulas.extraction_cap_fen(20, 500) == 1


def test_extraction_cap_at_the_whole_rate_is_the_base() -> None:
    assert formulas.extraction_cap_fen(1_234_567, 10_000) == 1_234_567


# -- X4: the adjustment fund's ceiling ------------------------------------------------


def test_ceiling_is_the_pause_ratio_of_the_province_income_rounded_down() -> None:
    assert formulas.adjustment_fund_ceiling_fen(10_000_000, 1_000) == 1_000_000
    assert formulas.adjustment_fund_ceiling_fen(10_000_009, 1_000) == 1_000_000  # .9 fen floors
    assert formulas.adjustment_fund_ceiling_fen(10_000_010, 1_000) == 1_000_001
    assert formulas.adjustment_fund_ceiling_fen(0, 1_000) == 0


def test_extraction_is_paused_at_the_ceiling_not_below_it() -> None:
    assert formulas.extraction_paused(999_999, 1_000_000) is False
    assert formulas.extraction_paused(1_000_000, 1_000_000) is True
    assert formulas.extraction_paused(1_000_001, 1_000_000) is True
    assert formulas.extraction_paused(0, 0) is True  # no income, no room


# -- X2/P1: the extraction base ------------------------------------------------------------


def test_extraction_base_prefers_the_go_live_openings_audited_figure() -> None:
    assert formulas.extraction_base_fen(7_000, 8_000, 9_000) == 7_000
    assert formulas.extraction_base_fen(0, 8_000, 9_000) == 0  # an audited zero is a figure


def test_extraction_base_else_takes_the_figure_the_year_close_fixed() -> None:
    assert formulas.extraction_base_fen(None, 8_000, 9_000) == 8_000
    assert formulas.extraction_base_fen(None, 0, 9_000) == 0


def test_extraction_base_else_is_the_collected_total() -> None:
    assert formulas.extraction_base_fen(None, None, 9_000) == 9_000
    assert formulas.extraction_base_fen(None, None, 0) == 0


def test_province_income_is_its_closed_figure_else_the_sum_of_its_cities_bases() -> None:
    assert formulas.province_income_fen(5_000, [1_000, 2_000]) == 5_000
    assert formulas.province_income_fen(0, [1_000, 2_000]) == 0
    assert formulas.province_income_fen(None, [1_000, 2_000]) == 3_000
    assert formulas.province_income_fen(None, []) == 0


# -- B3: budget execution -------------------------------------------------------------------


def test_budget_execution_is_claims_over_the_expenditure_budget_in_bp_rounded_down() -> None:
    assert formulas.budget_execution_bp(0, 1_000_000) == 0
    assert formulas.budget_execution_bp(999_999, 1_000_000) == 9_999  # 9,999.99 bp floors
    assert formulas.budget_execution_bp(1_000_000, 1_000_000) == 10_000
    assert formulas.budget_execution_bp(1_000_100, 1_000_000) == 10_001
    assert formulas.budget_execution_bp(1, 3) == 3_333


def test_budget_execution_without_budgeted_expenditure_is_none() -> None:
    assert formulas.budget_execution_bp(0, 0) is None
    assert formulas.budget_execution_bp(500, 0) is None


def test_over_budget_is_strictly_above_the_whole_budget() -> None:
    assert formulas.is_over_budget(None) is False
    assert formulas.is_over_budget(0) is False
    assert formulas.is_over_budget(10_000) is False
    assert formulas.is_over_budget(10_001) is True


@pytest.mark.parametrize(
    ("bp", "text"), [(0, "0.00"), (5, "0.05"), (99, "0.99"), (10_000, "100.00"), (12_345, "123.45")]
)
def test_percent_text_has_two_decimals(bp: int, text: str) -> None:
    assert formulas.percent_text(bp) == text


# -- B4: months covered and the risk level -----------------------------------------------


def test_monthly_expenditure_is_the_average_over_at_least_one_month() -> None:
    assert formulas.monthly_expenditure_fen(1_200, 12) == 100
    assert formulas.monthly_expenditure_fen(1_199, 12) == 99  # floors
    assert formulas.monthly_expenditure_fen(1_200, 0) == 1_200
    assert formulas.monthly_expenditure_fen(0, 12) == 0


def test_months_covered_is_balance_over_monthly_expenditure_in_hundredths() -> None:
    assert formulas.months_covered_hundredths(600, 100) == 600
    assert formulas.months_covered_hundredths(601, 100) == 601
    assert formulas.months_covered_hundredths(1_000, 3) == 33_333  # 333.333... months floors
    assert formulas.months_covered_hundredths(0, 100) == 0


def test_months_covered_with_zero_expenditure_is_none() -> None:
    assert formulas.months_covered_hundredths(1_000_000, 0) is None
    assert formulas.months_covered_hundredths(0, 0) is None


@pytest.mark.parametrize(
    ("covered", "level"),
    [
        (None, "no_expenditure"),
        (0, "critical"),
        (299, "critical"),  # below half of 6 months
        (300, "low"),
        (599, "low"),
        (600, "ok"),  # the band's ends are inside it
        (900, "ok"),
        (901, "high"),
    ],
)
def test_risk_level_against_a_band_of_six_to_nine_months(covered: int | None, level: str) -> None:
    assert formulas.risk_level(covered, 6, 9) == level


def test_risk_level_with_an_odd_low_end_halves_exactly() -> None:
    assert formulas.risk_level(349, 7, 9) == "critical"  # half of 7 months is 3.50
    assert formulas.risk_level(350, 7, 9) == "low"


@pytest.mark.parametrize(("hundredths", "text"), [(0, "0.00"), (7, "0.07"), (600, "6.00"), (33_333, "333.33")])
def test_hundredths_text_has_two_decimals(hundredths: int, text: str) -> None:
    assert formulas.hundredths_text(hundredths) == text
