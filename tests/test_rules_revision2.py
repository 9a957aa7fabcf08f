"""RULES.md revision 2, the amended rules enforced so far: each at its boundary, one side
accepted and the other rejected with its code (literals throughout).

M2 `fiscal_year_mismatch`, P1 `period_not_ended` and `earlier_year_open`, P2
`reversal_before_original`, B5 `budget_exists`, `no_approved_budget`, `budget_below_actual`.
"""

from __future__ import annotations

from tests.upstream import (
    BENGBU,
    HEFEI,
    balance,
    budget,
    claim,
    close,
    contribution,
    extraction,
    feed,
    new_ledger,
    opening,
    pooling,
    reversal,
    statuses,
)

ACCEPTED = ("accepted", None)


# ---------------------------------------------------------------- M2 fiscal_year_mismatch


def test_an_extraction_is_dated_in_the_fiscal_year_it_names() -> None:
    ledger = new_ledger()
    feed(ledger, opening(HEFEI, previous_year_income_fen=10_000_000),
         opening(None, balance_fen=0), contribution(amount_fen=1_000_000))
    last_instant_of_2025 = "2025-12-31T23:59:59+08:00"
    outcomes = feed(
        ledger,
        extraction(1_000, fiscal_year=2026, occurred_at=last_instant_of_2025),  # early, on 2025's base
        # late: 16:00 UTC on 31 December is 2026-01-01T00:00 in China Standard Time
        extraction(1_000, fiscal_year=2025, occurred_at="2025-12-31T16:00:00Z"),
        extraction(1_000, fiscal_year=2025, occurred_at=last_instant_of_2025),
    )
    assert statuses(outcomes) == [
        ("rejected", "fiscal_year_mismatch"), ("rejected", "fiscal_year_mismatch"), ACCEPTED,
    ]
    assert outcomes[0].detail is not None and "2026" in outcomes[0].detail and "2025" in outcomes[0].detail


def test_an_opening_is_dated_in_the_fiscal_year_it_opens() -> None:
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        opening(HEFEI, balance_fen=5_000, fiscal_year=2025, occurred_at="2024-12-31T23:59:59+08:00"),
        opening(HEFEI, balance_fen=5_000, fiscal_year=2025, occurred_at="2025-01-01T00:00:00+08:00"),
    )
    assert statuses(outcomes) == [("rejected", "fiscal_year_mismatch"), ACCEPTED]


# ----------------------------------------------------- P1 period_not_ended, earlier_year_open


def test_a_year_is_closed_once_it_has_ended_in_china_standard_time() -> None:
    ledger = new_ledger()
    feed(ledger, contribution(amount_fen=1_000))
    outcomes = feed(
        ledger,
        close(HEFEI, 2025, occurred_at="2025-12-31T23:59:59+08:00"),
        close(HEFEI, 2025, occurred_at="2025-06-30T10:00:00+08:00"),
        close(HEFEI, 2030, occurred_at="2026-01-05T10:00:00+08:00"),  # a year still to come
        close(HEFEI, 2025, occurred_at="2026-01-01T00:00:00+08:00"),
    )
    assert statuses(outcomes) == [
        ("rejected", "period_not_ended"), ("rejected", "period_not_ended"),
        ("rejected", "period_not_ended"), ACCEPTED,
    ]


def test_a_year_is_closed_only_after_the_funds_previous_year() -> None:
    ledger = new_ledger()
    feed(
        ledger,
        contribution(amount_fen=1_000, occurred_at="2024-06-01T10:00:00+08:00"),
        contribution(amount_fen=2_000, occurred_at="2025-06-01T10:00:00+08:00"),
        contribution(BENGBU, amount_fen=3_000, occurred_at="2025-06-01T10:00:00+08:00"),
    )
    outcomes = feed(
        ledger,
        close(HEFEI, 2025, occurred_at="2026-01-05T10:00:00+08:00"),  # 2024 still open
        close(BENGBU, 2025, occurred_at="2026-01-05T10:00:00+08:00"),  # no 2024 at all
        close(HEFEI, 2024, occurred_at="2026-01-05T10:00:00+08:00"),
        close(HEFEI, 2025, occurred_at="2026-01-05T10:00:00+08:00"),
    )
    assert statuses(outcomes) == [("rejected", "earlier_year_open"), ACCEPTED, ACCEPTED, ACCEPTED]


# ---------------------------------------------------------------- P2 reversal_before_original


def test_a_reversal_is_dated_no_earlier_than_its_original() -> None:
    ledger = new_ledger()
    original = contribution(amount_fen=4_000, occurred_at="2025-06-01T10:00:00+08:00")
    feed(ledger, original)
    outcomes = feed(
        ledger,
        reversal(original, occurred_at="2025-06-01T09:59:59+08:00"),
        reversal(original, occurred_at="2025-06-01T02:00:00Z"),  # the same instant, in UTC
    )
    assert statuses(outcomes) == [("rejected", "reversal_before_original"), ACCEPTED]


# ------------------------------------------- B5 budget_exists, no_approved_budget, below actual


def test_a_budget_is_approved_once_then_adjusted_never_below_what_was_paid() -> None:
    ledger = new_ledger()
    feed(ledger, contribution(amount_fen=2_000_000))
    assert statuses(feed(ledger, budget(1_000_000, 900_000, type_="BudgetAdjusted"))) == [
        ("rejected", "no_approved_budget")
    ]
    assert statuses(feed(ledger, budget(1_000_000, 900_000))) == [ACCEPTED]
    assert statuses(feed(ledger, budget(1_000_000, 950_000))) == [("rejected", "budget_exists")]
    assert statuses(feed(ledger, claim(amount_fen=600_000))) == [ACCEPTED]
    outcomes = feed(
        ledger,
        budget(1_000_000, 599_999, type_="BudgetAdjusted"),
        budget(1_000_000, 600_000, type_="BudgetAdjusted"),
    )
    assert statuses(outcomes) == [("rejected", "budget_below_actual"), ACCEPTED]


# ------------------------------------------------------------- I1 duplicates judged on meaning


def test_the_same_event_with_its_instant_in_utc_or_its_keys_reordered_is_a_duplicate() -> None:
    import json

    ledger = new_ledger()
    first = contribution(amount_fen=4_000, occurred_at="2025-06-01T10:00:00+08:00")
    in_utc = {**first, "occurred_at": "2025-06-01T02:00:00Z"}
    reordered = dict(reversed(list(first.items())))
    a_second_later = {**first, "occurred_at": "2025-06-01T10:00:01+08:00"}
    outcomes = feed(ledger, first, in_utc, reordered, a_second_later)
    assert [o.status for o in outcomes] == ["accepted", "duplicate", "duplicate", "rejected"]
    assert outcomes[3].reason == "event_id_conflict"
    assert json.dumps(reordered) != json.dumps(first)  # really other bytes


# ------------------------------------------------------- P3 a reversed opening frees its place


def test_a_reversed_opening_may_be_recorded_again_and_only_the_one_in_force_sets_the_base() -> None:
    ledger = new_ledger()
    wrong = opening(HEFEI, balance_fen=2_000_000, previous_year_income_fen=100_000_000)

    def corrected() -> dict[str, object]:  # a new fact each time: a new event_id (I1)
        return opening(HEFEI, balance_fen=2_000_000, previous_year_income_fen=1_000_000,
                       occurred_at="2025-02-01T10:00:00+08:00")

    feed(ledger, opening(None, balance_fen=0), wrong, contribution(amount_fen=10_000))
    assert statuses(feed(ledger, corrected())) == [("rejected", "opening_balance_exists")]
    outcomes = feed(
        ledger,
        reversal(wrong, occurred_at="2025-01-20T10:00:00+08:00"),
        extraction(50_001, occurred_at="2025-01-21T10:00:00+08:00"),  # no opening in force: base 0
        corrected(),
        extraction(50_001),  # 5 % of 1,000,000 is 50,000
        extraction(50_000),
    )
    assert statuses(outcomes) == [
        ACCEPTED, ("rejected", "extraction_cap_exceeded"), ACCEPTED,
        ("rejected", "extraction_cap_exceeded"), ACCEPTED,
    ]


# ------------------------------------------------------------- E7 treatment in another city


def test_a_claim_treated_in_another_city_is_paid_by_the_insured_citys_fund() -> None:
    from tests.upstream import WUHU, balance, pooling, trial_balance

    ledger = new_ledger()
    feed(ledger, contribution(amount_fen=100_000))
    elsewhere = {**claim(amount_fen=30_000), "institution_city": WUHU}
    at_home = claim(amount_fen=20_000)
    unknown = {**claim(amount_fen=1_000), "institution_city": "349900"}
    outcomes = feed(ledger, elsewhere, at_home, unknown)
    assert statuses(outcomes) == [ACCEPTED, ACCEPTED, ("rejected", "unknown_city")]
    assert balance(ledger, pooling(HEFEI)) == 100_000 - 30_000 - 20_000
    assert balance(ledger, pooling(WUHU)) == 0  # the insured's city pays, not the treating one
    trial = trial_balance(ledger)
    assert trial.balances_fen["external:institutions:340200"] == 30_000
    assert trial.balances_fen["external:institutions:340100"] == 20_000
    assert trial.total_fen == 0
    assert statuses(feed(ledger, reversal(elsewhere))) == [ACCEPTED]
    assert balance(ledger, pooling(HEFEI)) == 100_000 - 20_000


# ------------------------------------------------------------------- P4 recoveries


def recovery(amount_fen: int, claim_event_id: str | None = None, *, city: str = HEFEI,
             reason: str = "fraud", **fields: object) -> dict[str, object]:
    from tests.upstream import event

    extra = {"claim_event_id": claim_event_id} if claim_event_id is not None else {}
    return event("RecoveryReceived", city=city, scheme="resident", institution_id="hosp-1",
                 reason=reason, amount_fen=amount_fen,
                 **{"occurred_at": "2025-05-01T10:00:00+08:00", **extra, **fields})


def test_recoveries_against_a_claim_never_exceed_what_it_paid() -> None:
    from tests.upstream import WUHU, balance, pooling, trial_balance

    ledger = new_ledger()
    feed(ledger, contribution(amount_fen=100_000), contribution(WUHU, amount_fen=100_000))
    paid = claim(amount_fen=30_000)
    refused = contribution(amount_fen=-5)  # rejected (invalid_schema)
    reversed_claim = claim(amount_fen=1_000)
    feed(ledger, paid, refused, reversed_claim, reversal(reversed_claim))
    outcomes = feed(
        ledger,
        recovery(20_000, paid["event_id"]),
        recovery(10_001, paid["event_id"], reason="overpayment"),  # 20,000 + 10,001 > 30,000
        recovery(10_000, paid["event_id"], reason="audit_adjustment"),  # exactly what it paid
        recovery(1, paid["event_id"]),
        recovery(5_000),  # no claim named
        recovery(1, refused["event_id"]),
        recovery(1, reversed_claim["event_id"]),
        recovery(1, "00000000-0000-4000-8000-00000000abcd"),
        recovery(1, paid["event_id"], city=WUHU),  # not the fund that paid it
    )
    assert statuses(outcomes) == [
        ACCEPTED,
        ("rejected", "recovery_exceeds_claim"),
        ACCEPTED,
        ("rejected", "recovery_exceeds_claim"),
        ACCEPTED,
        ("rejected", "unknown_original"),
        ("rejected", "unknown_original"),
        ("rejected", "unknown_original"),
        ("rejected", "unknown_original"),
    ]
    assert balance(ledger, pooling(HEFEI)) == 100_000 - 30_000 + 20_000 + 10_000 + 5_000
    trial = trial_balance(ledger)
    assert trial.balances_fen["external:institutions:340100"] == 30_000 - 35_000
    assert trial.total_fen == 0


# ----------------------------------------- E8 medical assistance, the major-illness premium


def test_medical_assistance_pays_resident_contributions_only() -> None:
    from tests.upstream import balance, pooling

    ledger = new_ledger()
    outcomes = feed(
        ledger,
        contribution(amount_fen=35_000, payer_kind="medical_assistance"),
        contribution(scheme="employee", amount_fen=35_000, payer_kind="medical_assistance"),
    )
    assert statuses(outcomes) == [ACCEPTED, ("rejected", "earmark_violation")]
    assert balance(ledger, pooling(HEFEI)) == 35_000


def premium(amount_fen: int, *, scheme: str = "resident", fiscal_year: int = 2025,
            occurred_at: str = "2025-04-01T10:00:00+08:00") -> dict[str, object]:
    from tests.upstream import event

    return event("CriticalIllnessPremiumPaid", city=HEFEI, scheme=scheme, insurer_id="PICC-AH",
                 fiscal_year=fiscal_year, amount_fen=amount_fen, occurred_at=occurred_at)


def test_the_major_illness_premium_is_a_benefit_expenditure_within_the_budget() -> None:
    from tests.upstream import balance, pooling, trial_balance

    ledger = new_ledger()
    feed(ledger, contribution(amount_fen=1_000_000), contribution(scheme="employee", amount_fen=10_000),
         budget(1_000_000, 500_000))
    assert statuses(feed(ledger, claim(amount_fen=300_000))) == [ACCEPTED]
    outcomes = feed(
        ledger,
        premium(200_001),  # 300,000 + 200,001 > the 500,000 budgeted
        premium(1_000, scheme="employee"),
        premium(1_000, fiscal_year=2026),  # dated 2025
        premium(200_000),
        claim(amount_fen=1),  # the budget is spent: claims and premium together
    )
    assert statuses(outcomes) == [
        ("rejected", "over_budget"),
        ("rejected", "earmark_violation"),
        ("rejected", "fiscal_year_mismatch"),
        ACCEPTED,
        ("rejected", "over_budget"),
    ]
    assert balance(ledger, pooling(HEFEI)) == 1_000_000 - 300_000 - 200_000
    assert trial_balance(ledger).balances_fen["external:insurers:PICC-AH"] == 200_000


# ------------------------------------------------------------------ E1 in business time


def test_a_backdated_claim_is_paid_up_to_the_lowest_later_balance_and_not_one_fen_more() -> None:
    """1 Feb +10,000; 1 Mar -7,000 (3,000 left); 1 Jun +50,000. A claim dated 15 Feb arrives last:
    from 15 Feb on the fund is at its lowest on 1 March, 3,000 fen."""
    ledger = new_ledger()
    feed(
        ledger,
        contribution(amount_fen=10_000, occurred_at="2025-02-01T09:00:00+08:00"),
        claim(amount_fen=7_000, occurred_at="2025-03-01T09:00:00+08:00"),
        contribution(amount_fen=50_000, occurred_at="2025-06-01T09:00:00+08:00"),
    )
    outcomes = feed(
        ledger,
        claim(amount_fen=3_001, occurred_at="2025-02-15T09:00:00+08:00"),
        claim(amount_fen=3_000, occurred_at="2025-02-15T09:00:00+08:00"),
        claim(amount_fen=1, occurred_at="2025-02-20T09:00:00+08:00"),  # nothing left from 1 March on
        claim(amount_fen=50_000, occurred_at="2025-06-01T09:00:00+08:00"),  # all of June's money
    )
    assert statuses(outcomes) == [("rejected", "insufficient_funds"), ACCEPTED,
                                  ("rejected", "insufficient_funds"), ACCEPTED]
    assert outcomes[0].detail is not None and "3000" in outcomes[0].detail
    assert balance(ledger, pooling(HEFEI)) == 0


def test_a_claim_dated_before_any_money_arrived_is_refused_even_when_the_fund_holds_it_now() -> None:
    """The seeds' probe: a claim dated 1 February arriving after a contribution dated 1 June."""
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        contribution(amount_fen=100_000, occurred_at="2025-06-01T10:00:00+08:00"),
        claim(amount_fen=1, occurred_at="2025-02-01T10:00:00+08:00"),
        claim(amount_fen=100_000, occurred_at="2025-06-01T10:00:00+08:00"),  # the same instant: covered
    )
    assert statuses(outcomes) == [ACCEPTED, ("rejected", "insufficient_funds"), ACCEPTED]


def test_within_one_day_a_late_debit_is_checked_from_its_own_instant_on() -> None:
    """Same day: 09:00 +5,000, 12:00 -4,000, 18:00 +10,000. At 10:00 the fund can give 1,000
    (12:00 is its low); at 15:00, nothing; at 18:00, everything it holds."""
    ledger = new_ledger()
    feed(
        ledger,
        contribution(amount_fen=5_000, occurred_at="2025-04-01T09:00:00+08:00"),
        claim(amount_fen=4_000, occurred_at="2025-04-01T12:00:00+08:00"),
        contribution(amount_fen=10_000, occurred_at="2025-04-01T18:00:00+08:00"),
    )
    outcomes = feed(
        ledger,
        claim(amount_fen=1_001, occurred_at="2025-04-01T10:00:00+08:00"),
        claim(amount_fen=1_000, occurred_at="2025-04-01T10:00:00+08:00"),
        claim(amount_fen=1, occurred_at="2025-04-01T15:00:00+08:00"),
        claim(amount_fen=1, occurred_at="2025-04-01T08:59:59+08:00"),  # before the first money
        claim(amount_fen=10_000, occurred_at="2025-04-01T18:00:00+08:00"),
    )
    assert statuses(outcomes) == [("rejected", "insufficient_funds"), ACCEPTED, ("rejected", "insufficient_funds"),
                                  ("rejected", "insufficient_funds"), ACCEPTED]
    assert balance(ledger, pooling(HEFEI)) == 0


def test_a_reversal_of_money_already_spent_later_is_insufficient_funds() -> None:
    """Reversing a contribution at 1 May: the fund paid a claim on 1 June from it."""
    ledger = new_ledger()
    paid_in = contribution(amount_fen=8_000, occurred_at="2025-04-01T10:00:00+08:00")
    feed(
        ledger,
        paid_in,
        contribution(amount_fen=2_000, occurred_at="2025-04-02T10:00:00+08:00"),
        claim(amount_fen=9_000, occurred_at="2025-06-01T10:00:00+08:00"),
        contribution(amount_fen=20_000, occurred_at="2025-07-01T10:00:00+08:00"),
    )
    outcomes = feed(
        ledger,
        reversal(paid_in, occurred_at="2025-05-01T10:00:00+08:00"),  # 1,000 left on 1 June
        reversal(paid_in, occurred_at="2025-07-01T10:00:00+08:00"),  # 21,000 from 1 July on
    )
    assert statuses(outcomes) == [("rejected", "insufficient_funds"), ACCEPTED]
    assert balance(ledger, pooling(HEFEI)) == 13_000


# ------------------------------------------------------------------ E6 personal accounts

PERSONAL = "city:340100:employee:personal"
EMPLOYEE_POOLING = "city:340100:employee:pooling"


def test_an_employees_own_contribution_credits_the_personal_accounts_and_the_employers_the_pooling_fund() -> None:
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        contribution(HEFEI, "employee", 40_000, payer_kind="individual"),
        contribution(HEFEI, "employee", 100_000, payer_kind="employer"),
        contribution(HEFEI, "resident", 35_000, payer_kind="individual"),  # residents have no personal accounts
    )
    assert statuses(outcomes) == [ACCEPTED] * 3
    assert balance(ledger, PERSONAL) == 40_000
    assert balance(ledger, EMPLOYEE_POOLING) == 100_000
    assert balance(ledger, pooling(HEFEI)) == 35_000


def test_the_employee_extraction_cap_counts_employer_contributions_only() -> None:
    """2025: employers 100,000 fen, employees' own 40,000 fen; closed; the 2026 cap is 5 % of 100,000."""
    ledger = new_ledger()
    feed(
        ledger,
        contribution(HEFEI, "employee", 40_000, payer_kind="individual", occurred_at="2025-05-01T10:00:00+08:00"),
        contribution(HEFEI, "employee", 100_000, payer_kind="employer", occurred_at="2025-05-01T10:00:00+08:00"),
        close(HEFEI, 2025, scheme="employee", occurred_at="2026-01-05T10:00:00+08:00"),
    )
    at = "2026-01-10T10:00:00+08:00"
    outcomes = feed(
        ledger,
        extraction(5_001, scheme="employee", fiscal_year=2026, occurred_at=at),
        extraction(5_000, scheme="employee", fiscal_year=2026, occurred_at=at),
        extraction(1, city=HEFEI, scheme="employee", fiscal_year=2026, occurred_at=at),
    )
    assert statuses(outcomes) == [("rejected", "extraction_cap_exceeded"), ACCEPTED,
                                  ("rejected", "extraction_cap_exceeded")]
    assert balance(ledger, "province:employee:adjustment") == 5_000
    assert balance(ledger, PERSONAL) == 40_000  # never extracted from


def test_a_claim_paid_from_the_personal_accounts_debits_them_up_to_what_they_hold() -> None:
    ledger = new_ledger()
    feed(ledger, contribution(HEFEI, "employee", 3_000, payer_kind="individual"),
         contribution(HEFEI, "employee", 50_000, payer_kind="employer"))
    outcomes = feed(
        ledger,
        claim(HEFEI, "employee", 3_001, paid_from="personal_account"),
        claim(HEFEI, "employee", 3_000, paid_from="personal_account"),
        claim(HEFEI, "resident", 1, paid_from="personal_account"),
    )
    assert statuses(outcomes) == [("rejected", "insufficient_funds"), ACCEPTED, ("rejected", "earmark_violation")]
    assert balance(ledger, PERSONAL) == 0
    assert balance(ledger, EMPLOYEE_POOLING) == 50_000


def test_a_share_below_all_splits_the_contribution_and_its_reversal_undoes_both_parts() -> None:
    """personal_account_share_bp 7000: 10,001 fen -> 7,000 (floor) personal, 3,001 pooling."""
    from ledger.policy import load_packaged_policy

    policy = load_packaged_policy().model_copy(update={"personal_account_share_bp": 7000})
    ledger = new_ledger(policy)
    paid_in = contribution(HEFEI, "employee", 10_001, payer_kind="individual")
    assert statuses(feed(ledger, paid_in)) == [ACCEPTED]
    assert (balance(ledger, PERSONAL), balance(ledger, EMPLOYEE_POOLING)) == (7_000, 3_001)
    receipt = ledger.receipt(paid_in["event_id"])
    assert receipt is not None and [t["credit_account"] for t in receipt.transfers] == [PERSONAL, EMPLOYEE_POOLING]
    assert statuses(feed(ledger, reversal(paid_in, occurred_at="2025-03-02T10:00:00+08:00"))) == [ACCEPTED]
    assert (balance(ledger, PERSONAL), balance(ledger, EMPLOYEE_POOLING)) == (0, 0)


# --------------------------------------------------- I4 policy_retroactive, rejected decisions


def adopt_anhui(effective_from: str, occurred_at: str, **changes: object) -> dict[str, object]:
    from ledger.policy import load_packaged_policy
    from tests.upstream import event

    policy = load_packaged_policy().model_copy(update=changes)
    return event("PolicyAdopted", occurred_at=occurred_at, policy=policy.model_dump(mode="json"),
                 effective_from=effective_from)


def test_a_policy_cannot_take_effect_on_the_day_of_a_rejected_decision_nor_before() -> None:
    """Only a rejection happened on 1 June (a claim on an empty fund, and an overdrawn budget): the
    policy adopted in May may take effect on 2 June, not on 1 June."""
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        claim(amount_fen=1, occurred_at="2025-06-01T10:00:00+08:00"),
        budget(100, 101, occurred_at="2025-06-01T23:59:59+08:00"),
    )
    assert statuses(outcomes) == [("rejected", "insufficient_funds"), ("rejected", "deficit_budget")]
    outcomes = feed(
        ledger,
        adopt_anhui("2025-06-01", "2025-05-20T10:00:00+08:00", extraction_rate_bp=300),
        adopt_anhui("2025-06-02", "2025-05-20T10:00:00+08:00", extraction_rate_bp=300),
    )
    assert statuses(outcomes) == [("rejected", "policy_retroactive"), ACCEPTED]
    assert outcomes[0].detail is not None and "2025-06-01" in outcomes[0].detail


def test_a_decision_earlier_in_the_same_batch_counts_too() -> None:
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        claim(amount_fen=1, occurred_at="2025-07-03T10:00:00+08:00"),  # rejected, same batch
        adopt_anhui("2025-07-03", "2025-05-20T10:00:00+08:00", extraction_rate_bp=300),
        adopt_anhui("2025-07-04", "2025-05-20T10:00:00+08:00", extraction_rate_bp=300),
    )
    assert statuses(outcomes) == [("rejected", "insufficient_funds"), ("rejected", "policy_retroactive"), ACCEPTED]


def test_a_reversed_recovery_gives_its_amount_back_to_what_may_be_recovered() -> None:
    """A claim of 30,000 fen, 30,000 recovered, then 12,000 of it reversed: 12,000 may be recovered again."""
    ledger = new_ledger()
    feed(ledger, contribution(amount_fen=100_000))
    paid = claim(amount_fen=30_000)
    first, second = recovery(18_000, paid["event_id"]), recovery(12_000, paid["event_id"])
    feed(ledger, paid, first, second)
    outcomes = feed(
        ledger,
        recovery(1, paid["event_id"]),
        reversal(second, occurred_at="2025-05-02T10:00:00+08:00"),
        recovery(12_001, paid["event_id"], occurred_at="2025-05-03T10:00:00+08:00"),
        recovery(12_000, paid["event_id"], occurred_at="2025-05-03T10:00:00+08:00"),
    )
    assert statuses(outcomes) == [("rejected", "recovery_exceeds_claim"), ACCEPTED,
                                  ("rejected", "recovery_exceeds_claim"), ACCEPTED]
    receipt = ledger.receipt(paid["event_id"])
    assert receipt is not None and receipt.recovered_fen == 30_000
    assert balance(ledger, pooling(HEFEI)) == 100_000
