"""A simulated province: upstream messages for the demo, the benchmark and the tests.

Every message is a (key, value) pair as upstream services would publish it to
`pooling.events.v1`. Amounts are drawn from ranges around the seeds' figures
(a resident contribution of 380 yuan a head in 2025, subsidies split by level),
and claims are kept below what each fund has received, so a clean stream books
in full; `with_faults` adds the bad and duplicate messages a real feed has.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ledger.clock import CHINA_STANDARD_TIME
from schemas.policy import Policy

Message = tuple[bytes, bytes]

PAYER_KINDS = {"employee": ("employer", "individual"), "resident": ("individual",)}
SUBSIDY_LEVELS = ("central", "provincial", "city", "county")
CATEGORIES = ("inpatient", "outpatient", "chronic_special", "maternity")
HOSPITAL_LEVELS = ("primary", "secondary", "tertiary")
#: Claims of a fund stay below this share of what it has received (basis points).
CLAIM_SHARE_BP = 8_000
#: The largest single claim payout (a batch of settlements from one hospital), in fen.
CLAIM_FEN_MAX = 30_000_000


@dataclass
class Simulation:
    """Generates messages and keeps the `expected` fate of each, computed from the input alone."""

    policy: Policy
    seed: int = 7
    year: int = 2025
    month: int = 3
    rng: random.Random = field(init=False)
    received_fen: dict[tuple[str, str], int] = field(default_factory=dict)
    paid_fen: dict[tuple[str, str], int] = field(default_factory=dict)
    income_fen: dict[tuple[str, str], int] = field(default_factory=dict)
    contributed_fen: dict[tuple[str, str], int] = field(default_factory=dict)
    base_fen: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Business seconds between two steps of a city's movements (`clean_stream` fits a stream
    #: into the first 18 days of the month, before the month's extractions).
    seconds_per_step: int = 30

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._uuid_rng = random.Random(self.seed * 7919 + 1)

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self._uuid_rng.getrandbits(128), version=4))

    def _at(self, day: int, second: int) -> str:
        moment = datetime(self.year, self.month, 1, 8, 0, tzinfo=CHINA_STANDARD_TIME)
        return (moment + timedelta(days=day, seconds=second)).isoformat()

    def envelope(self, event_type: str, occurred_at: str, source: str) -> dict[str, Any]:
        return {
            "event_id": self._event_id(),
            "type": event_type,
            "schema_version": 1,
            "occurred_at": occurred_at,
            "source": source,
            "province": self.policy.province,
        }

    def openings(self, balance_fen_max: int = 0) -> Iterator[dict[str, Any]]:
        """Opening balances of every city fund, from audited final accounts."""
        for city in self.policy.cities:
            for scheme in ("employee", "resident"):
                balance = self.rng.randint(0, balance_fen_max) if balance_fen_max else 0
                event = self.envelope("OpeningBalanceRecorded", self._at(0, 0), "finance.anhui")
                event.update(
                    city=city,
                    scheme=scheme,
                    balance_fen=balance,
                    previous_year_income_fen=self.rng.randint(10**9, 10**10),
                    fiscal_year=self.year,
                )
                self.base_fen[(city, scheme)] = event["previous_year_income_fen"]
                self.received_fen[(city, scheme)] = self.received_fen.get((city, scheme), 0) + balance
                yield event

    def movement(self, city: str, step: int) -> dict[str, Any]:
        """One contribution, subsidy, interest credit or claim for `city`."""
        scheme = self.rng.choice(("employee", "resident"))
        # business time moves on with each step: a fund's movements arrive in the order they
        # happened, so a claim the simulator sizes on what the fund received is covered at
        # its own instant too (E1 in business time)
        at = self._at(0, step * self.seconds_per_step)
        roll = self.rng.random()
        key = (city, scheme)
        if roll < 0.45:
            event = self.envelope("ContributionReceived", at, "tax.anhui")
            headcount = self.rng.randint(1, 500)
            event.update(
                city=city,
                scheme=scheme,
                payer_kind=self.rng.choice(PAYER_KINDS[scheme]),
                amount_fen=headcount * self.rng.choice((38_000, 35_000, 120_000)),
                headcount=headcount,
            )
        elif roll < 0.60 and scheme == "resident":
            event = self.envelope("SubsidyDisbursed", at, "finance.anhui")
            event.update(
                city=city,
                scheme=scheme,
                level=self.rng.choice(SUBSIDY_LEVELS),
                amount_fen=self.rng.randint(100_000, 5_000_000),
            )
        elif roll < 0.63:
            event = self.envelope("InterestCredited", at, "bank.anhui")
            event.update(city=city, scheme=scheme, amount_fen=self.rng.randint(100, 100_000))
        else:
            room = self.received_fen.get(key, 0) * CLAIM_SHARE_BP // 10_000 - self.paid_fen.get(key, 0)
            if room < 1_000:
                return self.movement(city, step + 1)
            amount = self.rng.randint(1, min(room, CLAIM_FEN_MAX))
            event = self.envelope("ClaimPaid", at, "settlement.anhui")
            event.update(
                city=city,
                scheme=scheme,
                claim_id=f"C{step}-{self.rng.getrandbits(32):08x}",
                institution_id=f"H{city}{self.rng.randint(1, 40):03d}",
                hospital_level=self.rng.choice(HOSPITAL_LEVELS),
                category=self.rng.choice(CATEGORIES),
                eligible_fen=amount + self.rng.randint(0, amount),
                amount_fen=amount,
            )
            self.paid_fen[key] = self.paid_fen.get(key, 0) + amount
            return event
        self.received_fen[key] = self.received_fen.get(key, 0) + event["amount_fen"]
        self.income_fen[key] = self.income_fen.get(key, 0) + event["amount_fen"]
        if event["type"] == "ContributionReceived":
            self.contributed_fen[key] = self.contributed_fen.get(key, 0) + event["amount_fen"]
        return event

    def clean_stream(self, events_per_city: int, opening_balance_fen_max: int = 0) -> list[dict[str, Any]]:
        """Openings, then `events_per_city` movements per city, interleaved across cities."""
        events = list(self.openings(opening_balance_fen_max))
        cities = list(self.policy.cities)
        self.seconds_per_step = max(1, min(self.seconds_per_step, 18 * 86_400 // max(1, events_per_city)))
        for step in range(events_per_city):
            for city in cities:
                events.append(self.movement(city, step))
        return events


def pooling_year(sim: Simulation, events_per_city: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """A December of provincial pooling in phases, each published once the previous one is booked.

    1. the month: openings, approved budgets, movements, and every city's 2025 resident
       extraction (5 % of its previous-year income, X2);
    2. a gap: one city pays more claims than it collected, the province allocates half the
       gap (X5); another city's budget is cut to what it paid, a claim is refused
       `over_budget` (B3) and paid after a `BudgetAdjusted` raises the budget;
    3. the year close of every city fund and both adjustment funds (P1);
    4. January 2026: a late 2025 claim (`period_closed`) and employee extractions, which
       exist from 2026 (X1) on the income the close fixed.
    """
    policy, rng = sim.policy, sim.rng
    cities = list(policy.cities)
    year = sim.year
    month = sim.clean_stream(events_per_city, opening_balance_fen_max=0)
    openings = [e for e in month if e["type"] == "OpeningBalanceRecorded"]
    for e in openings:  # audited balances: a quarter to a half of a year's income
        e["balance_fen"] = rng.randint(e["previous_year_income_fen"] // 4, e["previous_year_income_fen"] // 2)
    budgets = []
    for city in cities:
        for scheme in ("employee", "resident"):
            budget = sim.envelope("BudgetApproved", f"{year}-01-05T10:00:00+08:00", "nhsa.anhui")
            income = sim.base_fen[(city, scheme)] * 105 // 100
            budget.update(city=city, scheme=scheme, fiscal_year=year, income_fen=income, expenditure_fen=income * 98 // 100)
            budgets.append(budget)
    extractions = []
    for city in cities:
        extraction = sim.envelope("AdjustmentFundExtracted", sim._at(19, 0), "nhsa.anhui")
        extraction.update(
            city=city, scheme="resident", fiscal_year=year,
            amount_fen=sim.base_fen[(city, "resident")] * policy.extraction_rate_bp // 10_000,
        )
        extractions.append(extraction)
    phase1 = openings + budgets + [e for e in month if e["type"] != "OpeningBalanceRecorded"] + extractions

    gap_city, budget_city = cities[3], cities[5]
    gap_fen = 10_000_000
    big_claim = sim.envelope("ClaimPaid", sim._at(25, 0), "settlement.anhui")
    big_claim.update(
        city=gap_city, scheme="resident", claim_id="C-epidemic-ward", institution_id=f"H{gap_city}001",
        hospital_level="tertiary", category="inpatient",
        # claims of the year end `gap_fen` above the year's income: that is the city's gap
        eligible_fen=sim.income_fen.get((gap_city, "resident"), 0) - sim.paid_fen.get((gap_city, "resident"), 0) + gap_fen,
        amount_fen=sim.income_fen.get((gap_city, "resident"), 0) - sim.paid_fen.get((gap_city, "resident"), 0) + gap_fen,
    )
    allocation = sim.envelope("AdjustmentFundAllocated", sim._at(27, 0), "nhsa.anhui")
    allocation.update(
        city=gap_city, scheme="resident", fiscal_year=year, gap_fen=gap_fen, reason="major_epidemic",
        amount_fen=gap_fen * policy.gap_share_bp["major_epidemic"] // 10_000,
    )
    paid = sim.paid_fen.get((budget_city, "resident"), 0)
    cut = sim.envelope("BudgetAdjusted", sim._at(26, 0), "nhsa.anhui")
    cut.update(city=budget_city, scheme="resident", fiscal_year=year,
               income_fen=sim.base_fen[(budget_city, "resident")], expenditure_fen=paid)
    refused = sim.envelope("ClaimPaid", sim._at(26, 60), "settlement.anhui")
    refused.update(
        city=budget_city, scheme="resident", claim_id="C-over-budget", institution_id=f"H{budget_city}002",
        hospital_level="secondary", category="outpatient", eligible_fen=500_000, amount_fen=500_000,
    )
    raised = {**cut, "event_id": sim._event_id(), "occurred_at": sim._at(26, 120), "expenditure_fen": paid + 500_000}
    paid_after = {**refused, "event_id": sim._event_id(), "occurred_at": sim._at(26, 180)}
    phase2 = [big_claim, allocation, cut, refused, raised, paid_after]

    closes = []
    for city in [*cities, None]:
        for scheme in ("employee", "resident"):
            close = sim.envelope("FiscalYearClosed", f"{year + 1}-01-05T10:00:00+08:00", "nhsa.anhui")
            close.update(scheme=scheme, fiscal_year=year, **({"city": city} if city else {}))
            closes.append(close)

    late = sim.envelope("ClaimPaid", f"{year}-12-31T20:00:00+08:00", "settlement.anhui")
    late.update(city=cities[0], scheme="employee", claim_id="C-late", institution_id=f"H{cities[0]}003",
                hospital_level="primary", category="outpatient", eligible_fen=10_000, amount_fen=10_000)
    employee_extractions = []
    for city in cities[:4]:
        # half the cap: the year close fixed the city's 2025 contributions as the 2026 base (X2)
        amount = sim.contributed_fen.get((city, "employee"), 0) * policy.extraction_rate_bp // 10_000 // 2
        if amount == 0:
            continue
        extraction = sim.envelope("AdjustmentFundExtracted", f"{year + 1}-01-10T10:00:00+08:00", "nhsa.anhui")
        extraction.update(city=city, scheme="employee", fiscal_year=year + 1, amount_fen=amount)
        employee_extractions.append(extraction)
    return [
        (f"{year}-12: openings, budgets, the month, resident extractions", phase1),
        (f"{year}-12: a gap allocation and a budget adjustment", phase2),
        (f"{year + 1}-01-05: year {year} closed", closes),
        (f"{year + 1}-01: a late {year} claim and the first employee extractions", [late, *employee_extractions]),
    ]


def key_of(event: dict[str, Any]) -> bytes:
    """The Kafka key of an upstream event: its city, or the province for province-level events."""
    return str(event.get("city") or event.get("province") or "").encode()


def encode(event: dict[str, Any]) -> Message:
    return key_of(event), json.dumps(event, ensure_ascii=False).encode()


def with_faults(sim: Simulation, events: list[dict[str, Any]]) -> list[Message]:
    """The clean stream plus what a real feed brings: junk, typos, re-deliveries, overdrafts."""
    messages = [encode(e) for e in events]
    city = next(iter(sim.policy.cities))
    rng = sim.rng

    def insert(message: Message) -> None:
        messages.insert(rng.randint(len(messages) // 2, len(messages)), message)

    insert((city.encode(), b"<xml>not json</xml>"))
    float_amount = sim.envelope("ContributionReceived", sim._at(3, 1), "tax.anhui")
    float_amount.update(city=city, scheme="resident", payer_kind="individual", amount_fen=38000.0)
    insert(encode(float_amount))
    unknown = sim.envelope("ContributionReceived", sim._at(3, 2), "tax.anhui")
    unknown.update(city="349900", scheme="resident", payer_kind="individual", amount_fen=38_000)
    insert(encode(unknown))
    employee_subsidy = sim.envelope("SubsidyDisbursed", sim._at(3, 3), "finance.anhui")
    employee_subsidy.update(city=city, scheme="employee", level="central", amount_fen=48_800)
    insert(encode(employee_subsidy))
    overdraft = sim.envelope("ClaimPaid", sim._at(27, 4), "settlement.anhui")
    overdraft.update(
        city=city, scheme="resident", claim_id="C-huge", institution_id=f"H{city}001",
        hospital_level="tertiary", category="inpatient", eligible_fen=10**13, amount_fen=10**13,
    )
    messages.append(encode(overdraft))
    for event in rng.sample(events[len(events) // 2 :], k=min(3, len(events) // 2)):
        messages.append(encode(event))  # re-delivered as is: booked once
    reused = dict(rng.choice(events[len(events) // 2 :]))
    reused["source"] = reused["source"] + ".replayed-with-changes"
    messages.append(encode(reused))  # same event_id, other payload: event_id_conflict
    return messages
