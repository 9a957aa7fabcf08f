"""Property tests: earmarking and the adjustment fund's limits under random event sequences.

Hypothesis generates every kind of money event over 3 Anhui cities x 2 schemes:
openings, contributions, subsidies, claims, interest (city and province funds),
budgets, adjustment fund extractions (fiscal 2025) and allocations (fiscal 2025/2026),
dated in 2024-2026 China Standard Time (some before the scheme's phase date), year
closes, and reversals of random earlier events (unknown ones, rejected ones, reversals
themselves, and the same original twice). Every fund of the 3 cities opens first, for
fiscal 2025, so the test knows each city's extraction base for 2025: its opening's
previous_year_income_fen.

After every batch: the trial balance sums to zero (M3), no fund is negative (E1),
no accepted transfer crosses schemes (E2) or cities or pays into a fiscal budget
except as a reversal (E3). After every accepted decision: no city's net extraction
for 2025 (by the money that moved) passes 500 bp of its base (X2), and the city's own
2025 extraction total agrees with the money that moved; no money moved into a
provincial adjustment fund as an extraction takes it past 1000 bp of the province's
base, the sum of the cities' bases (X4).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from ledger import accounts, audit
from ledger.aggregates import EXTRACTION_CATEGORY
from ledger.application import Ledger, Outcome
from tests.upstream import (
    allocation,
    budget,
    claim,
    close,
    contribution,
    extraction,
    feed,
    interest,
    new_ledger,
    opening,
    reversal,
    split,
    subsidy,
    trial_balance,
)

SOURCE = "test.earmarking"
CITIES = ("340100", "340200", "340300")
SCHEMES = ("resident", "employee")
CITY_FUNDS = tuple((c, s) for c in CITIES for s in SCHEMES)
FUNDS = tuple(accounts.fund_account(c, s) for c in (*CITIES, None) for s in SCHEMES)
EXTRACTION_RATE_BP = 500  # the packaged Anhui policy's
PAUSE_RATIO_BP = 1000
SETUP_AT = "2025-01-01T09:00:00+08:00"
#: Business times (M2) around both phase dates: resident from 2025-01-01, employee from 2026-01-01.
TIMES = (
    "2024-12-31T15:59:59Z",  # 2024-12-31 23:59:59 CST: before either phase
    "2025-01-01T00:30:00+09:00",  # 2024-12-31 23:30 CST
    "2024-12-31T16:00:00Z",  # 2025-01-01 00:00 CST: the resident phase starts
    "2025-06-30T10:00:00+08:00",
    "2025-12-31T23:59:59+08:00",
    "2025-12-31T16:00:00Z",  # 2026-01-01 00:00 CST: the employee phase starts
    "2026-03-01T10:00:00+08:00",
)
#: X1: the packaged Anhui policy's adjustment_from.
PHASE_FROM = {"resident": date(2025, 1, 1), "employee": date(2026, 1, 1)}
CST = timezone(timedelta(hours=8))
LEVELS = ("central", "provincial", "city", "county")
REASONS = ("policy_adjustment", "major_epidemic", "other_reasonable", "benefit_increase")


@dataclass(frozen=True)
class Op:
    kind: str
    city: str | None = None
    scheme: str = "resident"
    amount_fen: int = 1
    occurred_at: str = TIMES[3]
    fiscal_year: int = 2025
    other_fen: int = 0  # previous_year_income_fen, budget expenditure, allocation gap
    choice: int = 0  # subsidy level, allocation reason, budget kind
    mode: str = ""  # reversal: any | extraction | reversal | undo | again | unknown
    pick: int = 0  # reversal: which earlier event


cities = st.sampled_from(CITIES)
maybe_city = st.none() | cities
schemes = st.sampled_from(SCHEMES)
times = st.sampled_from(TIMES)
amounts = st.integers(1, 50_000)
#: Mostly within reach of a cap (bases up to 400,000 fen: caps up to 20,000 fen), some above.
extraction_amounts = st.integers(1, 3_000) | st.integers(1, 12_000) | st.integers(12_001, 25_000)
#: Mostly on or after the phase date of the resident scheme (X1), some before.
extraction_times = st.sampled_from(TIMES[2:]) | times
#: Fiscal 2025 is in the resident scheme's phase only (X1): employee extractions are all refused.
extraction_schemes = st.sampled_from(("resident", "resident", "employee"))
extractions = st.builds(
    Op, st.just("extraction"), cities, extraction_schemes, extraction_amounts, extraction_times
)

ops = st.one_of(
    st.builds(Op, st.just("contribution"), cities, schemes, amounts, times),
    st.builds(Op, st.just("subsidy"), cities, schemes, amounts, times, choice=st.integers(0, 3)),
    st.builds(
        Op,
        st.just("claim"),
        cities,
        schemes,
        st.integers(1, 5_000) | st.integers(5_001, 300_000),
        times,
    ),
    st.builds(
        Op, st.just("interest"), maybe_city, schemes, st.integers(1, 2_000) | amounts, times
    ),
    st.builds(
        Op,
        st.just("opening"),
        maybe_city,
        schemes,
        st.integers(0, 50_000),
        times,
        other_fen=st.integers(0, 400_000),
    ),
    st.builds(
        Op,
        st.just("budget"),
        cities,
        schemes,
        st.integers(0, 300_000),
        times,
        fiscal_year=st.sampled_from((2025, 2026)),
        other_fen=st.integers(0, 300_000),
        choice=st.integers(0, 1),
    ),
    # Extractions are for fiscal 2025 only, so the base is the opening's previous_year_income_fen.
    extractions,
    extractions,
    extractions,
    extractions,
    st.builds(
        Op,
        st.just("allocation"),
        cities,
        schemes,
        st.integers(1, 50_000),
        times,
        fiscal_year=st.sampled_from((2025, 2026)),
        other_fen=st.integers(1, 100_000),
        choice=st.integers(0, 3),
    ),
    st.builds(
        Op,
        st.just("close"),
        maybe_city,
        schemes,
        occurred_at=times,
        fiscal_year=st.sampled_from((2024, 2025, 2026)),
    ),
    st.builds(
        Op,
        st.just("reversal"),
        occurred_at=times,
        mode=st.sampled_from(("any", "extraction", "extraction", "reversal", "again", "unknown")),
        pick=st.integers(0, 10_000),
    ),
    st.builds(
        Op,
        st.just("reversal"),
        occurred_at=times,
        mode=st.sampled_from(("extraction", "undo")),
        pick=st.integers(0, 10_000),
    ),
)

#: (opening balance, previous_year_income_fen) of each fund of CITY_FUNDS.
setups = st.lists(
    st.tuples(
        st.integers(50_000, 300_000) | st.integers(0, 300_000),
        st.integers(20_000, 400_000) | st.integers(0, 400_000),
    ),
    min_size=len(CITY_FUNDS),
    max_size=len(CITY_FUNDS),
)
#: Per scheme, maybe an opening of the provincial adjustment fund: (balance, and a
#: previous_year_income_fen that speaks of the fund's own income, not the province's).
#: With money of its own the fund can reach its ceiling before the cities their caps.
province_setups = st.lists(
    st.none() | st.tuples(st.integers(0, 80_000), st.integers(0, 10_000_000)),
    min_size=len(SCHEMES),
    max_size=len(SCHEMES),
)


# --------------------------------------------------------------------------- messages


def envelope(n: int, occurred_at: str) -> dict[str, Any]:
    """The envelope keywords of the `n`-th event of the run."""
    return {"event_id": str(uuid.UUID(int=n + 1)), "occurred_at": occurred_at, "source": SOURCE}


def opening_message(n: int, city: str | None, scheme: str, balance_fen: int, base_fen: int,
                    occurred_at: str = SETUP_AT) -> dict[str, Any]:
    return opening(
        city, scheme, balance_fen, previous_year_income_fen=base_fen, **envelope(n, occurred_at)
    )


def message(op: Op, n: int, sent: list[dict[str, Any]]) -> dict[str, Any]:
    """The upstream JSON message of `op` as the `n`-th event of the run; `sent`: those before."""
    at = envelope(n, op.occurred_at)
    if op.kind == "contribution":
        payer_kind = ("employer", "individual")[n % 2]
        return contribution(op.city, op.scheme, op.amount_fen, payer_kind=payer_kind, **at)
    if op.kind == "subsidy":
        return subsidy(op.city, op.scheme, op.amount_fen, level=LEVELS[op.choice], **at)
    if op.kind == "claim":
        return claim(
            op.city, op.scheme, op.amount_fen, claim_id=f"c{n}", institution_id="h1",
            hospital_level="secondary", category="inpatient", **at,
        )
    if op.kind == "interest":
        return interest(op.scheme, op.amount_fen, city=op.city, **at)
    if op.kind == "opening":
        return opening_message(n, op.city, op.scheme, op.amount_fen, op.other_fen, op.occurred_at)
    if op.kind == "budget":
        return budget(
            op.amount_fen, op.other_fen, city=op.city, scheme=op.scheme,
            fiscal_year=op.fiscal_year, type_=("BudgetApproved", "BudgetAdjusted")[op.choice], **at,
        )
    if op.kind == "extraction":
        return extraction(op.amount_fen, city=op.city, scheme=op.scheme, fiscal_year=2025, **at)
    if op.kind == "allocation":
        return allocation(
            op.other_fen, op.amount_fen, city=op.city, scheme=op.scheme,
            fiscal_year=op.fiscal_year, reason=REASONS[op.choice], **at,
        )
    if op.kind == "close":
        return close(op.city, op.fiscal_year, scheme=op.scheme, **at)
    assert op.kind == "reversal"
    return reversal(reversal_target(op, sent), reason="correction", **at)


def reversal_target(op: Op, sent: list[dict[str, Any]]) -> str:
    """An earlier event (of the kind `op.mode` asks for), or an id nobody sent."""
    if op.mode == "unknown":
        return str(uuid.UUID(int=2**100 + op.pick))
    reversals = [m for m in sent if m["type"] == "EventReversed"]
    extractions = {m["event_id"] for m in sent if m["type"] == "AdjustmentFundExtracted"}
    pools = {
        "any": sent,
        "extraction": [m for m in sent if m["event_id"] in extractions],
        "reversal": reversals,  # reverse a reversal
        "undo": [m for m in reversals if m["original_event_id"] in extractions],
        "again": reversals,  # reverse its original a second time
    }
    pool = pools[op.mode] or sent
    target = pool[op.pick % len(pool)]
    if op.mode == "again" and target["type"] == "EventReversed":
        return str(target["original_event_id"])
    return str(target["event_id"])


# ---------------------------------------------------------------------------- checks


def business_date(occurred_at: str) -> date:
    return datetime.fromisoformat(occurred_at).astimezone(CST).date()


def cap_fen(base_fen: int) -> int:
    """X2: a city's extractions for 2025 total at most 500 bp of its collected income of 2024."""
    return base_fen * EXTRACTION_RATE_BP // 10_000


def ceilings_fen(bases: dict[tuple[str, str], int]) -> dict[str, int]:
    """X4: per scheme, 1000 bp of the province's collected income of 2024 (the cities' bases)."""
    return {
        scheme: sum(b for (_, s), b in bases.items() if s == scheme) * PAUSE_RATIO_BP // 10_000
        for scheme in SCHEMES
    }


def check_earmarks(transfer: dict[str, Any]) -> None:
    """E2, E3 on one accepted transfer, from the account names alone."""
    debit = accounts.AccountName.parse(transfer["debit_account"])
    credit = accounts.AccountName.parse(transfer["credit_account"])
    assert transfer["amount_fen"] > 0 or credit.kind == "opening_equity" or debit.kind == (
        "opening_equity"
    ), transfer  # only an opening (or its reversal) may be of 0 fen
    if debit.scheme is not None and credit.scheme is not None:
        assert debit.scheme == credit.scheme, transfer  # E2
    if debit.city is not None and credit.city is not None:
        assert debit.city == credit.city, transfer  # E3: no city pays another city
    if credit.kind == "finance":
        assert transfer["reversal_of"] is not None, transfer  # E3: no fund pays into finance
    assert debit.kind in ("city_pooling", "city_personal", "province_adjustment") or credit.kind in (
        "city_pooling",
        "city_personal",  # E6: an employee's own contribution
        "province_adjustment",
    ), transfer


def check_province_ceilings(ledger: Ledger, ceilings: dict[str, int]) -> None:
    """X4, replayed from the store: every extraction into a provincial fund left it <= ceiling."""
    province_ids = {accounts.fund_id(accounts.province_adjustment(s)): s for s in SCHEMES}
    balances: dict[str, int] = defaultdict(int)
    for fund_id, event in audit.legs(e for _, e in ledger.notifications(audit.FUND_EVENT_TOPICS)):
        scheme = province_ids.get(fund_id)
        if scheme is None:
            continue
        account = accounts.province_adjustment(scheme)
        incoming = event.credit_account == account
        balances[scheme] += event.amount_fen if incoming else -event.amount_fen
        if incoming and event.category == EXTRACTION_CATEGORY:
            assert balances[scheme] <= ceilings[scheme], (
                f"{event.event_id} ({event.kind}) took {account} to {balances[scheme]} fen, "
                f"above its ceiling of {ceilings[scheme]} fen"
            )


class Extractions:
    """Net money each city fund moved to its provincial fund as extractions for 2025.

    Counted by the money that moved: an accepted extraction adds its amount, a reversal
    of one takes it back, a reversal of that reversal (if ever accepted) moves it again.
    `booked_fen` counts only what was booked into fiscal 2025 (not a reversal booked into
    a later year as a prior-year adjustment): what the city fund's own total must say.
    """

    def __init__(self, caps: dict[tuple[str, str], int]) -> None:
        self.caps = caps
        self.root: dict[str, dict[str, Any]] = {}  # accepted event_id -> the message it stems from
        self.net_fen: dict[tuple[str, str], int] = defaultdict(int)
        self.booked_fen: dict[tuple[str, str], int] = defaultdict(int)

    def record(self, msg: dict[str, Any], transfer: dict[str, Any]) -> None:
        original = transfer["reversal_of"]
        root = msg if original is None else self.root[original]
        self.root[msg["event_id"]] = root
        if root["type"] != "AdjustmentFundExtracted":
            return
        key = (root["city"], root["scheme"])
        city_fund, province_fund = accounts.city_pooling(*key), accounts.province_adjustment(key[1])
        if (transfer["debit_account"], transfer["credit_account"]) == (city_fund, province_fund):
            moved_fen = transfer["amount_fen"]
        else:
            back = (transfer["debit_account"], transfer["credit_account"])
            assert back == (province_fund, city_fund), transfer
            moved_fen = -transfer["amount_fen"]
        self.net_fen[key] += moved_fen
        if transfer["category"] == EXTRACTION_CATEGORY and transfer["fiscal_year"] == 2025:
            self.booked_fen[key] += moved_fen
        assert self.net_fen[key] <= self.caps[key], (
            f"{msg['type']} {msg['event_id']}: {key} has moved {self.net_fen[key]} fen to the "
            f"adjustment fund for 2025, above its cap of {self.caps[key]} fen (X2)"
        )


def run(
    ledger: Ledger,
    setup: list[tuple[int, int]],
    province: list[tuple[int, int] | None],
    script: list[Op],
    sizes: list[int],
) -> None:
    """Feeds the openings, then `script` in batches of `sizes`, checking after every batch."""
    bases = {fund: base for fund, (_, base) in zip(CITY_FUNDS, setup, strict=True)}
    caps = {fund: cap_fen(base) for fund, base in bases.items()}
    ceilings = ceilings_fen(bases)
    openings: list[tuple[str | None, str, int, int]] = [
        (c, s, *figures) for (c, s), figures in zip(CITY_FUNDS, setup, strict=True)
    ]
    openings += [(None, s, *f) for s, f in zip(SCHEMES, province, strict=True) if f is not None]
    sent = [opening_message(n, *opening) for n, opening in enumerate(openings)]
    setup_size = len(sent)
    for op in script:
        sent.append(message(op, len(sent), sent))
    extractions = Extractions(caps)
    fund_legs = 0  # fund events the accepted transfers booked (one per fund they touch)

    for b, batch in enumerate([sent[:setup_size], *split(sent[setup_size:], sizes)]):
        outcomes: list[Outcome] = feed(ledger, *batch)
        assert [o.event_id for o in outcomes] == [m["event_id"] for m in batch]
        if b == 0:
            assert {o.status for o in outcomes} == {"accepted"}, outcomes

        # Every event has its receipt, which says what the outcome said; decisions in order.
        for msg, outcome in zip(batch, outcomes, strict=True):
            assert outcome.status in ("accepted", "rejected"), outcome
            receipt = ledger.receipt(msg["event_id"])
            assert receipt is not None
            assert (receipt.status, receipt.reason) == (outcome.status, outcome.reason)
            if outcome.status == "rejected":
                assert receipt.transfer is None
                continue
            if msg["type"] in ("AdjustmentFundExtracted", "AdjustmentFundAllocated"):
                # X1: on or after the scheme's phase date, for a fiscal year of the phase.
                start = PHASE_FROM[msg["scheme"]]
                assert business_date(msg["occurred_at"]) >= start, msg
                assert msg["fiscal_year"] >= start.year, msg
            if receipt.transfer is None:
                assert msg["type"] in ("BudgetApproved", "BudgetAdjusted", "FiscalYearClosed"), msg
                continue
            fund_legs += sum(
                accounts.is_fund(receipt.transfer[a]) for a in ("debit_account", "credit_account")
            )
            check_earmarks(receipt.transfer)
            extractions.record(msg, receipt.transfer)

        # M3 and E1 after every batch; the auditor's fold agrees with the funds.
        tb = trial_balance(ledger)
        assert tb.total_fen == 0
        assert tb.transfer_count == fund_legs
        for account in FUNDS:
            fund = ledger.fund(account)
            held = 0 if fund is None else fund.balance_fen
            assert held >= 0, account
            assert tb.balances_fen.get(account, 0) == held, account
        # X2's own figure: each city fund's 2025 extraction total is the money that moved.
        for key in CITY_FUNDS:
            fund = ledger.fund(accounts.city_pooling(*key))
            assert fund is not None
            assert fund.total_fen(2025, EXTRACTION_CATEGORY) == extractions.booked_fen[key], key
        # X4 on the whole history so far.
        check_province_ceilings(ledger, ceilings)


# ----------------------------------------------------------------------------- tests


HEFEI_ONLY = [(1_000_000, 20_000)] + [(0, 0)] * (len(CITY_FUNDS) - 1)  # Hefei resident: cap 1,000


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No shrinking: a failure's assertion names the event that broke the rule, and shrinking
    # these scripts (reversals pick their target by position) can take Hypothesis 5 minutes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
)
@given(
    setup=setups,
    province=province_setups,
    script=st.lists(ops, min_size=20, max_size=80),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=12),
)
@example(  # extract the cap, reverse it, extract the cap again, reverse the reversal
    setup=HEFEI_ONLY,
    province=[None, None],
    script=[
        Op("extraction", CITIES[0], "resident", 1_000),
        Op("reversal", mode="extraction", pick=0),
        Op("extraction", CITIES[0], "resident", 1_000),
        Op("reversal", mode="undo", pick=0),
    ],
    sizes=[1],
)
def test_random_events_keep_money_earmarked_and_the_adjustment_fund_within_its_limits(
    setup: list[tuple[int, int]],
    province: list[tuple[int, int] | None],
    script: list[Op],
    sizes: list[int],
) -> None:
    run(new_ledger(), setup, province, script, sizes)


def test_reversing_the_reversal_of_an_extraction_cannot_extract_past_the_city_cap() -> None:
    """P2 + X2: a reversal restores the city's room under its cap; undoing that reversal must
    not move the money to the province again without the cap (or must use up the room again).
    """
    ledger = new_ledger()
    hefei = CITIES[0]
    sent = [opening_message(0, hefei, "resident", 1_000_000, 20_000)]  # cap 1,000 fen
    script = [
        Op("extraction", hefei, "resident", 1_000),  # E1: the whole cap
        Op("reversal", mode="extraction", pick=0),  # R1 reverses E1: room for 1,000 again
        Op("reversal", mode="reversal", pick=0),  # R2 reverses R1: E1's 1,000 fen move again
        Op("extraction", hefei, "resident", 1_000),  # E2
    ]
    for op in script:
        sent.append(message(op, len(sent), sent))
    outcomes = [feed(ledger, m)[0] for m in sent]

    moved_fen = 0
    for msg, outcome in zip(sent[1:], outcomes[1:], strict=True):
        receipt = ledger.receipt(msg["event_id"])
        assert receipt is not None
        if outcome.status == "accepted" and receipt.transfer is not None:
            sign = 1 if receipt.transfer["credit_account"].startswith("province:") else -1
            moved_fen += sign * receipt.transfer["amount_fen"]
    fund = ledger.fund(accounts.city_pooling(hefei, "resident"))
    province = ledger.fund(accounts.province_adjustment("resident"))
    assert fund is not None and province is not None
    assert province.balance_fen == moved_fen
    assert moved_fen <= cap_fen(20_000), [(o.event_type, o.status, o.reason) for o in outcomes]
    # The fund's own 2025 extraction total tells the truth about the money that moved.
    assert fund.total_fen(2025, EXTRACTION_CATEGORY) == moved_fen
