"""A simulated province: upstream messages for the demo, the benchmark and the tests.

Every message is a (key, value) pair as upstream services would publish it to
`pooling.events.v1`. Amounts are drawn from ranges around the seeds' figures
(a resident contribution of 380 yuan a head in 2025, subsidies split by level),
and claims are kept below what each fund has received, so a clean stream books
in full; `with_faults` adds the bad and duplicate messages a real feed has.

The flows of RULES.md revision 2 are in the mix: employees' own contributions credit the
city's employee personal accounts (E6, `personal_account_share_bp` of them, the rest the
pooling fund) and some claims are paid from them (`paid_from: personal_account`), some
claims are treated in another city of the province (E7 `institution_city`), medical
assistance pays some resident contributions and each city's resident fund pays the
major-illness premium once a year (E8), and institutions repay part of earlier claims (P4).
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
#: Resident contributions paid by medical assistance for aid recipients (E8), basis points.
MEDICAL_ASSISTANCE_BP = 1_000
#: Employee claims paid from the personal accounts (E6) where they hold enough, basis points.
PERSONAL_ACCOUNT_CLAIM_BP = 4_000
#: Claims treated in another city of the province (E7), basis points.
OUT_OF_CITY_BP = 1_000
RECOVERY_REASONS = ("fraud", "overpayment", "audit_adjustment")
#: The largest yearly major-illness premium of one city's resident fund (E8), in fen.
PREMIUM_FEN_MAX = 20_000_000
INSURERS = ("PICC-AH", "CPIC-AH", "ChinaLife-AH")


@dataclass
class PaidClaim:
    """A pooling claim the simulator paid, and what institutions have repaid of it (P4)."""

    event_id: str
    amount_fen: int
    institution_id: str
    institution_city: str
    recovered_fen: int = 0


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
    #: E6: what each city's employee personal accounts received and paid, by city.
    personal_received_fen: dict[str, int] = field(default_factory=dict)
    personal_paid_fen: dict[str, int] = field(default_factory=dict)
    #: P4: per fund, the pooling claims with something left to recover.
    recoverable: dict[tuple[str, str], list[PaidClaim]] = field(default_factory=dict)
    #: E8: (city, fiscal year) of every premium paid.
    premiums: set[tuple[str, int]] = field(default_factory=set)
    #: The latest step of each city's movements (their business time never goes back).
    city_step: dict[str, int] = field(default_factory=dict)
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
        """One contribution, subsidy, interest credit, recovery, premium or claim for `city`."""
        scheme = self.rng.choice(("employee", "resident"))
        # business time moves on with each step: a fund's movements arrive in the order they
        # happened, so a claim the simulator sizes on what the fund received is covered at
        # its own instant too (E1 in business time); a step that found no room for a claim
        # went on to the next one, and the city's later movements never go back before it
        step = max(step, self.city_step.get(city, 0))
        self.city_step[city] = step
        at = self._at(0, step * self.seconds_per_step)
        roll = self.rng.random()
        key = (city, scheme)
        event: dict[str, Any] | None
        if roll < 0.45:
            return self._contribution(city, scheme, at)
        if roll < 0.60 and scheme == "resident":
            event = self.envelope("SubsidyDisbursed", at, "finance.anhui")
            event.update(
                city=city,
                scheme=scheme,
                level=self.rng.choice(SUBSIDY_LEVELS),
                amount_fen=self.rng.randint(100_000, 5_000_000),
            )
            self._income(key, event["amount_fen"])
            return event
        if roll < 0.63:
            event = self.envelope("InterestCredited", at, "bank.anhui")
            event.update(city=city, scheme=scheme, amount_fen=self.rng.randint(100, 100_000))
            self._income(key, event["amount_fen"])
            return event
        event = None
        if roll < 0.66:
            event = self._recovery(city, scheme, at)
        elif roll < 0.68 and scheme == "resident":
            event = self.premium(city, at)
        if event is None:
            event = self._claim(city, scheme, at, step)
        return self.movement(city, step + 1) if event is None else event

    def _income(self, key: tuple[str, str], amount_fen: int) -> None:
        self.received_fen[key] = self.received_fen.get(key, 0) + amount_fen
        self.income_fen[key] = self.income_fen.get(key, 0) + amount_fen

    def _contribution(self, city: str, scheme: str, at: str) -> dict[str, Any]:
        """Employers', employees', residents' or (E8) medical assistance's contribution.

        E6: an employee's own contribution credits the personal accounts with the policy's
        share (rounded down) and the pooling fund with the rest; only what the pooling fund
        gets is its income and its extraction base (X2)."""
        event = self.envelope("ContributionReceived", at, "tax.anhui")
        headcount = self.rng.randint(1, 500)
        payer_kind = self.rng.choice(PAYER_KINDS[scheme])
        per_head = (38_000, 35_000, 120_000)
        if scheme == "resident" and self.rng.randrange(10_000) < MEDICAL_ASSISTANCE_BP:
            payer_kind, per_head = "medical_assistance", (38_000, 35_000)
        event.update(
            city=city,
            scheme=scheme,
            payer_kind=payer_kind,
            amount_fen=headcount * self.rng.choice(per_head),
            headcount=headcount,
        )
        amount = event["amount_fen"]
        personal = 0
        if scheme == "employee" and payer_kind == "individual":
            personal = amount * self.policy.personal_account_share_bp // 10_000
            self.personal_received_fen[city] = self.personal_received_fen.get(city, 0) + personal
        key = (city, scheme)
        self._income(key, amount - personal)
        self.contributed_fen[key] = self.contributed_fen.get(key, 0) + amount - personal
        return event

    def _claim(self, city: str, scheme: str, at: str, step: int) -> dict[str, Any] | None:
        """A claim on the pooling fund or (E6, employees) the personal accounts, below what
        that fund received; treated in another city now and then (E7). None: no room."""
        key = (city, scheme)
        personal_room = 0
        if scheme == "employee" and self.rng.randrange(10_000) < PERSONAL_ACCOUNT_CLAIM_BP:
            personal_room = (
                self.personal_received_fen.get(city, 0) * CLAIM_SHARE_BP // 10_000
                - self.personal_paid_fen.get(city, 0)
            )
        personal = personal_room >= 1_000
        room = personal_room if personal else (
            self.received_fen.get(key, 0) * CLAIM_SHARE_BP // 10_000 - self.paid_fen.get(key, 0)
        )
        if room < 1_000:
            return None
        amount = self.rng.randint(1, min(room, CLAIM_FEN_MAX))
        treated_in = city
        if len(self.policy.cities) > 1 and self.rng.randrange(10_000) < OUT_OF_CITY_BP:
            treated_in = self.rng.choice([c for c in self.policy.cities if c != city])
        event = self.envelope("ClaimPaid", at, "settlement.anhui")
        event.update(
            city=city,
            scheme=scheme,
            claim_id=f"C{step}-{self.rng.getrandbits(32):08x}",
            institution_id=f"H{treated_in}{self.rng.randint(1, 40):03d}",
            hospital_level=self.rng.choice(HOSPITAL_LEVELS),
            category=self.rng.choice(CATEGORIES),
            eligible_fen=amount + self.rng.randint(0, amount),
            amount_fen=amount,
        )
        if treated_in != city:
            event["institution_city"] = treated_in
        if personal:
            event["paid_from"] = "personal_account"
            self.personal_paid_fen[city] = self.personal_paid_fen.get(city, 0) + amount
        else:
            self.paid_fen[key] = self.paid_fen.get(key, 0) + amount
            self.recoverable.setdefault(key, []).append(
                PaidClaim(event["event_id"], amount, event["institution_id"], treated_in)
            )
        return event

    def _recovery(self, city: str, scheme: str, at: str) -> dict[str, Any] | None:
        """P4: an institution repays part (now and then all) of what's left of an earlier
        pooling claim of the fund. None: no claim left to recover from."""
        key = (city, scheme)
        claims = self.recoverable.get(key)
        if not claims:
            return None
        index = self.rng.randrange(len(claims))
        paid = claims[index]
        left = paid.amount_fen - paid.recovered_fen
        amount = left if self.rng.random() < 0.2 else self.rng.randint(1, left)
        paid.recovered_fen += amount
        if paid.recovered_fen == paid.amount_fen:  # nothing left: out of the draw
            claims[index] = claims[-1]
            claims.pop()
        event = self.envelope("RecoveryReceived", at, "audit.anhui")
        event.update(
            city=city,
            scheme=scheme,
            institution_id=paid.institution_id,
            reason=self.rng.choice(RECOVERY_REASONS),
            claim_event_id=paid.event_id,
            amount_fen=amount,
        )
        if paid.institution_city != city:
            event["institution_city"] = paid.institution_city
        # money back in the fund (E1), but neither income (X2, X5) nor less paid out (B3)
        self.received_fen[key] = self.received_fen.get(key, 0) + amount
        return event

    def premium(self, city: str, at: str) -> dict[str, Any] | None:
        """E8: the resident fund's yearly major-illness premium, once per city and fiscal year,
        dated in it, sized like a claim on what the fund received. None: paid, or no room."""
        key = (city, "resident")
        fiscal_year = datetime.fromisoformat(at).astimezone(CHINA_STANDARD_TIME).year
        if (city, fiscal_year) in self.premiums:
            return None
        room = self.received_fen.get(key, 0) * CLAIM_SHARE_BP // 10_000 - self.paid_fen.get(key, 0)
        if room < 1_000:
            return None
        event = self.envelope("CriticalIllnessPremiumPaid", at, "nhsa.anhui")
        event.update(
            city=city,
            scheme="resident",
            insurer_id=self.rng.choice(INSURERS),
            fiscal_year=fiscal_year,
            amount_fen=self.rng.randint(1, min(room, PREMIUM_FEN_MAX)),
        )
        self.premiums.add((city, fiscal_year))
        self.paid_fen[key] = self.paid_fen.get(key, 0) + event["amount_fen"]  # B3 counts it with claims
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

    1. the month: openings, approved budgets, movements (revision 2's flows among them: see
       the module), every city's major-illness premium (E8) and 2025 resident extraction
       (5 % of its previous-year income, X2);
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
    # every city's resident fund pays its yearly major-illness premium (E8) by the 18th
    premiums = [p for city in cities if (p := sim.premium(city, sim._at(18, 0))) is not None]
    gap_city, budget_city = cities[3], cities[5]
    gap_fen = 10_000_000
    budgets = []
    for city in cities:
        for scheme in ("employee", "resident"):
            key = (city, scheme)
            budget = sim.envelope("BudgetApproved", f"{year}-01-05T10:00:00+08:00", "nhsa.anhui")
            income = sim.base_fen[key] * 105 // 100
            # never below what the simulated year pays (B3): the month's claims and premium, and
            # the gap city's claims, `gap_fen` above its income
            spent = max(sim.paid_fen.get(key, 0), sim.income_fen.get(key, 0) + gap_fen)
            expenditure = max(income * 98 // 100, spent * 11 // 10)
            budget.update(city=city, scheme=scheme, fiscal_year=year, income_fen=max(income, expenditure),
                          expenditure_fen=expenditure)
            budgets.append(budget)
    extractions = []
    for city in cities:
        extraction = sim.envelope("AdjustmentFundExtracted", sim._at(19, 0), "nhsa.anhui")
        extraction.update(
            city=city, scheme="resident", fiscal_year=year,
            amount_fen=sim.base_fen[(city, "resident")] * policy.extraction_rate_bp // 10_000,
        )
        extractions.append(extraction)
    phase1 = [*openings, *budgets, *(e for e in month if e["type"] != "OpeningBalanceRecorded"), *premiums, *extractions]

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
               income_fen=max(sim.base_fen[(budget_city, "resident")], paid + 500_000), expenditure_fen=paid)
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
