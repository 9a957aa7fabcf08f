"""The simulator's streams carry the flows of RULES.md revision 2, and the ledger books them.

A simulated pooling year (and a month at another personal-account share) runs through the
in-memory ledger; every flow is there and accepted where the simulator means it to be: an
employee's own contribution split to the personal accounts (E6) and claims paid from them,
claims treated in another city (E7), medical assistance and each city's major-illness premium
(E8), recoveries against earlier claims (P4). The expected balances are the test's own fold of
the stream (credits minus debits), never the ledger's code.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from ledger.policy import load_packaged_policy
from pooling_ledger.simulate import Simulation, pooling_year, with_faults
from schemas.policy import Policy
from tests.upstream import feed, new_ledger, personal, pooling, trial_balance

CST = timezone(timedelta(hours=8))
FLOWS = (
    "employee_own_contribution",
    "personal_account_claim",
    "out_of_city_claim",
    "medical_assistance",
    "critical_illness_premium",
    "recovery",
)


def flow(e: dict[str, Any]) -> str | None:
    """Which revision 2 flow a simulated event is, if any."""
    if e["type"] == "ContributionReceived":
        if e["payer_kind"] == "medical_assistance":
            return "medical_assistance"
        if (e["scheme"], e["payer_kind"]) == ("employee", "individual"):
            return "employee_own_contribution"
    if e["type"] == "ClaimPaid":
        if e.get("paid_from") == "personal_account":
            return "personal_account_claim"
        if e.get("institution_city", e["city"]) != e["city"]:
            return "out_of_city_claim"
    return {"CriticalIllnessPremiumPaid": "critical_illness_premium", "RecoveryReceived": "recovery"}.get(e["type"])


def own_share(e: dict[str, Any], share_bp: int) -> int:
    """E6: what an employee's own contribution credits to the personal accounts (rounded down)."""
    if e["type"] == "ContributionReceived" and (e["scheme"], e["payer_kind"]) == ("employee", "individual"):
        return int(e["amount_fen"] * share_bp // 10_000)
    return 0


def expected_balances(accepted: Iterable[dict[str, Any]], share_bp: int) -> dict[str, int]:
    """Every account's balance after the `accepted` events, credits minus debits (zeros left out)."""
    balances: dict[str, int] = defaultdict(int)

    def move(debit: str, credit: str, fen: int) -> None:
        balances[debit] -= fen
        balances[credit] += fen

    for e in accepted:
        t, city, scheme = e["type"], e.get("city"), e.get("scheme")
        fund = pooling(city, scheme) if city else f"province:{scheme}:adjustment"
        treated = f"external:institutions:{e.get('institution_city') or city}"
        if t == "ContributionReceived":
            payer = f"external:contributors:{city}:{scheme}:{e['payer_kind']}"
            own = own_share(e, share_bp)
            move(payer, personal(city), own)
            move(payer, fund, e["amount_fen"] - own)
        elif t == "SubsidyDisbursed":
            move(f"external:finance:{e['level']}", fund, e["amount_fen"])
        elif t == "ClaimPaid":
            move(personal(city) if e.get("paid_from") == "personal_account" else fund, treated, e["amount_fen"])
        elif t == "RecoveryReceived":
            move(treated, fund, e["amount_fen"])
        elif t == "CriticalIllnessPremiumPaid":
            move(fund, f"external:insurers:{e['insurer_id']}", e["amount_fen"])
        elif t == "InterestCredited":
            move("external:interest", fund, e["amount_fen"])
        elif t == "OpeningBalanceRecorded":
            move("equity:opening", fund, e["balance_fen"])
        elif t == "AdjustmentFundExtracted":
            move(fund, f"province:{scheme}:adjustment", e["amount_fen"])
        elif t == "AdjustmentFundAllocated":
            move(f"province:{scheme}:adjustment", fund, e["amount_fen"])
        else:
            assert t in ("BudgetApproved", "BudgetAdjusted", "FiscalYearClosed"), t  # no money moves
    return {account: balance for account, balance in balances.items() if balance}


def check_stream_invariants(events: list[dict[str, Any]], policy: Policy) -> None:
    """What the simulator promises of each new flow, read off the messages themselves."""
    paid = {e["event_id"]: e for e in events if e["type"] == "ClaimPaid"}
    recovered: Counter[str] = Counter()
    for e in events:
        if e["type"] == "RecoveryReceived":  # P4: against an earlier pooling claim of the same fund
            claim = paid[e["claim_event_id"]]
            assert (claim["city"], claim["scheme"], claim.get("paid_from", "pooling")) == (e["city"], e["scheme"], "pooling")
            assert e.get("institution_city") == claim.get("institution_city")
            assert datetime.fromisoformat(e["occurred_at"]) >= datetime.fromisoformat(claim["occurred_at"])
            recovered[e["claim_event_id"]] += e["amount_fen"]
            assert recovered[e["claim_event_id"]] <= claim["amount_fen"]
        elif e["type"] == "ClaimPaid" and "institution_city" in e:  # E7: another city of the policy
            assert e["institution_city"] != e["city"] and e["institution_city"] in policy.cities
        elif e["type"] == "CriticalIllnessPremiumPaid":  # E8: resident, dated in its fiscal year
            assert e["scheme"] == "resident"
            assert datetime.fromisoformat(e["occurred_at"]).astimezone(CST).year == e["fiscal_year"]
        elif e.get("paid_from") == "personal_account":
            assert e["scheme"] == "employee"
        elif e.get("payer_kind") == "medical_assistance":
            assert e["scheme"] == "resident"


def test_a_simulated_pooling_year_books_every_revision_2_flow() -> None:
    policy = load_packaged_policy()
    sim = Simulation(policy, month=12, seed=5)
    phases = pooling_year(sim, events_per_city=40)
    events = [e for _, phase in phases for e in phase]
    check_stream_invariants(events, policy)
    ledger = new_ledger(policy)
    fates: dict[str, tuple[str, str | None]] = {}
    for _, phase in phases:
        for e, outcome in zip(phase, feed(ledger, *phase), strict=True):
            fates[e["event_id"]] = (outcome.status, outcome.reason)

    # accepted where the simulator means it to be: all but its over-budget claim and late claim
    refused = {e["event_id"]: e["claim_id"] for e in events if e.get("claim_id") in ("C-over-budget", "C-late")}
    rejected = {event_id: fate for event_id, fate in fates.items() if fate[0] != "accepted"}
    assert sorted(rejected.values()) == [("rejected", "over_budget"), ("rejected", "period_closed")]
    assert set(rejected) <= set(refused)
    accepted = [e for e in events if fates[e["event_id"]] == ("accepted", None)]

    # each flow is there, and booked (accepted) every time
    per_flow = Counter(flow(e) for e in accepted if flow(e))
    assert per_flow == Counter(flow(e) for e in events if flow(e))
    assert all(per_flow[f] > 0 for f in FLOWS), per_flow
    assert per_flow["critical_illness_premium"] == len(policy.cities)  # once a year, every city
    assert Counter(e["type"] for e in accepted) == Counter(e["type"] for e in events) - Counter(ClaimPaid=2)

    # every account holds what the test's own fold of the accepted stream says
    share = policy.personal_account_share_bp
    trial = trial_balance(ledger)
    assert trial.total_fen == 0
    assert {a: b for a, b in trial.balances_fen.items() if b} == expected_balances(accepted, share)
    for city in policy.cities:
        credited = sum(own_share(e, share) for e in accepted if e.get("city") == city)
        spent = sum(e["amount_fen"] for e in accepted
                    if e.get("city") == city and flow(e) == "personal_account_claim")
        account = ledger.fund(personal(city))
        assert (account.balance_fen if account else 0) == credited - spent, city
        assert sim.personal_received_fen.get(city, 0) == credited
        assert sim.personal_paid_fen.get(city, 0) == spent

    # E6: the employee extraction base is what the pooling fund collected, employers' money only
    # at Anhui's 10000 bp; the simulator's own bookkeeping agrees, so its 2026 extractions pass
    assert share == 10_000
    for city in policy.cities:
        employers = sum(e["amount_fen"] for e in events if e["type"] == "ContributionReceived"
                        and (e["city"], e["scheme"], e["payer_kind"]) == (city, "employee", "employer"))
        fund = ledger.fund(pooling(city, "employee"))
        assert fund is not None and fund.closed_years[2025] == employers, city
        assert sim.contributed_fen.get((city, "employee"), 0) == employers
    extractions_2026 = [e for e in accepted if e["type"] == "AdjustmentFundExtracted" and e["fiscal_year"] == 2026]
    assert extractions_2026
    for e in extractions_2026:
        closed = ledger.fund(pooling(e["city"], "employee"))
        assert closed is not None
        assert e["amount_fen"] <= closed.closed_years[2025] * policy.extraction_rate_bp // 10_000


def test_a_month_at_another_personal_account_share_splits_every_own_contribution() -> None:
    """E6 at 7000 bp: 70 % (rounded down) of an employee's own contribution to the personal
    accounts, the rest to the pooling fund, which counts it as its income."""
    policy = load_packaged_policy().model_copy(update={"personal_account_share_bp": 7_000})
    sim = Simulation(policy, seed=17)
    events = sim.clean_stream(60, opening_balance_fen_max=10**6)
    check_stream_invariants(events, policy)
    ledger = new_ledger(policy)
    outcomes = feed(ledger, *events)
    assert Counter(o.status for o in outcomes) == Counter(accepted=len(events))
    assert all(Counter(flow(e) for e in events)[f] > 0 for f in FLOWS if f != "critical_illness_premium")

    trial = trial_balance(ledger)
    assert trial.total_fen == 0
    assert {a: b for a, b in trial.balances_fen.items() if b} == expected_balances(events, 7_000)
    for city in policy.cities:
        own = [e for e in events if flow(e) == "employee_own_contribution" and e["city"] == city]
        credited = sum(e["amount_fen"] * 7_000 // 10_000 for e in own)
        spent = sum(e["amount_fen"] for e in events if flow(e) == "personal_account_claim" and e["city"] == city)
        account = ledger.fund(personal(city))
        assert (account.balance_fen if account else 0) == credited - spent, city
        employers = sum(e["amount_fen"] for e in events if e["type"] == "ContributionReceived"
                        and (e["city"], e["scheme"], e["payer_kind"]) == (city, "employee", "employer"))
        # the pooling fund's contributions (its extraction base): employers' and the 30 % left over
        pooled = employers + sum(e["amount_fen"] for e in own) - credited
        assert sim.contributed_fen.get((city, "employee"), 0) == pooled
        fund = ledger.fund(pooling(city, "employee"))
        assert (fund.collected_income_fen(2025, with_subsidies=False) if fund else 0) == pooled, city


def test_the_demo_feed_keeps_its_known_rejections_with_the_new_flows() -> None:
    """The demo's month with its faults (tests/test_cli.py holds the demo to these): the new
    flows add no rejection."""
    policy = load_packaged_policy()
    sim = Simulation(policy, month=12, seed=11)
    phases = pooling_year(sim, events_per_city=30)
    ledger = new_ledger(policy)
    outcomes = feed(ledger, *(value for _, value in with_faults(sim, phases[0][1])))
    for _, phase in phases[1:]:
        outcomes += feed(ledger, *phase)
    assert Counter(o.status for o in outcomes)["duplicate"] == 3
    assert Counter(o.reason for o in outcomes if o.status == "rejected") == {
        "invalid_json": 1, "invalid_schema": 1, "unknown_city": 1, "earmark_violation": 1,
        "event_id_conflict": 1, "over_budget": 2, "period_closed": 1,
    }
    assert trial_balance(ledger).total_fen == 0
