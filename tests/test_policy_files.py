"""The packaged policy files (`ledger/policies/*.json`) against the seed figures of RULES.md.

Guangxi 2022 and Tianjin 2022 are loaded as seed policies of an in-memory ledger to check
the per-capita subsidy standards (I3); the Anhui file is checked for its cities, phases
and ratios (X1, X2, X4). Expected amounts are headcount x the seed's figure in fen.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from typing import Any

import pytest

from consumers.booking import record_batch
from consumers.inbound import Inbound
from ledger.application import Ledger, Outcome
from ledger.policy import load_packaged_policy, packaged_policy_names
from schemas.policy import Policy

HEADCOUNT = 1_000

#: Guangxi 2022, resident scheme, yuan a head (GX, RULES.md reference figures), in fen.
GX_TOTAL_FEN = 61_000  # 610 yuan
GX_CENTRAL_FEN = 48_800  # 488 yuan
GX_LOCAL_FEN = 12_200  # 122 yuan
GX_REGION_POOR_FEN, GX_COUNTY_POOR_FEN = 9_150, 3_050  # 91.5 / 30.5 in formerly poor counties
GX_REGION_OTHER_FEN, GX_COUNTY_OTHER_FEN = 6_100, 6_100  # 61 / 61 elsewhere

#: Tianjin 2022 subsidy grades (TJ), yuan a head in fen.
TJ_LOW_FEN, TJ_HIGH_FEN = 61_000, 110_000

ANHUI_CITIES = {
    "340100": "Hefei",
    "340200": "Wuhu",
    "340300": "Bengbu",
    "340400": "Huainan",
    "340500": "Ma'anshan",
    "340600": "Huaibei",
    "340700": "Tongling",
    "340800": "Anqing",
    "341000": "Huangshan",
    "341100": "Chuzhou",
    "341200": "Fuyang",
    "341300": "Suzhou",
    "341500": "Lu'an",
    "341600": "Bozhou",
    "341700": "Chizhou",
    "341800": "Xuancheng",
}


# --------------------------------------------------------------------------- helpers


def ledger_with(policy_name: str) -> Ledger:
    return Ledger(
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        seed_policy=load_packaged_policy(policy_name),
    )


def subsidy(
    province: str,
    city: str,
    level: str,
    amount_fen: int,
    headcount: int | None = HEADCOUNT,
    *,
    occurred_at: str = "2022-06-15T10:00:00+08:00",
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": "SubsidyDisbursed",
        "schema_version": 1,
        "occurred_at": occurred_at,
        "source": "test.finance",
        "province": province,
        "city": city,
        "scheme": "resident",
        "level": level,
        "amount_fen": amount_fen,
    }
    if headcount is not None:
        message["headcount"] = headcount
    return message


def guangxi_subsidy(level: str, amount_fen: int, **kw: Any) -> dict[str, Any]:
    return subsidy("450000", "450100", level, amount_fen, **kw)  # Nanning


def tianjin_subsidy(amount_fen: int, **kw: Any) -> dict[str, Any]:
    return subsidy("120000", "120101", "provincial", amount_fen, **kw)  # Heping district


def record(ledger: Ledger, message: dict[str, Any]) -> Outcome:
    (outcome,) = record_batch(ledger, [Inbound.parse(json.dumps(message).encode())])
    return outcome


def status(outcome: Outcome) -> tuple[str, str | None]:
    return outcome.status, outcome.reason


def per_capita(policy: Policy, year: int, level: str) -> list[int]:
    (standard,) = [
        s for s in policy.subsidy_standards if s.fiscal_year == year and s.level.value == level
    ]
    return standard.per_capita_fen


ACCEPTED = ("accepted", None)
POLICY_VIOLATION = ("rejected", "policy_violation")


# ==================================================================== packaged files


def test_three_policy_files_are_packaged() -> None:
    assert packaged_policy_names() == ["anhui", "guangxi-2022", "tianjin-2022"]


def test_the_default_seed_policy_is_anhui() -> None:
    ledger = Ledger(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    assert ledger.seed_policy == load_packaged_policy("anhui")
    assert ledger.seed_policy.province == "340000"


# ======================================================================= Guangxi 2022


def test_guangxi_2022_file_holds_the_seed_figures_a_head() -> None:
    gx = load_packaged_policy("guangxi-2022")
    assert gx.province == "450000"
    assert gx.effective_from == date(2022, 1, 1)
    assert per_capita(gx, 2022, "central") == [GX_CENTRAL_FEN]
    assert GX_REGION_POOR_FEN in per_capita(gx, 2022, "provincial")
    assert GX_REGION_OTHER_FEN in per_capita(gx, 2022, "provincial")
    assert GX_LOCAL_FEN in per_capita(gx, 2022, "provincial")  # region-run colleges' students
    assert GX_COUNTY_POOR_FEN in per_capita(gx, 2022, "county")
    assert GX_COUNTY_OTHER_FEN in per_capita(gx, 2022, "county")
    assert all(s.rounding_tolerance_fen == 1 for s in gx.subsidy_standards)
    assert {s.scheme.value for s in gx.subsidy_standards} == {"resident"}


def test_guangxi_2022_shares_add_up_to_610_yuan_a_head() -> None:
    """488 + 91.5 + 30.5 = 610 yuan in formerly poor counties; 488 + 61 + 61 elsewhere."""
    gx = load_packaged_policy("guangxi-2022")
    (central,) = per_capita(gx, 2022, "central")
    region, county = per_capita(gx, 2022, "provincial"), per_capita(gx, 2022, "county")

    poor_region, poor_county = region[0], county[0]
    assert central + poor_region + poor_county == GX_TOTAL_FEN
    assert (central, poor_region, poor_county) == (48_800, 9_150, 3_050)
    other_region, other_county = region[1], county[1]
    assert central + other_region + other_county == GX_TOTAL_FEN
    assert poor_region + poor_county == other_region + other_county == GX_LOCAL_FEN
    # the central share is 80 % for western regions (NAT)
    assert central * 10_000 // GX_TOTAL_FEN == 8_000


def test_guangxi_central_subsidy_of_488_yuan_a_head_is_accepted() -> None:
    ledger = ledger_with("guangxi-2022")
    amount = HEADCOUNT * GX_CENTRAL_FEN
    assert amount == 48_800_000
    assert status(record(ledger, guangxi_subsidy("central", amount))) == ACCEPTED
    fund = ledger.fund("city:450100:resident:pooling")
    assert fund is not None and fund.balance_fen == amount


@pytest.mark.parametrize(
    "fen_a_head", [GX_REGION_POOR_FEN, GX_REGION_OTHER_FEN, GX_LOCAL_FEN], ids=["91.5", "61", "122"]
)
def test_guangxi_region_subsidy_of_91_5_61_or_122_yuan_a_head_is_accepted(fen_a_head: int) -> None:
    ledger = ledger_with("guangxi-2022")
    message = guangxi_subsidy("provincial", HEADCOUNT * fen_a_head)
    assert status(record(ledger, message)) == ACCEPTED


@pytest.mark.parametrize(
    "fen_a_head", [GX_COUNTY_POOR_FEN, GX_COUNTY_OTHER_FEN], ids=["30.5", "61"]
)
def test_guangxi_county_subsidy_of_30_5_or_61_yuan_a_head_is_accepted(fen_a_head: int) -> None:
    ledger = ledger_with("guangxi-2022")
    assert status(record(ledger, guangxi_subsidy("county", HEADCOUNT * fen_a_head))) == ACCEPTED


def test_guangxi_all_levels_of_one_formerly_poor_county_add_up_to_610_yuan_a_head() -> None:
    ledger = ledger_with("guangxi-2022")
    parts = [
        ("central", GX_CENTRAL_FEN),
        ("provincial", GX_REGION_POOR_FEN),
        ("county", GX_COUNTY_POOR_FEN),
    ]
    for level, fen in parts:
        assert status(record(ledger, guangxi_subsidy(level, HEADCOUNT * fen))) == ACCEPTED
    fund = ledger.fund("city:450100:resident:pooling")
    assert fund is not None and fund.balance_fen == HEADCOUNT * GX_TOTAL_FEN


@pytest.mark.parametrize("off_by", [1, -1])
def test_guangxi_subsidy_within_one_fen_of_the_standard_is_accepted(off_by: int) -> None:
    ledger = ledger_with("guangxi-2022")
    message = guangxi_subsidy("central", HEADCOUNT * GX_CENTRAL_FEN + off_by)
    assert status(record(ledger, message)) == ACCEPTED


@pytest.mark.parametrize("off_by", [2, -2])
def test_guangxi_subsidy_two_fen_off_the_standard_is_rejected_policy_violation(off_by: int) -> None:
    ledger = ledger_with("guangxi-2022")
    outcome = record(ledger, guangxi_subsidy("central", HEADCOUNT * GX_CENTRAL_FEN + off_by))
    assert status(outcome) == POLICY_VIOLATION
    assert outcome.detail is not None and str(HEADCOUNT * GX_CENTRAL_FEN) in outcome.detail
    fund = ledger.fund("city:450100:resident:pooling")
    assert fund is None or fund.balance_fen == 0


def test_guangxi_central_subsidy_below_the_standard_is_rejected_policy_violation() -> None:
    ledger = ledger_with("guangxi-2022")
    outcome = record(ledger, guangxi_subsidy("central", 40_000_000))
    assert status(outcome) == POLICY_VIOLATION
    assert outcome.detail is not None
    assert str(HEADCOUNT * GX_CENTRAL_FEN) in outcome.detail


def test_guangxi_region_subsidy_at_the_central_rate_is_rejected_policy_violation() -> None:
    """Each finance level is checked against its own standard."""
    ledger = ledger_with("guangxi-2022")
    message = guangxi_subsidy("provincial", HEADCOUNT * GX_CENTRAL_FEN)
    assert status(record(ledger, message)) == POLICY_VIOLATION


def test_guangxi_subsidy_without_headcount_is_not_checked() -> None:
    ledger = ledger_with("guangxi-2022")
    assert status(record(ledger, guangxi_subsidy("central", 40_000_000, headcount=None))) == (
        ACCEPTED
    )


def test_guangxi_2022_standards_do_not_apply_to_2023() -> None:
    ledger = ledger_with("guangxi-2022")
    message = guangxi_subsidy("central", 40_000_000, occurred_at="2023-03-01T10:00:00+08:00")
    assert status(record(ledger, message)) == ACCEPTED


def test_guangxi_standards_apply_by_the_year_in_beijing() -> None:
    """2021-12-31T16:00Z is already 2022 in China Standard Time (M2)."""
    ledger = ledger_with("guangxi-2022")
    wrong = 40_000_000
    in_2022 = guangxi_subsidy("central", wrong, occurred_at="2021-12-31T16:00:00Z")
    assert status(record(ledger, in_2022)) == POLICY_VIOLATION


def test_guangxi_policy_knows_its_own_cities_only() -> None:
    gx = load_packaged_policy("guangxi-2022")
    assert len(gx.cities) == 14 and "450100" in gx.cities
    ledger = ledger_with("guangxi-2022")
    anhui_city = subsidy("450000", "340100", "central", HEADCOUNT * GX_CENTRAL_FEN)
    assert status(record(ledger, anhui_city)) == ("rejected", "unknown_city")


def test_guangxi_policy_has_no_adjustment_fund_phase() -> None:
    gx = load_packaged_policy("guangxi-2022")
    assert gx.adjustment_from == {}
    ledger = ledger_with("guangxi-2022")
    message = {
        "event_id": str(uuid.uuid4()),
        "type": "AdjustmentFundExtracted",
        "schema_version": 1,
        "occurred_at": "2022-06-15T10:00:00+08:00",
        "source": "test.finance",
        "province": "450000",
        "city": "450100",
        "scheme": "resident",
        "fiscal_year": 2022,
        "amount_fen": 1,
    }
    assert status(record(ledger, message)) == ("rejected", "phase_not_active")


# ======================================================================= Tianjin 2022


def test_tianjin_2022_file_holds_the_two_subsidy_grades_of_all_levels_together() -> None:
    """RULES revision 2: 610 / 1,100 yuan a head is the standard of all finance levels together."""
    tj = load_packaged_policy("tianjin-2022")
    assert tj.province == "120000"
    assert "120101" in tj.cities and len(tj.cities) == 16
    (total,) = tj.subsidy_totals
    assert (total.fiscal_year, total.per_capita_fen) == (2022, [TJ_LOW_FEN, TJ_HIGH_FEN])
    assert {level.value for level in total.levels} == {"central", "provincial", "city", "county"}
    assert tj.subsidy_standards == []


@pytest.mark.parametrize("fen_a_head", [TJ_LOW_FEN, TJ_HIGH_FEN], ids=["610", "1100"])
def test_tianjin_subsidy_of_610_or_1100_yuan_a_head_is_accepted(fen_a_head: int) -> None:
    ledger = ledger_with("tianjin-2022")
    assert status(record(ledger, tianjin_subsidy(HEADCOUNT * fen_a_head))) == ACCEPTED
    fund = ledger.fund("city:120101:resident:pooling")
    assert fund is not None and fund.balance_fen == HEADCOUNT * fen_a_head


def test_tianjin_municipal_payment_net_of_the_central_share_is_accepted_and_central_is_checked() -> None:
    ledger = ledger_with("tianjin-2022")
    central_fen, municipal_fen = 48_800, TJ_LOW_FEN - 48_800  # 488 + 122 yuan a head
    outcomes = [
        record(ledger, subsidy("120000", "120101", "central", HEADCOUNT * central_fen)),
        record(ledger, tianjin_subsidy(HEADCOUNT * municipal_fen)),
        record(ledger, subsidy("120000", "120101", "central", HEADCOUNT * TJ_HIGH_FEN + 1)),
        record(ledger, subsidy("120000", "120101", "central", HEADCOUNT * TJ_HIGH_FEN + 2)),
    ]
    assert [status(o) for o in outcomes] == [ACCEPTED, ACCEPTED, ACCEPTED, POLICY_VIOLATION]
    detail = outcomes[3].detail
    assert detail is not None and str(HEADCOUNT * TJ_HIGH_FEN + 1) in detail


def test_tianjin_subsidy_of_more_than_1100_yuan_a_head_from_one_level_is_rejected() -> None:
    ledger = ledger_with("tianjin-2022")
    assert status(record(ledger, tianjin_subsidy(HEADCOUNT * 80_000))) == ACCEPTED  # one level's part
    outcome = record(ledger, tianjin_subsidy(HEADCOUNT * 110_100))
    assert status(outcome) == POLICY_VIOLATION
    assert outcome.detail is not None and str(TJ_HIGH_FEN) in outcome.detail


# ============================================================================= Anhui


def test_anhui_policy_lists_the_16_cities_with_their_codes_and_the_province() -> None:
    ah = load_packaged_policy("anhui")
    assert ah.province == "340000"
    assert ah.cities == ANHUI_CITIES
    assert len(ah.cities) == 16


def test_anhui_phases_resident_from_2025_and_employee_from_2026() -> None:
    ah = load_packaged_policy("anhui")
    assert {s.value: d for s, d in ah.adjustment_from.items()} == {
        "resident": date(2025, 1, 1),
        "employee": date(2026, 1, 1),
    }


def test_anhui_extraction_at_5_percent_of_contributions_paused_at_10_percent() -> None:
    ah = load_packaged_policy("anhui")
    assert ah.extraction_rate_bp == 500
    assert ah.extraction_base.value == "contributions"
    assert ah.pause_ratio_bp == 1000
    assert {r.value: bp for r, bp in ah.gap_share_bp.items()} == {
        "policy_adjustment": 5000,
        "major_epidemic": 5000,
        "other_reasonable": 5000,
        "benefit_increase": 5000,
    }
    assert ah.require_budget is False
    assert [s.value for s in ah.subsidised_schemes] == ["resident"]


def test_anhui_has_no_subsidy_standard_so_any_headcount_is_accepted() -> None:
    ledger = ledger_with("anhui")
    message = subsidy(
        "340000", "340100", "central", 12_345, occurred_at="2025-03-01T10:00:00+08:00"
    )
    assert status(record(ledger, message)) == ACCEPTED
