"""Property tests: random movement sequences against a reference model of the ledger.

Hypothesis generates contributions, subsidies (both schemes), claims (some larger than
the fund), interest (city and province funds), opening balances (some repeated or
late) and exact re-deliveries over 3 Anhui cities x 2 schemes, split into random
batches, arriving in any order of business time. After every batch the trial balance must
sum to zero (M3), no fund may be negative as of any event's instant (E1 in business time),
and a small reference model must predict every outcome and balance.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import accounts, audit
from ledger.movements import Transfer
from tests.upstream import (
    claim,
    contribution,
    feed,
    interest,
    new_ledger,
    opening,
    split,
    subsidy,
    trial_balance,
)

SOURCE = "test.properties"
CITIES = ("340100", "340200", "340300")
SCHEMES = ("resident", "employee")
FUNDS = tuple(accounts.fund_account(c, s) for c in (*CITIES, None) for s in SCHEMES)
CST = timezone(timedelta(hours=8))
#: Business times around the new year in Beijing and elsewhere (M2).
TIMES = (
    "2024-12-31T15:59:59Z",
    "2024-12-31T16:00:00Z",
    "2025-03-01T10:00:00+08:00",
    "2025-01-01T00:30:00+09:00",
    "2024-12-31T12:00:00-05:00",
)


@dataclass(frozen=True)
class Op:
    kind: str  # contribution | subsidy | claim | interest | opening | redeliver
    city: str | None = None
    scheme: str = "resident"
    amount_fen: int = 0
    occurred_at: str = TIMES[2]
    pick: int = 0  # redeliver, claim: which earlier message


cities = st.sampled_from(CITIES)
schemes = st.sampled_from(SCHEMES)
times = st.sampled_from(TIMES)

amounts = st.integers(1, 10_000)
#: Mostly claims a fund can pay, some larger than any fund is likely to hold.
claim_amounts = st.integers(1, 4_000) | st.integers(4_001, 60_000)

contributions = st.builds(Op, st.just("contribution"), cities, schemes, amounts, times)
#: A claim on a random fund, or (pick > 0) on the fund of an earlier message, which is
#: likelier to hold money.
claims = st.builds(
    Op, st.just("claim"), cities, schemes, claim_amounts, times, pick=st.integers(0, 10_000)
)
ops = st.one_of(
    contributions,
    contributions,
    claims,
    claims,
    st.builds(Op, st.just("subsidy"), cities, schemes, amounts, times),
    st.builds(Op, st.just("interest"), st.none() | cities, schemes, st.integers(1, 500), times),
    st.builds(Op, st.just("opening"), st.none() | cities, schemes, st.integers(0, 20_000), times),
    st.builds(Op, st.just("redeliver"), pick=st.integers(0, 10_000)),
)


def fiscal_year(occurred_at: str) -> int:
    return datetime.fromisoformat(occurred_at).astimezone(CST).year


def message(op: Op, n: int) -> dict[str, Any]:
    """The upstream JSON message of `op`, with the `n`-th event id of the run."""
    envelope = {
        "event_id": str(uuid.UUID(int=n + 1)),
        "occurred_at": op.occurred_at,
        "source": SOURCE,
    }
    if op.kind == "contribution":
        # an employee's own contribution goes to the personal accounts (E6: test_properties_rev2)
        payer_kind = "employer" if n % 2 or op.scheme == "employee" else "individual"
        return contribution(op.city, op.scheme, op.amount_fen, payer_kind=payer_kind, **envelope)
    if op.kind == "subsidy":
        level = ("central", "provincial", "city", "county")[n % 4]
        return subsidy(op.city, op.scheme, op.amount_fen, level=level, **envelope)
    if op.kind == "claim":
        return claim(
            op.city,
            op.scheme,
            op.amount_fen,
            claim_id=f"c{n}",
            institution_id="h1",
            hospital_level="secondary",
            category="outpatient",
            **envelope,
        )
    if op.kind == "interest":
        return interest(op.scheme, op.amount_fen, city=op.city, **envelope)
    assert op.kind == "opening"
    # dated in the fiscal year it opens (RULES revision 2, M2)
    return opening(op.city, op.scheme, op.amount_fen, fiscal_year=fiscal_year(op.occurred_at), **envelope)


def instant(occurred_at: str) -> datetime:
    return datetime.fromisoformat(occurred_at)


class Model:
    """The reference: each fund's accepted movements in business time, and the fates.

    E1 in business time, as RULES revision 2 words it: a claim at instant t is paid only if
    the balance read `as_of` t, and as of every later movement's instant, covers it.
    """

    def __init__(self) -> None:
        self.movements: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
        self.touched: set[str] = set()  # funds with an accepted movement (opening included)
        self.fates: dict[str, tuple[str, str | None]] = {}

    def balance_as_of(self, fund: str, at: datetime | None = None) -> int:
        return sum(delta for when, delta in self.movements[fund] if at is None or when <= at)

    @property
    def balances(self) -> dict[str, int]:
        return {fund: self.balance_as_of(fund) for fund in FUNDS}

    def lowest_from(self, fund: str, at: datetime) -> int:
        later = [when for when, _ in self.movements[fund] if when > at]
        return min(self.balance_as_of(fund, when) for when in [at, *later])

    def decide(self, op: Op, event_id: str) -> tuple[str, str | None]:
        if event_id in self.fates:
            return ("duplicate", None)
        fund = accounts.fund_account(op.city, op.scheme)
        fate: tuple[str, str | None] = ("accepted", None)
        if op.kind == "subsidy" and op.scheme != "resident":
            fate = ("rejected", "earmark_violation")
        elif op.kind == "claim" and self.lowest_from(fund, instant(op.occurred_at)) < op.amount_fen:
            fate = ("rejected", "insufficient_funds")
        elif op.kind == "opening" and fund in self.touched:
            fate = ("rejected", "opening_balance_exists")
        if fate[0] == "accepted":
            delta = -op.amount_fen if op.kind == "claim" else op.amount_fen
            self.movements[fund].append((instant(op.occurred_at), delta))
            self.touched.add(fund)
        self.fates[event_id] = fate
        return fate


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    script=st.lists(ops, min_size=5, max_size=60),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=12),
)
def test_random_movements_conserve_money_keep_funds_non_negative_and_match_the_model(
    script: list[Op], sizes: list[int]
) -> None:
    ledger = new_ledger()
    model = Model()

    # Turn the script into messages; a re-delivery repeats an earlier message byte for byte.
    sent: list[tuple[Op, dict[str, Any]]] = []
    for op in script:
        if op.kind == "redeliver":
            if sent:
                sent.append(sent[op.pick % len(sent)])
            continue
        if op.kind == "claim" and op.pick and sent:
            earlier = sent[op.pick % len(sent)][0]
            if earlier.city is not None:
                op = replace(op, city=earlier.city, scheme=earlier.scheme)
        sent.append((op, message(op, len(sent))))
    if not sent:
        return

    accepted: dict[str, tuple[Op, dict[str, Any]]] = {}
    for batch in split(sent, sizes):
        outcomes = feed(ledger, *(m for _, m in batch))

        # (3) the model predicts every outcome
        expected = [model.decide(op, m["event_id"]) for op, m in batch]
        assert [(o.status, o.reason) for o in outcomes] == expected, batch
        assert [o.event_id for o in outcomes] == [m["event_id"] for _, m in batch]
        for (op, m), fate in zip(batch, expected, strict=True):
            if fate[0] == "accepted":
                accepted[m["event_id"]] = (op, m)

        # (1) conservation after every batch
        tb = trial_balance(ledger)
        assert tb.total_fen == 0
        assert tb.transfer_count == len(accepted)
        # (2) no fund is ever negative, and (3) each holds what the model says
        balances = model.balances
        for account in FUNDS:
            fund = ledger.fund(account)
            held = 0 if fund is None else fund.balance_fen
            assert held >= 0, account
            assert held == balances[account], account
            assert tb.balances_fen.get(account, 0) == balances[account], account
        # (2) ... at any business instant: read as of every event's time, whatever the arrival order
        stored = [e for _, e in ledger.notifications(audit.FUND_EVENT_TOPICS)]
        for at in sorted({instant(m["occurred_at"]) for _, m in sent}):
            as_of = audit.fold(stored, as_of=at)
            assert as_of.total_fen == 0, at
            for account in FUNDS:
                assert as_of.balances_fen.get(account, 0) >= 0, (account, at)
                assert as_of.balances_fen.get(account, 0) == model.balance_as_of(account, at), (account, at)

    # (3) final balances
    assert {a: b for a, b in model.balances.items() if b} == {
        a: f.balance_fen for a in FUNDS if (f := ledger.fund(a)) is not None and f.balance_fen
    }

    # (4) no accepted transfer crosses schemes or cities, and each lands in its own fund
    for event_id, fate in model.fates.items():
        receipt = ledger.receipt(event_id)
        assert receipt is not None
        assert receipt.status == fate[0]
        if fate[0] != "accepted":
            assert receipt.transfer is None
            continue
        op, m = accepted[event_id]
        transfer = receipt.transfer
        assert transfer is not None
        debit = accounts.AccountName.parse(transfer["debit_account"])
        credit = accounts.AccountName.parse(transfer["credit_account"])
        if debit.scheme is not None and credit.scheme is not None:
            assert debit.scheme == credit.scheme, transfer
        if debit.city is not None and credit.city is not None:
            assert debit.city == credit.city, transfer
        fund = accounts.fund_account(op.city, op.scheme)
        own_leg = transfer["debit_account"] if op.kind == "claim" else transfer["credit_account"]
        assert own_leg == fund, transfer
        assert transfer["amount_fen"] == op.amount_fen
        assert transfer["fiscal_year"] == fiscal_year(m["occurred_at"])
        Transfer.from_booking(transfer).check_edge_allowed()  # raises Rejected (E3) on a breach
