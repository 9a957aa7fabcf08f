"""The ledger's booking rules (RULES.md M2, M3, E1-E3, E5, I1, I2, P3), on the in-memory store.

Each test feeds upstream JSON messages through `Ledger.record_batch` and checks the
outcome, the receipts, the funds and the auditor's trial balance. Money is integer fen.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ledger import accounts
from ledger.aggregates import Fund
from ledger.errors import Reason, Rejected
from ledger.movements import Transfer
from tests.upstream import (
    BENGBU,
    HEFEI,
    OCCURRED_AT,
    WUHU,
    balance,
    claim,
    contribution,
    feed,
    interest,
    new_ledger,
    pooling,
    statuses,
    subsidy,
    trial_balance,
)
from tests.upstream import opening as _opening

# --------------------------------------------------------------------------- helpers


def opening(
    scheme: str = "resident", balance_fen: int = 50_000, city: str | None = None
) -> dict[str, Any]:
    """An opening balance dated OCCURRED_AT, like the other messages here (not on go-live day)."""
    return _opening(city, scheme, balance_fen, occurred_at=OCCURRED_AT)


ACCEPTED = ("accepted", None)


# ------------------------------------------------------------------ M2 fiscal year


@pytest.mark.parametrize(
    ("occurred_at", "fiscal_year"),
    [
        ("2024-12-31T16:00:00Z", 2025),  # 2025-01-01 00:00 in Beijing
        ("2024-12-31T15:59:59Z", 2024),  # 2024-12-31 23:59:59 in Beijing
        ("2025-01-01T00:00:00+08:00", 2025),
        ("2024-12-31T23:59:59+08:00", 2024),
        ("2025-01-01T00:30:00+09:00", 2024),  # Tokyo's new year is still 2024 in Beijing
        ("2024-12-31T12:00:00-05:00", 2025),  # New York's 31 Dec noon is 1 Jan in Beijing
    ],
)
def test_fiscal_year_is_the_calendar_year_of_occurred_at_in_china_standard_time(
    occurred_at: str, fiscal_year: int
) -> None:
    ledger = new_ledger()
    message = contribution(amount_fen=1_234, occurred_at=occurred_at)

    assert statuses(feed(ledger, message)) == [ACCEPTED]

    receipt = ledger.receipt(message["event_id"])
    assert receipt is not None and receipt.transfer is not None
    assert receipt.transfer["fiscal_year"] == fiscal_year
    fund = ledger.fund(pooling())
    assert fund is not None
    assert fund.totals_fen == {fiscal_year: {"contribution.individual": 1_234}}


def test_event_at_2024_12_31T16_00Z_is_booked_in_fiscal_2025() -> None:
    ledger = new_ledger()
    message = claim(amount_fen=1)
    message["occurred_at"] = "2024-12-31T16:00:00Z"
    feed(ledger, contribution(amount_fen=5, occurred_at="2024-12-31T15:00:00Z"), message)

    fund = ledger.fund(pooling())
    assert fund is not None
    assert fund.total_fen(2024, "contribution.individual") == 5
    assert fund.total_fen(2025, "claim.inpatient") == 1
    assert fund.total_fen(2024, "claim.inpatient") == 0


# --------------------------------------------------------------- M3 double entry


def test_trial_balance_sums_to_zero_and_each_account_balance_is_what_its_inputs_imply() -> None:
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        opening(city=HEFEI, scheme="resident", balance_fen=70_000),
        opening(scheme="resident", balance_fen=9_000),  # province adjustment fund
        contribution(HEFEI, "resident", 30_000, payer_kind="individual"),
        contribution(HEFEI, "employee", 40_000, payer_kind="employer"),
        contribution(WUHU, "employee", 25_000, payer_kind="individual"),
        subsidy(HEFEI, "resident", 11_000, level="central"),
        subsidy(WUHU, "resident", 7_000, level="provincial"),
    )
    outcomes += feed(
        ledger,
        claim(HEFEI, "resident", 60_000),
        claim(HEFEI, "employee", 15_000),
        claim(WUHU, "resident", 2_000),
        interest("resident", 300, city=HEFEI),
        interest("employee", 55),  # province adjustment fund of the employee scheme
        claim(WUHU, "employee", 99_999),  # rejected: Wuhu's employee pooling fund holds nothing
    )
    assert [o.status for o in outcomes] == ["accepted"] * 12 + ["rejected"]

    expected = {
        pooling(HEFEI, "resident"): 70_000 + 30_000 + 11_000 - 60_000 + 300,
        pooling(HEFEI, "employee"): 40_000 - 15_000,
        "city:340200:employee:personal": 25_000,  # an employee's own contribution (E6)
        pooling(WUHU, "resident"): 7_000 - 2_000,
        "province:resident:adjustment": 9_000,
        "province:employee:adjustment": 55,
        "equity:opening": -(70_000 + 9_000),
        "external:contributors:340100:resident:individual": -30_000,
        "external:contributors:340100:employee:employer": -40_000,
        "external:contributors:340200:employee:individual": -25_000,
        "external:finance:central": -11_000,
        "external:finance:provincial": -7_000,
        "external:institutions:340100": 60_000 + 15_000,
        "external:institutions:340200": 2_000,
        "external:interest": -(300 + 55),
    }
    tb = trial_balance(ledger)
    assert tb.total_fen == 0
    assert {a: b for a, b in tb.balances_fen.items() if b != 0} == expected
    assert tb.transfer_count == 12
    for account, fen in expected.items():
        if accounts.is_fund(account):
            assert balance(ledger, account) == fen, account


def test_every_accepted_transfer_debits_and_credits_the_same_amount() -> None:
    ledger = new_ledger()
    messages = [contribution(amount_fen=500), claim(amount_fen=200), interest(amount_fen=7)]
    feed(ledger, *messages)
    for m in messages:
        receipt = ledger.receipt(m["event_id"])
        assert receipt is not None and receipt.transfer is not None
        t = receipt.transfer
        assert t["debit_account"] != t["credit_account"]
        assert t["amount_fen"] == m["amount_fen"]
        assert isinstance(t["amount_fen"], int)
    assert trial_balance(ledger).total_fen == 0


# ------------------------------------------------------ E1 funds never go negative


def test_claim_above_fund_balance_is_rejected_insufficient_funds() -> None:
    ledger = new_ledger()
    feed(ledger, contribution(amount_fen=1_000))
    before = dict(trial_balance(ledger).balances_fen)
    too_big = claim(amount_fen=1_001)

    assert statuses(feed(ledger, too_big)) == [("rejected", "insufficient_funds")]

    assert balance(ledger, pooling()) == 1_000
    receipt = ledger.receipt(too_big["event_id"])
    assert receipt is not None
    assert receipt.status == "rejected"
    assert receipt.reason == "insufficient_funds"
    assert receipt.transfer is None
    assert dict(trial_balance(ledger).balances_fen) == before


def test_claim_equal_to_fund_balance_is_accepted_and_empties_the_fund() -> None:
    ledger = new_ledger()
    assert statuses(feed(ledger, contribution(amount_fen=1_000), claim(amount_fen=1_000))) == [
        ACCEPTED,
        ACCEPTED,
    ]
    assert balance(ledger, pooling()) == 0


def test_claim_on_a_fund_that_never_received_money_is_rejected_insufficient_funds() -> None:
    ledger = new_ledger()
    assert statuses(feed(ledger, claim(amount_fen=1))) == [("rejected", "insufficient_funds")]
    assert balance(ledger, pooling()) == 0
    assert trial_balance(ledger).transfer_count == 0


def test_claim_is_rejected_when_only_another_city_or_scheme_holds_the_money() -> None:
    ledger = new_ledger()
    feed(ledger, contribution(HEFEI, "resident", 100_000))
    outcomes = feed(ledger, claim(HEFEI, "employee", 10), claim(WUHU, "resident", 10))
    assert statuses(outcomes) == [("rejected", "insufficient_funds")] * 2
    assert balance(ledger, pooling(HEFEI, "resident")) == 100_000
    assert balance(ledger, pooling(HEFEI, "employee")) == 0
    assert balance(ledger, pooling(WUHU, "resident")) == 0


def test_claims_in_one_batch_see_the_bookings_made_earlier_in_that_batch() -> None:
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        contribution(amount_fen=1_000),
        claim(amount_fen=600),
        claim(amount_fen=600),
        claim(amount_fen=400),
    )
    assert statuses(outcomes) == [ACCEPTED, ACCEPTED, ("rejected", "insufficient_funds"), ACCEPTED]
    assert balance(ledger, pooling()) == 0


# ---------------------------------------------------------- E2/E3 chart of accounts


def edge_violation(debit: str, credit: str, *, reversal: bool = False) -> str | None:
    """Why `Transfer.check_edge_allowed` refuses money from `debit` to `credit`, or None."""
    transfer = Transfer(
        event_id="e", kind="test", debit_account=debit, credit_account=credit, amount_fen=1,
        category="test", fiscal_year=2025, occurred_at="2025-03-01T10:00:00+08:00",
        reversal_of="original" if reversal else None,
    )
    try:
        transfer.check_edge_allowed()
    except Rejected as rejection:
        assert (rejection.reason, rejection.rule) == (Reason.earmark_violation, "E3")
        return rejection.detail
    return None


@pytest.mark.parametrize(
    ("debit", "credit"),
    [
        ("external:contributors:340100:resident:individual", "city:340100:resident:pooling"),
        ("external:contributors:340100:employee:employer", "city:340100:employee:pooling"),
        ("external:finance:central", "city:340200:resident:pooling"),
        ("city:340100:resident:pooling", "external:institutions:340100"),
        ("external:interest", "city:340100:employee:pooling"),
        ("external:interest", "province:resident:adjustment"),
        ("equity:opening", "city:340300:employee:pooling"),
        ("equity:opening", "province:employee:adjustment"),
        ("city:340100:resident:pooling", "province:resident:adjustment"),
        ("province:employee:adjustment", "city:340200:employee:pooling"),
    ],
)
def test_edge_violation_allows_the_listed_edges_within_one_scheme_and_city(
    debit: str, credit: str
) -> None:
    assert edge_violation(debit, credit) is None


def test_only_a_reversal_may_take_an_edge_backwards() -> None:
    """E3: no fund pays into a fiscal budget, except to return a subsidy booked by mistake (P2)."""
    city, finance = "city:340100:resident:pooling", "external:finance:central"
    assert edge_violation(city, finance) is not None
    assert edge_violation(city, finance, reversal=True) is None
    assert edge_violation(finance, city, reversal=True) is not None
    other_city = "city:340200:resident:pooling"
    assert edge_violation(city, other_city, reversal=True) is not None
    back = ("city:340100:resident:pooling", "external:contributors:340100:resident:individual")
    assert edge_violation(*back) is not None
    assert edge_violation(*back, reversal=True) is None


@pytest.mark.parametrize(
    ("debit", "credit"),
    [
        ("external:contributors:340100:employee:employer", "city:340100:resident:pooling"),
        ("city:340100:employee:pooling", "province:resident:adjustment"),
        ("province:resident:adjustment", "city:340100:employee:pooling"),
        ("city:340100:resident:pooling", "city:340100:employee:pooling"),
    ],
)
def test_edge_violation_refuses_movements_across_schemes(debit: str, credit: str) -> None:
    assert edge_violation(debit, credit) is not None


@pytest.mark.parametrize(
    ("debit", "credit"),
    [
        ("external:contributors:340100:resident:individual", "city:340200:resident:pooling"),
        ("city:340100:resident:pooling", "city:340200:resident:pooling"),  # no city pays another
    ],
)
def test_edge_violation_refuses_movements_across_cities(debit: str, credit: str) -> None:
    assert edge_violation(debit, credit) is not None


def test_a_city_fund_pays_the_institutions_of_another_city_for_treatment_there() -> None:
    """RULES revision 2, E7 (one-stop settlement): not one city paying another."""
    assert edge_violation("city:340100:resident:pooling", "external:institutions:340200") is None


@pytest.mark.parametrize(
    ("debit", "credit"),
    [
        ("external:contributors:340100:resident:individual", "external:institutions:340100"),
        ("external:finance:central", "province:resident:adjustment"),
        ("external:contributors:340100:resident:individual", "province:resident:adjustment"),
        ("province:resident:adjustment", "external:institutions:340100"),
        ("external:interest", "external:institutions:340100"),
        ("equity:opening", "external:institutions:340100"),
        ("province:resident:adjustment", "province:resident:adjustment"),
    ],
)
def test_edge_violation_refuses_edges_not_in_the_chart(debit: str, credit: str) -> None:
    assert edge_violation(debit, credit) is not None


def test_account_names_outside_the_chart_cannot_be_parsed() -> None:
    with pytest.raises(ValueError, match="not an account of the chart"):
        accounts.AccountName.parse("city:340100:resident")
    with pytest.raises(ValueError, match="not an account of the chart"):
        edge_violation("bank:340100", "city:340100:resident:pooling")


# ------------------------------------------------------------- E5 subsidy earmark


def test_subsidy_to_the_employee_scheme_is_rejected_earmark_violation() -> None:
    ledger = new_ledger()
    message = subsidy(HEFEI, "employee", 5_000)

    assert statuses(feed(ledger, message)) == [("rejected", "earmark_violation")]

    assert balance(ledger, pooling(HEFEI, "employee")) == 0
    receipt = ledger.receipt(message["event_id"])
    assert receipt is not None and receipt.transfer is None
    assert trial_balance(ledger).transfer_count == 0


def test_subsidy_to_the_resident_scheme_is_accepted() -> None:
    ledger = new_ledger()
    assert statuses(feed(ledger, subsidy(HEFEI, "resident", 5_000, level="county"))) == [ACCEPTED]
    assert balance(ledger, pooling(HEFEI, "resident")) == 5_000


# ------------------------------------------------------------------ I1 idempotency


def test_same_event_twice_in_one_batch_is_duplicate_and_booked_once() -> None:
    ledger = new_ledger()
    message = contribution(amount_fen=700)
    assert statuses(feed(ledger, message, message)) == [ACCEPTED, ("duplicate", None)]
    assert balance(ledger, pooling()) == 700
    assert trial_balance(ledger).transfer_count == 1


def test_same_event_in_two_batches_is_duplicate_and_booked_once() -> None:
    ledger = new_ledger()
    message = contribution(amount_fen=700)
    assert statuses(feed(ledger, message)) == [ACCEPTED]
    assert statuses(feed(ledger, message)) == [("duplicate", None)]
    assert balance(ledger, pooling()) == 700
    assert trial_balance(ledger).transfer_count == 1


def test_same_event_with_its_json_keys_reordered_is_still_a_duplicate() -> None:
    ledger = new_ledger()
    message = contribution(amount_fen=700)
    reordered = json.dumps(dict(reversed(list(message.items()))), indent=2).encode()
    assert statuses(feed(ledger, message)) == [ACCEPTED]
    assert statuses(feed(ledger, reordered)) == [("duplicate", None)]
    assert balance(ledger, pooling()) == 700


def test_redelivered_rejected_event_is_duplicate_and_not_decided_again() -> None:
    ledger = new_ledger()
    too_big = claim(amount_fen=500)
    assert statuses(feed(ledger, too_big)) == [("rejected", "insufficient_funds")]
    feed(ledger, contribution(amount_fen=1_000))
    assert statuses(feed(ledger, too_big)) == [("duplicate", None)]
    assert balance(ledger, pooling()) == 1_000


@pytest.mark.parametrize("same_batch", [True, False], ids=["one-batch", "two-batches"])
def test_same_event_id_with_another_payload_is_rejected_event_id_conflict(
    same_batch: bool,
) -> None:
    ledger = new_ledger()
    first = contribution(amount_fen=700)
    second = {**first, "amount_fen": 900}
    if same_batch:
        outcomes = feed(ledger, first, second)
    else:
        outcomes = feed(ledger, first) + feed(ledger, second)

    assert statuses(outcomes) == [ACCEPTED, ("rejected", "event_id_conflict")]
    # The first booking stands.
    assert balance(ledger, pooling()) == 700
    receipt = ledger.receipt(first["event_id"])
    assert receipt is not None
    assert receipt.status == "accepted"
    assert receipt.transfer is not None and receipt.transfer["amount_fen"] == 700
    assert receipt.payload is not None and receipt.payload["amount_fen"] == 700
    tb = trial_balance(ledger)
    assert tb.transfer_count == 1 and tb.total_fen == 0
    # Re-delivering the original is still just a duplicate.
    assert statuses(feed(ledger, first)) == [("duplicate", None)]
    assert balance(ledger, pooling()) == 700


def test_same_event_id_reused_for_another_city_does_not_book_into_that_city() -> None:
    ledger = new_ledger()
    first = contribution(HEFEI, amount_fen=700)
    second = {**first, "city": WUHU}
    assert statuses(feed(ledger, first) + feed(ledger, second)) == [
        ACCEPTED,
        ("rejected", "event_id_conflict"),
    ]
    assert balance(ledger, pooling(HEFEI)) == 700
    assert balance(ledger, pooling(WUHU)) == 0


# ---------------------------------------------------------------- I2 input checks


def test_unknown_city_is_rejected_unknown_city() -> None:
    ledger = new_ledger()
    message = contribution("349900", amount_fen=700)
    assert statuses(feed(ledger, message)) == [("rejected", "unknown_city")]
    assert balance(ledger, pooling("349900")) == 0
    assert trial_balance(ledger).transfer_count == 0


@pytest.mark.parametrize(
    "message",
    [
        {**contribution(HEFEI), "province": "350000"},
        {**interest("resident"), "province": "110000"},  # no city: the province alone is wrong
        {**opening("resident"), "province": "350000"},
    ],
    ids=["contribution", "province-interest", "province-opening"],
)
def test_wrong_province_is_rejected_unknown_city(message: dict[str, Any]) -> None:
    ledger = new_ledger()
    assert statuses(feed(ledger, message)) == [("rejected", "unknown_city")]
    assert trial_balance(ledger).transfer_count == 0


@pytest.mark.parametrize("payload", [b"not json", b'{"event_id": ', b"\xff\xfe\x00", b""], ids=repr)
def test_non_json_is_rejected_invalid_json(payload: bytes) -> None:
    ledger = new_ledger()
    assert statuses(feed(ledger, payload)) == [("rejected", "invalid_json")]


def _without(message: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != key}


@pytest.mark.parametrize(
    "message",
    [
        {**contribution(), "amount_fen": 1000.0},
        {**contribution(), "amount_fen": 1000.5},
        {**contribution(), "amount_fen": "1000"},
        {**contribution(), "amount_fen": 0},
        {**contribution(), "amount_fen": -5},
        {**contribution(), "amount_fen": True},
        {**claim(), "eligible_fen": 10.0, "amount_fen": 10.0},
        _without(contribution(), "amount_fen"),
        _without(contribution(), "city"),
        _without(claim(), "claim_id"),
        _without(contribution(), "occurred_at"),
        {**contribution(), "schema_version": 2},
        {**contribution(), "scheme": "pension"},
        {**contribution(), "unexpected": 1},
        {**opening(), "balance_fen": 1.0},
        [1, 2, 3],
    ],
    ids=[
        "float",
        "fractional",
        "string",
        "zero",
        "negative",
        "bool",
        "float-claim",
        "missing-amount",
        "missing-city",
        "missing-claim-id",
        "missing-occurred-at",
        "schema-version",
        "unknown-scheme",
        "extra-field",
        "float-opening",
        "not-an-object",
    ],
)
def test_float_amount_or_missing_field_is_rejected_invalid_schema(message: Any) -> None:
    ledger = new_ledger()
    assert statuses(feed(ledger, json.dumps(message).encode())) == [("rejected", "invalid_schema")]
    assert trial_balance(ledger).transfer_count == 0


def test_rejected_messages_do_not_stop_the_next_ones_in_the_batch_from_being_booked() -> None:
    ledger = new_ledger()
    outcomes = feed(
        ledger,
        contribution(amount_fen=100),
        b"not json",
        {**contribution(), "amount_fen": 5.0},
        contribution("349900", amount_fen=100),
        {**contribution(), "province": "350000"},
        subsidy(scheme="employee"),
        claim(amount_fen=1_000_000),
        contribution(amount_fen=200),
        claim(amount_fen=250),
    )
    assert statuses(outcomes) == [
        ACCEPTED,
        ("rejected", "invalid_json"),
        ("rejected", "invalid_schema"),
        ("rejected", "unknown_city"),
        ("rejected", "unknown_city"),
        ("rejected", "earmark_violation"),
        ("rejected", "insufficient_funds"),
        ACCEPTED,
        ACCEPTED,
    ]
    assert balance(ledger, pooling()) == 50
    assert trial_balance(ledger).total_fen == 0


# ------------------------------------------------------------ P3 opening balances


def test_opening_balance_is_accepted_once_per_fund() -> None:
    ledger = new_ledger()
    first, second = opening(city=HEFEI, balance_fen=8_000), opening(city=HEFEI, balance_fen=9_000)
    assert statuses(feed(ledger, first)) == [ACCEPTED]
    assert statuses(feed(ledger, second)) == [("rejected", "opening_balance_exists")]
    fund = ledger.fund(pooling())
    assert fund is not None
    assert fund.balance_fen == 8_000
    assert fund.opening == {
        "balance_fen": 8_000,
        "previous_year_income_fen": 0,
        "fiscal_year": 2025,
    }


def test_second_opening_balance_in_the_same_batch_is_rejected_opening_balance_exists() -> None:
    ledger = new_ledger()
    outcomes = feed(
        ledger, opening(city=HEFEI, balance_fen=8_000), opening(city=HEFEI, balance_fen=1)
    )
    assert statuses(outcomes) == [ACCEPTED, ("rejected", "opening_balance_exists")]
    assert balance(ledger, pooling()) == 8_000


def test_zero_opening_balance_still_counts_as_the_opening() -> None:
    ledger = new_ledger()
    outcomes = feed(ledger, opening(city=HEFEI, balance_fen=0), opening(city=HEFEI, balance_fen=5))
    assert statuses(outcomes) == [ACCEPTED, ("rejected", "opening_balance_exists")]
    assert balance(ledger, pooling()) == 0


@pytest.mark.parametrize(
    "earlier",
    [
        lambda: contribution(HEFEI, "resident", 10),
        lambda: subsidy(HEFEI, "resident", 10),
        lambda: interest("resident", 10, city=HEFEI),
    ],
    ids=["contribution", "subsidy", "interest"],
)
def test_opening_balance_after_another_movement_of_the_fund_is_rejected_opening_balance_exists(
    earlier: Any,
) -> None:
    ledger = new_ledger()
    feed(ledger, earlier())
    late = opening(city=HEFEI, balance_fen=8_000)
    assert statuses(feed(ledger, late)) == [("rejected", "opening_balance_exists")]
    assert balance(ledger, pooling()) == 10
    receipt = ledger.receipt(late["event_id"])
    assert receipt is not None and receipt.transfer is None


def test_opening_balance_after_a_movement_in_the_same_batch_is_rejected() -> None:
    ledger = new_ledger()
    outcomes = feed(ledger, contribution(amount_fen=10), opening(city=HEFEI, balance_fen=8_000))
    assert statuses(outcomes) == [ACCEPTED, ("rejected", "opening_balance_exists")]
    assert balance(ledger, pooling()) == 10


def test_opening_balance_is_still_accepted_after_only_rejected_movements() -> None:
    ledger = new_ledger()
    feed(ledger, claim(amount_fen=5), subsidy(HEFEI, "employee"))
    assert statuses(feed(ledger, opening(city=HEFEI, balance_fen=8_000))) == [ACCEPTED]
    assert statuses(feed(ledger, opening("employee", city=HEFEI, balance_fen=3))) == [ACCEPTED]
    assert balance(ledger, pooling()) == 8_000
    assert balance(ledger, pooling(HEFEI, "employee")) == 3


def test_opening_balance_is_per_fund_not_per_city_or_scheme() -> None:
    ledger = new_ledger()
    feed(ledger, contribution(HEFEI, "employee", 10), contribution(WUHU, "resident", 10))
    outcomes = feed(
        ledger,
        opening("resident", 100, city=HEFEI),
        opening("employee", 200, city=WUHU),
        opening("resident", 300),
        opening("employee", 400),
    )
    assert statuses(outcomes) == [ACCEPTED] * 4
    assert balance(ledger, pooling(HEFEI, "resident")) == 100
    assert balance(ledger, pooling(WUHU, "employee")) == 200
    assert balance(ledger, "province:resident:adjustment") == 300
    assert balance(ledger, "province:employee:adjustment") == 400


def test_province_adjustment_fund_opening_uses_no_city_field() -> None:
    ledger = new_ledger()
    message = opening("resident", 12_345)
    assert "city" not in message

    assert statuses(feed(ledger, message)) == [ACCEPTED]

    receipt = ledger.receipt(message["event_id"])
    assert receipt is not None and receipt.transfer is not None
    assert receipt.transfer["debit_account"] == "equity:opening"
    assert receipt.transfer["credit_account"] == "province:resident:adjustment"
    fund = ledger.fund("province:resident:adjustment")
    assert fund is not None and fund.city is None and fund.scheme == "resident"
    assert fund.balance_fen == 12_345
    assert fund.opening is not None and fund.opening["balance_fen"] == 12_345
    for city in (HEFEI, WUHU, BENGBU):
        assert balance(ledger, pooling(city)) == 0
    # once per fund, for the province fund too
    assert statuses(feed(ledger, opening("resident", 1))) == [
        ("rejected", "opening_balance_exists")
    ]
    # and only before any other movement of the province fund
    feed(ledger, interest("employee", 5))
    assert statuses(feed(ledger, opening("employee", 1))) == [
        ("rejected", "opening_balance_exists")
    ]
    assert balance(ledger, "province:employee:adjustment") == 5


# -------------------------------------------------------------------- interest


def test_interest_with_no_city_goes_to_the_province_adjustment_fund_of_its_scheme() -> None:
    ledger = new_ledger()
    message = interest("employee", 321)
    assert statuses(feed(ledger, message)) == [ACCEPTED]
    receipt = ledger.receipt(message["event_id"])
    assert receipt is not None and receipt.transfer is not None
    assert receipt.transfer["debit_account"] == accounts.INTEREST
    assert receipt.transfer["credit_account"] == "province:employee:adjustment"
    assert receipt.transfer["category"] == "interest"
    assert balance(ledger, "province:employee:adjustment") == 321
    assert balance(ledger, "province:resident:adjustment") == 0
    assert trial_balance(ledger).total_fen == 0


def test_interest_with_a_city_goes_to_that_city_pooling_fund() -> None:
    ledger = new_ledger()
    assert statuses(feed(ledger, interest("resident", 40, city=BENGBU))) == [ACCEPTED]
    assert balance(ledger, pooling(BENGBU, "resident")) == 40
    assert balance(ledger, "province:resident:adjustment") == 0


def test_interest_to_an_unknown_city_is_rejected_unknown_city() -> None:
    ledger = new_ledger()
    assert statuses(feed(ledger, interest("resident", 40, city="349900"))) == [
        ("rejected", "unknown_city")
    ]
    assert balance(ledger, "province:resident:adjustment") == 0


# ---------------------------------------------------------------------- replay


def test_rebuilding_a_fund_from_its_stored_events_gives_the_same_balance() -> None:
    ledger = new_ledger()
    feed(ledger, opening(city=HEFEI, balance_fen=10_000), contribution(amount_fen=2_500))
    feed(ledger, claim(amount_fen=4_000), claim(amount_fen=99_999), subsidy(amount_fen=300))
    feed(ledger, interest("resident", 12, city=HEFEI), interest("resident", 8))
    live = ledger.fund(pooling())
    assert live is not None
    live_state = (live.balance_fen, live.booking_count, live.opening, live.totals_fen, live.version)

    ledger._repository = ledger.construct_repository()  # forget every cached aggregate
    rebuilt = ledger.repository.get(accounts.fund_id(pooling()))

    assert isinstance(rebuilt, Fund)
    assert rebuilt is not live
    expected_balance = 10_000 + 2_500 - 4_000 + 300 + 12
    assert rebuilt.balance_fen == expected_balance
    assert (
        rebuilt.balance_fen,
        rebuilt.booking_count,
        rebuilt.opening,
        rebuilt.totals_fen,
        rebuilt.version,
    ) == live_state
    province = ledger.repository.get(accounts.fund_id("province:resident:adjustment"))
    assert isinstance(province, Fund) and province.balance_fen == 8
    # The auditor's fold of the same stored events agrees with the rebuilt aggregates.
    tb = trial_balance(ledger)
    assert tb.balances_fen[pooling()] == expected_balance
    assert tb.total_fen == 0


def test_bookings_after_a_rebuild_continue_from_the_stored_balance() -> None:
    ledger = new_ledger()
    feed(ledger, contribution(amount_fen=1_000))
    ledger._repository = ledger.construct_repository()
    outcomes = feed(ledger, claim(amount_fen=600), claim(amount_fen=600))
    assert statuses(outcomes) == [ACCEPTED, ("rejected", "insufficient_funds")]
    assert balance(ledger, pooling()) == 400
