"""A realistic province (issue 10): Anhui's provincial pooling over several fiscal years, as a
deterministic stream of upstream messages.

`ProvinceSimulation(policy, events=N, seed=S, years=(2024, 2026))`: iterating it (or calling
`messages()`) runs the stream from the start and yields exactly N `Simulated` items in
publication order: the Kafka key, the JSON value (the bytes a producer sends and `pooling-ledger
simulate` writes as one line), the event_id and the `Expected` fate the ledger must give it
(accepted; rejected with a reason code; duplicate).
Nothing is kept per event: the state is per fund and per year, plus a few bounded pools of
recent events (to recover from, reverse or re-deliver), so 10**7 events take the memory of
10**4. `totals` counts what was yielded (by type, fate, kind, money accepted).

What the stream holds (every figure integer fen):

* the policy's cities (Anhui's 16), each with both schemes, sized by the 2020 census
  (`POPULATION_10K`) and an assumed share of employees among the insured (`EMPLOYEE_SHARE_BP`);
* `OpeningBalanceRecorded` for the first year of every city fund and both provincial
  adjustment funds, first of all (the employees' personal accounts, E6, have no opening event:
  they start empty and fill with the employees' own contributions);
* every month, contributions (employers; employees' own, which the ledger books to the city's
  personal accounts, E6; residents and medical assistance, E8), resident fiscal subsidies with
  a headcount at the per-capita standard of each finance level (`subsidy_per_capita_fen`:
  the policy's standard where it has one, I3), claims by category and hospital level with a
  winter peak (`SEASON_PERMILLE`), some treated in another city (E7 `institution_city`), some
  employees' paid from their personal accounts (E6), recoveries against earlier claims (P4)
  and reversals (P2); quarterly interest; each city's major-illness premium in March (E8);
* budgets approved each December for the next year (the first year's on its first day),
  `BudgetAdjusted` for a few funds each July and whenever a fund's claims outrun its budget
  (B3, B5);
* the adjustment-fund extractions in two instalments (March, September) from each scheme's
  `adjustment_from` on, sized from the previous year's collected contributions the simulator
  counted (employers' for employees: E6), within X2's cap and X4's ceiling;
* two designated cities per scheme and year whose claims run above their income (a gap), each
  receiving in December an allocation within `gap_share_bp` of its gap (X5) where the phase is
  active;
* year closes on 6 January for every city fund, then both adjustment funds (P1);
* a configurable share (`BadShare`) of re-delivered duplicates, invalid messages
  (`invalid_schema`, `invalid_json`), rule-breaking events (each with the one reason the
  ledger gives it, `RULE_BREAKERS`) and valid contributions delivered late (dated up to three
  days before the events around them: the only out-of-order valid events).

Business time: messages are yielded in non-decreasing `occurred_at` except those whose
`Expected.late` is true (late valid contributions and, by their nature, re-deliveries, reused
event_ids, claims for a closed year and reversals dated before their original). Every debit is sized on the balance the simulator has booked before its
instant, so E1 holds in business time; rejected events change nothing the simulator counts.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from math import isqrt
from typing import Any

import orjson

from ledger.clock import CHINA_STANDARD_TIME
from schemas.policy import AllocationReason, Policy, Scheme

# ---------------------------------------------------------------------------- assumptions

#: Resident population of Anhui's cities in the 2020 census (7th national census, Anhui
#: statistical bulletin), in ten thousands, rounded: relative sizes only. A city of another
#: policy gets DEFAULT_POPULATION_10K.
POPULATION_10K = {
    "340100": 937,  # Hefei
    "340200": 364,  # Wuhu
    "340300": 330,  # Bengbu
    "340400": 303,  # Huainan
    "340500": 216,  # Ma'anshan
    "340600": 197,  # Huaibei
    "340700": 131,  # Tongling
    "340800": 417,  # Anqing
    "341000": 133,  # Huangshan
    "341100": 399,  # Chuzhou
    "341200": 820,  # Fuyang
    "341300": 532,  # Suzhou
    "341500": 439,  # Lu'an
    "341600": 500,  # Bozhou
    "341700": 134,  # Chizhou
    "341800": 250,  # Xuancheng
}
DEFAULT_POPULATION_10K = 300
#: Share of employees among a city's insured (basis points): an assumption from urbanisation
#: (Anhui as a whole ~19 %: about 12 of 62 million insured are employees), highest in Hefei and
#: the industrial cities along the Yangtze.
EMPLOYEE_SHARE_BP = {
    "340100": 4000, "340200": 2500, "340300": 1800, "340400": 2000, "340500": 2500,
    "340600": 2000, "340700": 2500, "340800": 1500, "341000": 1800, "341100": 1700,
    "341200": 1100, "341300": 1200, "341500": 1300, "341600": 1100, "341700": 1600,
    "341800": 1800,
}
DEFAULT_EMPLOYEE_SHARE_BP = 1800
#: An employee insured makes about twice the upstream events of a resident (monthly employer
#: remittances, more claims a head).
EMPLOYEE_EVENT_INTENSITY = 2

#: Resident fiscal subsidy a head, all levels together (fen): the seeds' 610 yuan in 2022
#: (national notice 2022), +30 yuan a year as the national notices since have raised it
#: (640 in 2023, 670 in 2024, 700 in 2025); 2026's 730 is an assumption.
def national_subsidy_fen(year: int) -> int:
    return 61_000 + 3_000 * (year - 2022)


#: Resident individual contribution a head (fen): 350 yuan in 2022, 380 in 2023, 400 from
#: 2024 (national notices; 2025 on assumed unchanged).
def resident_contribution_fen(year: int) -> int:
    return 35_000 if year <= 2022 else 38_000 if year == 2023 else 40_000


#: Split of the subsidy by finance level (basis points): the central government pays 60 % in a
#: central-region province such as Anhui (80 % in the west); the local 40 % is assumed split
#: provincial 20 %, city 10 %, county 10 %.
LEVEL_SHARE_BP = {"central": 6000, "provincial": 2000, "city": 1000, "county": 1000}
#: Employers' and employees' own monthly contributions a head in 2024 (fen): about 7 % and 2 %
#: of a 6,500 yuan contribution base (an assumption), growing 4 % a year.
EMPLOYER_MONTHLY_FEN_2024 = 45_500
EMPLOYEE_OWN_MONTHLY_FEN_2024 = 13_000
WAGE_GROWTH_BP = 400

#: Claims by month, per mille of an average month: the winter peak (respiratory illness,
#: January and December), the summer low.
SEASON_PERMILLE = (1300, 1150, 1000, 920, 880, 850, 880, 900, 920, 980, 1070, 1250)
#: Movement types of a tick, per mille, before the season (claims are seasonal).
RESIDENT_MIX = (("contribution", 200), ("subsidy", 80), ("claim", 690), ("recovery", 20), ("reversal", 10))
EMPLOYEE_MIX = (
    ("employer", 200), ("individual", 140), ("claim", 380), ("personal_claim", 250),
    ("recovery", 20), ("reversal", 10),
)
SEASONAL = frozenset({"claim", "personal_claim"})
#: Headcount behind one contribution or subsidy event (a remittance, a disbursement batch).
RESIDENT_HEADCOUNT = (20, 400)
SUBSIDY_HEADCOUNT = (200, 4000)  # 4 levels x the residents' contributions' headcount
EMPLOYEE_HEADCOUNT = (3, 300)
#: Resident contributions medical assistance pays for aid recipients (E8), basis points.
MEDICAL_ASSISTANCE_BP = 1000
#: Claims by category and hospital level: share (per mille) and relative size (per mille).
CATEGORIES = {
    "resident": (("inpatient", 420, 2000), ("outpatient", 400, 250), ("chronic_special", 150, 800),
                 ("maternity", 30, 700)),
    "employee": (("inpatient", 380, 2000), ("outpatient", 400, 250), ("chronic_special", 140, 800),
                 ("maternity", 80, 700)),
    "personal": (("outpatient", 800, 800), ("chronic_special", 200, 1800)),
}
LEVELS = {
    "pooling": (("tertiary", 350, 1600), ("secondary", 400, 900), ("primary", 250, 350)),
    "personal": (("tertiary", 150, 1500), ("secondary", 350, 1000), ("primary", 500, 800)),
}
#: Pooling claims treated in another city of the province (E7), basis points; Hefei, the
#: provincial medical centre, treats four times its share of them.
OUT_OF_CITY_BP = 800
#: Expenditure (claims and premium) as a share of income: most funds run a surplus, the
#: designated gap funds (GAP_FUNDS_PER_SCHEME a year) a deficit.
RATIO_BP = (8500, 9700)
GAP_RATIO_BP = (10600, 11500)
GAP_FUNDS_PER_SCHEME = 2
#: The major-illness premium (E8): this share of a resident fund's yearly income.
PREMIUM_BP = 500
#: Personal accounts pay out about this share of what they receive (E6).
PERSONAL_PAYOUT_BP = 8500
#: Interest a quarter on a fund's balance (1.5 % a year), per 100,000.
INTEREST_PER_100K_QUARTER = 375
#: Approved expenditure above the planned expenditure (basis points): some funds still need
#: a BudgetAdjusted when their claims run high.
BUDGET_MARGIN_BP = (200, 1000)
#: ... plus this over the square root of the fund's planned claims a year: a total of few claims
#: strays further from its plan (about 120 % a claim's spread, twice over), so small streams do
#: not adjust every budget.
BUDGET_NOISE_BP = 24_000
#: Funds whose budget is revised in July each year (a mid-year adjustment raising expenditure by
#: MIDYEAR_RAISE_BP), besides those whose claims outrun their budget.
MIDYEAR_ADJUSTMENTS = 2
MIDYEAR_RAISE_BP = (300, 800)
RECOVERY_REASONS = (("overpayment", 50), ("audit_adjustment", 35), ("fraud", 15))
ALLOCATION_REASONS = ("policy_adjustment", "major_epidemic", "other_reasonable", "benefit_increase")
INSURERS = ("PICC-AH", "CPIC-AH", "ChinaLife-AH")
REVERSAL_REASONS = ("entered in error", "paid twice by the bank", "wrong fund", "cancelled upstream")
#: Bounded pools (per fund) of recent claims to recover from and events to reverse, and of recent
#: accepted messages to re-deliver: all the memory that grows with nothing.
CLAIM_POOL = 48
REVERSIBLE_POOL = 48
RECENT_POOL = 128
REVERSED_POOL = 64

SCHEMES = ("employee", "resident")
PPM = 1_000_000

# ------------------------------------------------------------------------------ the API


@dataclass(frozen=True, slots=True)
class Expected:
    """The fate the ledger must give a message.

    `status`: accepted, rejected or duplicate; `reason`: the rejection's code; `kind`: valid,
    late (a valid event delivered out of order), duplicate (re-delivered as is), invalid
    (schema or JSON) or rule (breaks one rule on purpose); `late`: dated before the latest
    business time already published.
    """

    status: str
    reason: str | None = None
    kind: str = "valid"
    late: bool = False

    @property
    def fate(self) -> str:
        """`accepted`, `duplicate` or `rejected:REASON`."""
        return self.status if self.reason is None else f"{self.status}:{self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "kind": self.kind, "late": self.late}


ACCEPTED = Expected("accepted")
LATE_ACCEPTED = Expected("accepted", kind="late")
DUPLICATE = Expected("duplicate", kind="duplicate")


@dataclass(frozen=True, slots=True)
class Simulated:
    """One upstream message: its Kafka key, its value (a JSON object, or invalid bytes), the
    event_id it carries (None when unreadable), and its expected fate."""

    key: bytes
    value: bytes
    event_id: str | None
    expected: Expected


@dataclass(frozen=True)
class BadShare:
    """Shares of all messages (0..1): re-delivered duplicates, invalid messages, rule-breaking
    events, and valid contributions delivered late (out of business-time order)."""

    duplicate: float = 0.0035
    invalid: float = 0.0015
    rule: float = 0.0035
    late: float = 0.0015

    @property
    def total(self) -> float:
        return self.duplicate + self.invalid + self.rule + self.late

    @classmethod
    def parse(cls, text: str) -> BadShare:
        """`0.01` (split 35 % duplicates, 15 % invalid, 35 % rule-breaking, 15 % late), or
        `duplicate=0.004,invalid=0.002,rule=0.004,late=0` (names left out are 0)."""
        text = text.strip()
        if "=" not in text:
            share = float(text)
            if not 0 <= share <= 0.5:
                raise ValueError(f"a bad share is between 0 and 0.5, not {share}")
            return cls(share * 0.35, share * 0.15, share * 0.35, share * 0.15)
        parts: dict[str, float] = {}
        for item in text.split(","):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in ("duplicate", "invalid", "rule", "late"):
                raise ValueError(f"unknown share {name!r}: duplicate, invalid, rule or late")
            parts[name] = float(value)
        shares = cls(**{n: parts.get(n, 0.0) for n in ("duplicate", "invalid", "rule", "late")})
        if min(parts.values(), default=0) < 0 or shares.total > 0.5:
            raise ValueError("shares are >= 0 and together at most 0.5")
        return shares


@dataclass
class Totals:
    """What the stream yielded so far: counts by type, fate (`accepted`, `duplicate`,
    `rejected:REASON`) and kind, late messages, and the money of the messages expected accepted
    by type (`amount_fen`, an opening's `balance_fen`)."""

    messages: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_fate: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    late: int = 0
    accepted_fen: Counter[str] = field(default_factory=Counter)
    first_occurred_at: str | None = None
    last_occurred_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "by_type": dict(sorted(self.by_type.items())),
            "by_fate": dict(sorted(self.by_fate.items())),
            "by_kind": dict(sorted(self.by_kind.items())),
            "late": self.late,
            "accepted_fen": dict(sorted(self.accepted_fen.items())),
            "first_occurred_at": self.first_occurred_at,
            "last_occurred_at": self.last_occurred_at,
        }


def parse_years(text: str) -> tuple[int, int]:
    """`2024-2026` or `2025`: the first and last fiscal year."""
    first, _, last = text.strip().partition("-")
    years = (int(first), int(last or first))
    if not 2000 < years[0] <= years[1] < 2100:
        raise ValueError(f"years run FIRST-LAST between 2001 and 2099, not {text!r}")
    return years


# ------------------------------------------------------------------------ inner state


class _Fund:
    """What the simulator knows of one city pooling fund (and, for employees, the city's
    personal accounts): the balance, and per fiscal year what the rules read."""

    __slots__ = (
        "allocated", "balance", "budget_exp", "budget_inc", "city", "claim_count", "claim_mean", "claims",
        "closed", "collected", "expected_collected", "expected_income", "extracted", "gap_years",
        "income", "opening_income", "paid", "personal", "personal_mean", "premium", "ratio_bp",
        "reversible", "scheme", "weight",
    )

    def __init__(self, city: str, scheme: str, weight: int) -> None:
        self.city, self.scheme, self.weight = city, scheme, weight
        self.balance = 0
        self.personal = 0  # E6: the city's personal accounts (employee funds only)
        self.opening_income = 0
        # fiscal year -> fen
        self.income: Counter[int] = Counter()  # X5: contributions (pooling part), subsidies, interest
        self.collected: Counter[int] = Counter()  # X2/X3: the extraction base of the next year
        self.paid: Counter[int] = Counter()  # B3: claims and premium, net of reversals
        self.extracted: Counter[int] = Counter()
        self.allocated: Counter[int] = Counter()
        self.budget_exp: dict[int, int] = {}
        self.budget_inc: dict[int, int] = {}
        self.closed: set[int] = set()
        # the plan, per fiscal year
        self.ratio_bp: dict[int, int] = {}
        self.gap_years: set[int] = set()
        self.expected_income: dict[int, int] = {}
        self.expected_collected: dict[int, int] = {}
        self.claim_mean: dict[int, int] = {}
        self.claim_count: dict[int, int] = {}
        self.personal_mean: dict[int, int] = {}
        self.premium: dict[int, int] = {}
        self.claims: deque[_Booked] = deque(maxlen=CLAIM_POOL)
        self.reversible: deque[_Booked] = deque(maxlen=REVERSIBLE_POOL)


class _Booked:
    """An accepted movement the simulator may later recover from or reverse."""

    __slots__ = ("at", "event_id", "institution_city", "institution_id", "kind", "personal_fen",
                 "pooling_fen", "recovered_fen", "reversed", "source", "year")

    def __init__(self, event_id: str, kind: str, at: int, year: int, source: str,
                 pooling_fen: int, personal_fen: int = 0, institution_id: str = "",
                 institution_city: str = "") -> None:
        self.event_id, self.kind, self.at, self.year, self.source = event_id, kind, at, year, source
        self.pooling_fen, self.personal_fen = pooling_fen, personal_fen
        self.institution_id, self.institution_city = institution_id, institution_city
        self.recovered_fen = 0
        self.reversed = False


def _ts(year: int, month: int, day: int = 1, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=CHINA_STANDARD_TIME).timestamp())


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, CHINA_STANDARD_TIME).isoformat()


def _day(ts: int) -> date:
    return datetime.fromtimestamp(ts, CHINA_STANDARD_TIME).date()


def _month_end(year: int, month: int) -> int:
    return _ts(year + 1, 1) if month == 12 else _ts(year, month + 1)


def _grown(fen_2024: int, year: int) -> int:
    """A 2024 figure grown by WAGE_GROWTH_BP a year (rounded down each year)."""
    fen = fen_2024
    for _ in range(2024, year):
        fen = fen * (10_000 + WAGE_GROWTH_BP) // 10_000
    return fen


def _mean(bounds: tuple[int, int]) -> int:
    return (bounds[0] + bounds[1]) // 2


Handler = Callable[[int], Iterator[Simulated]]

# ------------------------------------------------------------------------ the simulator


class ProvinceSimulation:
    """A deterministic province over fiscal years `years` (first, last), `events` messages in all.

    `messages()` yields exactly `events` messages (`MIN_EVENTS_PER_YEAR` a year at least) and
    may be called again for the same stream from the start; `totals` describes the last run.
    """

    MIN_EVENTS_PER_YEAR = 1_000

    def __init__(
        self,
        policy: Policy,
        *,
        events: int,
        seed: int = 1,
        years: tuple[int, int] = (2024, 2026),
        bad_share: BadShare | None = None,
    ) -> None:
        self.policy = policy
        self.events = events
        self.seed = seed
        self.first_year, self.last_year = years
        self.bad_share = BadShare() if bad_share is None else bad_share
        if not 2000 < self.first_year <= self.last_year < 2100:
            raise ValueError(f"years must run from a first to a last year, not {years}")
        if self.first_year < policy.effective_from.year:
            raise ValueError(f"the policy is in force from {policy.effective_from}, after {self.first_year}")
        year_count = self.last_year - self.first_year + 1
        if events < self.MIN_EVENTS_PER_YEAR * year_count:
            raise ValueError(f"at least {self.MIN_EVENTS_PER_YEAR * year_count:,} events for {year_count} year(s)")
        self.cities = list(policy.cities)
        self.totals = Totals()
        self._reset()

    # -- the plan -----------------------------------------------------------------------

    def _reset(self) -> None:
        """Fresh state and plan: every run of `messages()` starts here, so runs are identical."""
        self.rng = random.Random(self.seed)
        self._random = self.rng.random
        self._idbits = random.Random(self.seed * 1_000_003 + 17).getrandbits
        self.totals = Totals()
        self.now = _ts(self.first_year, 1)
        self.year, self.month = self.first_year, 1
        self.funds: dict[tuple[str, str], _Fund] = {}
        for city in self.cities:
            population = POPULATION_10K.get(city, DEFAULT_POPULATION_10K)
            employee_bp = EMPLOYEE_SHARE_BP.get(city, DEFAULT_EMPLOYEE_SHARE_BP)
            self.funds[(city, "employee")] = _Fund(city, "employee", population * employee_bp * EMPLOYEE_EVENT_INTENSITY)
            self.funds[(city, "resident")] = _Fund(city, "resident", population * (10_000 - employee_bp))
        self.fund_list = list(self.funds.values())
        self.province_balance = {s: 0 for s in SCHEMES}
        self.recent: deque[tuple[dict[str, Any], bytes, bytes]] = deque(maxlen=RECENT_POOL)  # event, value, key
        self.reversed_ids: deque[tuple[str, str]] = deque(maxlen=REVERSED_POOL)  # (event_id, its city)
        self.claim_seq = 0
        self.share_bp = self.policy.personal_account_share_bp
        self.base_with_subsidies = self.policy.extraction_base == "contributions_and_subsidies"
        # E7: where insured people of each city are treated when not at home (Hefei x4)
        self.treating: dict[str, tuple[list[str], list[int]]] = {}
        for city in self.cities:
            others = [c for c in self.cities if c != city]
            cum, total = [], 0
            for other in others:
                total += POPULATION_10K.get(other, DEFAULT_POPULATION_10K) * (4 if other == "340100" else 1)
                cum.append(total)
            self.treating[city] = (others, cum)
        self._plan()

    def _mix(self, scheme: str, month: int) -> list[tuple[str, int]]:
        mix = RESIDENT_MIX if scheme == "resident" else EMPLOYEE_MIX
        return [(t, w * SEASON_PERMILLE[month - 1] // 1000 if t in SEASONAL else w) for t, w in mix]

    def _plan(self) -> None:
        """Ticks per month (by the mix and the season), the expected money of every fund and
        year, the ratios (gap funds), claim sizes, premiums and budgets' bases."""
        months = [(y, m) for y in range(self.first_year, self.last_year + 1) for m in range(1, 13)]
        self.mix_cum: dict[tuple[str, int], tuple[list[str], list[int]]] = {}
        self.midyear: dict[int, list[_Fund]] = {}
        for scheme in SCHEMES:
            for m in range(1, 13):
                mix = self._mix(scheme, m)
                cum, total = [], 0
                for _, w in mix:
                    total += w
                    cum.append(total)
                self.mix_cum[(scheme, m)] = ([t for t, _ in mix], cum)
        scheme_mass = {(s, m): sum(w for _, w in self._mix(s, m)) for s in SCHEMES for m in range(1, 13)}
        month_mass = {m: sum(f.weight * scheme_mass[(f.scheme, m)] for f in self.fund_list) for m in range(1, 13)}
        self.fund_cum: dict[int, list[int]] = {}
        for m in range(1, 13):
            cum, total = [], 0
            for f in self.fund_list:
                total += f.weight * scheme_mass[(f.scheme, m)]
                cum.append(total)
            self.fund_cum[m] = cum
        # ratios: GAP_FUNDS_PER_SCHEME funds of each scheme run a gap each year
        for year in range(self.first_year, self.last_year + 1):
            for scheme in SCHEMES:
                funds = [f for f in self.fund_list if f.scheme == scheme]
                gap = set(self.rng.sample(range(len(funds)), k=min(GAP_FUNDS_PER_SCHEME, len(funds))))
                for index, f in enumerate(funds):
                    bounds = GAP_RATIO_BP if index in gap else RATIO_BP
                    f.ratio_bp[year] = self._int(*bounds)
                    if index in gap:
                        f.gap_years.add(year)
            self.midyear[year] = self.rng.sample(self.fund_list, k=min(MIDYEAR_ADJUSTMENTS, len(self.fund_list)))
        # scheduled messages planned (an upper bound: a handler may send fewer), the rest ticks
        planned = sum(count for y, m in months for _, _, _, count in self._schedule(y, m))
        self.final_count = sum(count for _, _, _, count in self._final_schedule())
        planned += self.final_count
        ticks = self.events - planned
        if ticks < self.events // 2:
            raise ValueError(f"{self.events:,} events leave too few movements beside {planned} scheduled ones")
        share = self.bad_share
        scale = self.events / ticks  # fault shares are of all messages, drawn at ticks
        self.p_duplicate = share.duplicate * scale
        self.p_invalid = self.p_duplicate + share.invalid * scale
        self.p_rule = self.p_invalid + share.rule * scale
        self.p_late = self.p_rule + share.late * scale
        moving_ppm = PPM - int((share.duplicate + share.invalid + share.rule) * scale * PPM)
        all_mass = sum(month_mass[m] for _, m in months)
        self.quota = {(y, m): ticks * month_mass[m] // all_mass for y, m in months}
        # expected money of each fund and year, from the expected ticks of each type (counted in
        # millionths of a tick: a small fund has less than one of a kind a month)
        for f in self.fund_list:
            for year in range(self.first_year, self.last_year + 1):
                micro: Counter[str] = Counter()
                for m in range(1, 13):
                    ticks_m = self.quota[(year, m)] * moving_ppm
                    for t, w in self._mix(f.scheme, m):
                        micro[t] += ticks_m * f.weight * w // month_mass[m]
                self._plan_fund(f, year, micro)

    def _plan_fund(self, f: _Fund, year: int, micro: Counter[str]) -> None:
        """A fund's expected income, extraction base, premium and claim sizes in `year`, from its
        expected ticks of each type (`micro`: in millionths)."""
        if f.scheme == "resident":
            contributions = micro["contribution"] * _mean(RESIDENT_HEADCOUNT) * resident_contribution_fen(year) // PPM
            per_capita = sum(self.subsidy_per_capita_fen(level, year) for level in LEVEL_SHARE_BP)
            subsidies = micro["subsidy"] * _mean(SUBSIDY_HEADCOUNT) * per_capita // (len(LEVEL_SHARE_BP) * PPM)
            income = contributions + subsidies
            collected = income if self.base_with_subsidies else contributions
            premium = income * PREMIUM_BP // 10_000
        else:
            heads = _mean(EMPLOYEE_HEADCOUNT)
            own = micro["individual"] * heads * _grown(EMPLOYEE_OWN_MONTHLY_FEN_2024, year) // PPM
            personal = own * self.share_bp // 10_000
            employer = micro["employer"] * heads * _grown(EMPLOYER_MONTHLY_FEN_2024, year) // PPM
            income = collected = employer + own - personal
            premium = 0
            payout = personal * PERSONAL_PAYOUT_BP // 10_000
            f.personal_mean[year] = max(1_000, payout * PPM // max(1, micro["personal_claim"]))
        f.expected_income[year] = income
        f.expected_collected[year] = collected
        f.premium[year] = premium
        expenditure = income * f.ratio_bp[year] // 10_000
        f.claim_count[year] = micro["claim"] // PPM
        f.claim_mean[year] = max(1_000, (expenditure - premium) * PPM // max(1, micro["claim"]))

    def subsidy_per_capita_fen(self, level: str, year: int) -> int:
        """I3: the policy's per-capita standard of `level` in `year` where it has one, else the
        national figure's share of that level (LEVEL_SHARE_BP), never more a head than a
        standard of all levels together allows."""
        for standard in self.policy.subsidy_standards:
            if standard.fiscal_year == year and standard.level == level and standard.scheme == "resident":
                return standard.per_capita_fen[0]
        fen = national_subsidy_fen(year) * LEVEL_SHARE_BP[level] // 10_000
        for total in self.policy.subsidy_totals:
            if total.fiscal_year == year and level in total.levels and total.scheme == "resident":
                fen = min(fen, max(total.per_capita_fen))
        return fen

    def _phase_active(self, scheme: str, ts: int, fiscal_year: int) -> bool:
        """X1, as the ledger reads it: the day and the fiscal year are both in the phase."""
        start = self.policy.adjustment_from.get(Scheme(scheme))
        return start is not None and _day(ts) >= start and fiscal_year >= start.year

    # -- the schedule ---------------------------------------------------------------------

    def _schedule(self, y: int, m: int) -> list[tuple[int, int, Handler, int]]:
        """The month's scheduled messages: (instant, order, handler, most messages it sends)."""
        cities = len(self.cities)
        funds = 2 * cities
        items: list[tuple[int, int, Handler, int]] = []
        if (y, m) == (self.first_year, 1):
            items.append((_ts(y, 1, 1), 0, self._openings, funds + 2))
            items.append((_ts(y, 1, 1), 1, lambda ts: self._budgets(ts, y), funds))
        if m == 1 and y > self.first_year:
            items.append((_ts(y, 1, 6, 10), 0, lambda ts: self._closes(ts, y - 1), funds + 2))
        if m == 3:
            items.append((_ts(y, 3, 10, 10), 0, self._premiums, cities))
        if m in (3, 6, 9, 12):
            items.append((_ts(y, m, 21, 9), 0, self._interest, funds + 2))
        if m == 7:
            items.append((_ts(y, 7, 15, 10), 0, self._midyear_budgets, MIDYEAR_ADJUSTMENTS))
        if m in (3, 9):
            at = _ts(y, m, 25, 10)
            active = sum(cities for s in SCHEMES if self._phase_active(s, at, y))
            items.append((at, 0, lambda ts: self._extractions(ts, first=m == 3), active))
        if m == 12 and y < self.last_year:
            items.append((_ts(y, 12, 10, 10), 0, lambda ts: self._budgets(ts, y + 1), funds))
        if m == 12:
            at = _ts(y, 12, 20, 10)
            active = sum(
                sum(1 for f in self.fund_list if f.scheme == s and y in f.gap_years)
                for s in SCHEMES if self._phase_active(s, at, y)
            )
            items.append((at, 0, self._allocations, active))
        return sorted(items, key=lambda item: (item[0], item[1]))

    def _final_schedule(self) -> list[tuple[int, int, Handler, int]]:
        last = self.last_year
        return [(_ts(last + 1, 1, 6, 10), 0, lambda ts: self._closes(ts, last), 2 * len(self.cities) + 2)]

    # -- the run --------------------------------------------------------------------------

    def messages(self) -> Iterator[Simulated]:
        """The stream, from the start (the same bytes for the same policy, seed and arguments)."""
        self._reset()
        for y in range(self.first_year, self.last_year + 1):
            for m in range(1, 13):
                yield from self._month(y, m)
        self.year, self.month = self.last_year + 1, 1
        for item in self._final_schedule():
            yield from self._run_item(item)

    __iter__ = messages

    def _run_item(self, item: tuple[int, int, Handler, int]) -> Iterator[Simulated]:
        self.now = max(item[0], self.now)
        yield from item[2](self.now)

    def _month(self, y: int, m: int) -> Iterator[Simulated]:
        self.year, self.month = y, m
        start, end = _ts(y, m), _month_end(y, m)
        if m == 1:
            for f in self.fund_list:  # reversals stay within their fiscal year
                f.reversible.clear()
        schedule = self._schedule(y, m)
        quota = self.quota[(y, m)]
        segments: list[tuple[int, int, int | None]] = [(start, end, quota)]
        if (y, m) == (self.last_year, 12):  # the last ticks make the count exact
            cut = _ts(y, 12, 21, 12)
            segments = [(start, cut, quota * 2 // 3), (cut, end, None)]
        next_item = 0
        for seg_start, seg_end, seg_quota in segments:
            if seg_quota is None:
                seg_quota = max(0, self.events - self.totals.messages - self.final_count)
            span = seg_end - seg_start
            for i in range(seg_quota):
                planned = seg_start + (i * PPM + self._below(PPM)) * span // (seg_quota * PPM)
                while next_item < len(schedule) and schedule[next_item][0] <= planned:
                    yield from self._run_item(schedule[next_item])
                    next_item += 1
                self.now = max(planned, self.now)
                yield self._tick(self.now)
            while next_item < len(schedule) and schedule[next_item][0] < seg_end:
                yield from self._run_item(schedule[next_item])
                next_item += 1

    # -- emitting ---------------------------------------------------------------------------

    def _int(self, low: int, high: int) -> int:
        """A uniform integer in low..high (both included)."""
        return low + int(self._random() * (high - low + 1))

    def _below(self, n: int) -> int:
        return int(self._random() * n)

    def _pick(self, cum: list[int]) -> int:
        """The index drawn by cumulative integer weights `cum`."""
        return bisect_right(cum, int(self._random() * cum[-1]))

    def _id(self) -> str:
        """A random (version 4) UUID, as `str(uuid.UUID(int=..., version=4))` writes it."""
        h = "%032x" % (self._idbits(128) & _UUID_CLEAR | _UUID_V4)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _envelope(self, type_: str, ts: int, source: str) -> dict[str, Any]:
        return {
            "event_id": self._id(),
            "type": type_,
            "schema_version": 1,
            "occurred_at": _iso(ts),
            "source": source,
            "province": self.policy.province,
        }

    def _emit(self, event: dict[str, Any], expected: Expected = ACCEPTED, value: bytes | None = None,
              key_city: str | None = None) -> Simulated:
        """One message out: its bytes, its expected fate (marked late when dated before the latest
        business time published: every `occurred_at` here is written alike, so the strings
        compare as the instants do), and the totals."""
        if value is None:
            value = orjson.dumps(event)
        totals = self.totals
        at = event["occurred_at"]
        if expected.kind != "invalid":  # an invalid message's time is not read
            if totals.last_occurred_at is not None and at < totals.last_occurred_at:
                expected = _LATE[expected]
                totals.late += 1
            else:
                totals.last_occurred_at = at
        if totals.first_occurred_at is None:
            totals.first_occurred_at = at
        totals.messages += 1
        totals.by_type[event["type"]] += 1
        totals.by_fate[expected.fate] += 1
        totals.by_kind[expected.kind] += 1
        # a reversal names no city: it goes with its original's (`key_city`), so that the
        # partition keeps the order the ledger decides them in (docs/scaling.md); so does any
        # re-delivery of it
        key = str(key_city or event.get("city") or event.get("province") or "").encode()
        if expected.status == "accepted":
            totals.accepted_fen[event["type"]] += event.get("amount_fen", event.get("balance_fen", 0))
            self.recent.append((event, value, key))
        event_id = event.get("event_id")
        return Simulated(key, value, event_id if isinstance(event_id, str) else None, expected)

    # -- scheduled ------------------------------------------------------------------------

    def _openings(self, ts: int) -> Iterator[Simulated]:
        """P3: every city fund's opening (audited balance: the risk band's months of planned
        expenditure; last year's collected income), then both adjustment funds' (empty)."""
        year = self.first_year
        band = self.policy.risk_band
        for f in self.fund_list:
            expenditure = f.expected_income[year] * f.ratio_bp[year] // 10_000
            months = self._int(max(1, band.low_months), max(1, band.low_months, band.high_months))
            f.balance = expenditure * months // 12
            f.opening_income = f.expected_collected[year] * self._int(9_500, 10_000) // 10_000
            event = self._envelope("OpeningBalanceRecorded", ts, "finance.anhui")
            event.update(city=f.city, scheme=f.scheme, balance_fen=f.balance,
                         previous_year_income_fen=f.opening_income, fiscal_year=year)
            yield self._emit(event)
        for scheme in SCHEMES:
            event = self._envelope("OpeningBalanceRecorded", ts, "finance.anhui")
            event.update(scheme=scheme, balance_fen=0, previous_year_income_fen=0, fiscal_year=year)
            yield self._emit(event)

    def _budgets(self, ts: int, year: int) -> Iterator[Simulated]:
        """B1/B5: each fund's budget for `year`: the planned expenditure and a margin; income
        at least the expenditure."""
        for f in self.fund_list:
            expenditure = f.expected_income[year] * f.ratio_bp[year] // 10_000
            margin_bp = self._int(*BUDGET_MARGIN_BP) + BUDGET_NOISE_BP // isqrt(max(1, f.claim_count[year]))
            expenditure = expenditure * (10_000 + margin_bp) // 10_000
            income = max(expenditure, f.expected_income[year] * self._int(9_800, 10_300) // 10_000)
            f.budget_exp[year], f.budget_inc[year] = expenditure, income
            event = self._envelope("BudgetApproved", ts, "nhsa.anhui")
            event.update(city=f.city, scheme=f.scheme, fiscal_year=year, income_fen=income, expenditure_fen=expenditure)
            yield self._emit(event)

    def _midyear_budgets(self, ts: int) -> Iterator[Simulated]:
        """B5: the mid-year revision of a few funds' budgets, raising expenditure (and income to
        match, B1); never below what the fund has paid."""
        year = self.year
        for f in self.midyear.get(year, []):
            expenditure = max(f.paid[year], f.budget_exp[year] * (10_000 + self._int(*MIDYEAR_RAISE_BP)) // 10_000)
            income = max(f.budget_inc[year], expenditure)
            f.budget_exp[year], f.budget_inc[year] = expenditure, income
            event = self._envelope("BudgetAdjusted", ts, "nhsa.anhui")
            event.update(city=f.city, scheme=f.scheme, fiscal_year=year, income_fen=income, expenditure_fen=expenditure)
            yield self._emit(event)

    def _closes(self, ts: int, year: int) -> Iterator[Simulated]:
        """P1: every city fund (the employee one locks the personal accounts too), then the
        adjustment funds, whose close fixes the province's collected income (X4)."""
        for f in self.fund_list:
            f.closed.add(year)
            event = self._envelope("FiscalYearClosed", ts, "nhsa.anhui")
            event.update(city=f.city, scheme=f.scheme, fiscal_year=year)
            yield self._emit(event)
        for scheme in SCHEMES:
            event = self._envelope("FiscalYearClosed", ts, "nhsa.anhui")
            event.update(scheme=scheme, fiscal_year=year)
            yield self._emit(event)

    def _premiums(self, ts: int) -> Iterator[Simulated]:
        """E8: each resident fund's yearly major-illness premium, within its budget (B3)."""
        year = self.year
        for index, f in enumerate(self.fund_list):
            if f.scheme != "resident":
                continue
            amount = f.premium[year] * self._int(9_000, 11_000) // 10_000
            amount = min(amount, f.budget_exp[year] - f.paid[year], f.balance)
            if amount < 1:
                continue
            f.balance -= amount
            f.paid[year] += amount
            event = self._envelope("CriticalIllnessPremiumPaid", ts, "nhsa.anhui")
            event.update(city=f.city, scheme="resident", insurer_id=INSURERS[index % len(INSURERS)],
                         fiscal_year=year, amount_fen=amount)
            yield self._emit(event)

    def _interest(self, ts: int) -> Iterator[Simulated]:
        """Quarterly interest on every city fund, then on the adjustment funds that hold money."""
        year = self.year
        for f in self.fund_list:
            if f.balance <= 0:
                continue
            amount = max(1, f.balance * INTEREST_PER_100K_QUARTER // 100_000)
            f.balance += amount
            f.income[year] += amount
            event = self._envelope("InterestCredited", ts, "bank.anhui")
            event.update(city=f.city, scheme=f.scheme, amount_fen=amount)
            yield self._emit(event)
        for scheme in SCHEMES:
            if self.province_balance[scheme] <= 0:
                continue
            amount = max(1, self.province_balance[scheme] * INTEREST_PER_100K_QUARTER // 100_000)
            self.province_balance[scheme] += amount
            event = self._envelope("InterestCredited", ts, "bank.anhui")
            event.update(scheme=scheme, amount_fen=amount)
            yield self._emit(event)

    def _base(self, f: _Fund, year: int) -> int:
        """X2/X3: the collected income of the year before `year`: the audited figure of the
        opening for the first year, else what the simulator counted (the close fixes it)."""
        return f.opening_income if year == self.first_year else f.collected[year - 1]

    def _extractions(self, ts: int, *, first: bool) -> Iterator[Simulated]:
        """X2/X4: half the cap in March, up to all of it in September, each within the city's
        balance (E1) and the adjustment fund's room under its ceiling."""
        year = self.year
        rate, pause = self.policy.extraction_rate_bp, self.policy.pause_ratio_bp
        for scheme in SCHEMES:
            if not self._phase_active(scheme, ts, year):
                continue
            funds = [f for f in self.fund_list if f.scheme == scheme]
            province_income = sum(self._base(f, year) for f in funds)
            ceiling = province_income * pause // 10_000
            for f in funds:
                cap = self._base(f, year) * rate // 10_000
                target = cap // 2 if first else cap * self._int(9_000, 10_000) // 10_000
                room = ceiling - self.province_balance[scheme]
                amount = min(target - f.extracted[year], f.balance, room)
                if amount < 1:
                    continue
                f.balance -= amount
                f.extracted[year] += amount
                self.province_balance[scheme] += amount
                event = self._envelope("AdjustmentFundExtracted", ts, "nhsa.anhui")
                event.update(city=f.city, scheme=scheme, fiscal_year=year, amount_fen=amount)
                yield self._emit(event)

    def _allocations(self, ts: int) -> Iterator[Simulated]:
        """X5: each designated gap fund with a gap gets the policy's share of it, as far as the
        adjustment fund holds (E1)."""
        year = self.year
        for scheme in SCHEMES:
            if not self._phase_active(scheme, ts, year):
                continue
            for f in self.fund_list:
                if f.scheme != scheme or year not in f.gap_years:
                    continue
                gap = f.paid[year] - f.income[year]
                reason = ALLOCATION_REASONS[1] if f.city == self.cities[0] else self.rng.choice(ALLOCATION_REASONS)
                share = self.policy.gap_share_bp.get(AllocationReason(reason), 0)
                amount = min(gap * share // 10_000 - f.allocated[year], self.province_balance[scheme])
                if gap < 1 or amount < 1:
                    continue
                self.province_balance[scheme] -= amount
                f.balance += amount
                f.allocated[year] += amount
                event = self._envelope("AdjustmentFundAllocated", ts, "nhsa.anhui")
                event.update(city=f.city, scheme=scheme, fiscal_year=year, gap_fen=gap, reason=reason,
                             amount_fen=amount)
                yield self._emit(event)

    # -- ticks ----------------------------------------------------------------------------

    def _tick(self, ts: int) -> Simulated:
        roll = self.rng.random()
        made: Simulated | None = None
        if roll < self.p_duplicate:
            made = self._duplicate()
        elif roll < self.p_invalid:
            made = self._invalid(ts)
        elif roll < self.p_rule:
            made = self._rule_breaking(ts)
        elif roll < self.p_late:
            made = self._late_contribution(ts)
        return made if made is not None else self._movement(ts)

    def _movement(self, ts: int) -> Simulated:
        f = self.fund_list[self._pick(self.fund_cum[self.month])]
        types, cum = self.mix_cum[(f.scheme, self.month)]
        kind = types[self._pick(cum)]
        made: Simulated | None = None
        if kind == "claim":
            made = self._claim(f, ts)
        elif kind == "personal_claim":
            made = self._personal_claim(f, ts)
        elif kind == "subsidy":
            made = self._subsidy(f, ts)
        elif kind == "recovery":
            made = self._recovery(f, ts)
        elif kind == "reversal":
            made = self._reversal(f, ts)
        elif kind == "individual":
            made = self._contribution(f, ts, "individual")
        return made if made is not None else self._contribution(f, ts)

    def _contribution(self, f: _Fund, ts: int, payer_kind: str | None = None,
                      expected: Expected = ACCEPTED) -> Simulated:
        """A contribution with its headcount; E6: an employee's own credits the personal
        accounts with the policy's share (rounded down), the rest the pooling fund."""
        year = self.year
        if f.scheme == "resident":
            heads = self._int(*RESIDENT_HEADCOUNT)
            amount = heads * resident_contribution_fen(year)
            payer_kind = "medical_assistance" if self._below(10_000) < MEDICAL_ASSISTANCE_BP else "individual"
        else:
            heads = self._int(*EMPLOYEE_HEADCOUNT)
            payer_kind = payer_kind or "employer"
            monthly = EMPLOYER_MONTHLY_FEN_2024 if payer_kind == "employer" else EMPLOYEE_OWN_MONTHLY_FEN_2024
            amount = heads * _grown(monthly, year)
        personal = amount * self.share_bp // 10_000 if (f.scheme, payer_kind) == ("employee", "individual") else 0
        f.balance += amount - personal
        f.personal += personal
        f.income[year] += amount - personal
        f.collected[year] += amount - personal
        event = self._envelope("ContributionReceived", ts, "tax.anhui")
        event.update(city=f.city, scheme=f.scheme, payer_kind=payer_kind, amount_fen=amount, headcount=heads)
        f.reversible.append(_Booked(event["event_id"], "contribution", ts, year, "tax.anhui", amount - personal, personal))
        return self._emit(event, expected)

    def _subsidy(self, f: _Fund, ts: int) -> Simulated | None:
        """I3: a level's disbursement for a headcount at that level's per-capita standard."""
        if f.scheme not in self.policy.subsidised_schemes:
            return None
        year = self.year
        level = self.rng.choice(tuple(LEVEL_SHARE_BP))
        heads = self._int(*SUBSIDY_HEADCOUNT)
        amount = heads * self.subsidy_per_capita_fen(level, year)
        if amount < 1:
            return None
        f.balance += amount
        f.income[year] += amount
        if self.base_with_subsidies:
            f.collected[year] += amount
        event = self._envelope("SubsidyDisbursed", ts, "finance.anhui")
        event.update(city=f.city, scheme=f.scheme, level=level, amount_fen=amount, headcount=heads)
        f.reversible.append(_Booked(event["event_id"], "subsidy", ts, year, "finance.anhui", amount))
        return self._emit(event)

    def _draw(self, mean: int, categories: tuple[tuple[str, int, int], ...],
              levels: tuple[tuple[str, int, int], ...]) -> tuple[str, str, int]:
        """A category, a hospital level and an amount around `mean` (uniform 30 %..170 % of the
        category's and level's relative size, normalised so the mean is kept)."""
        category, _, category_size = categories[self._pick(_cumulative(categories))]
        level, _, level_size = levels[self._pick(_cumulative(levels))]
        norm = _average_size(categories) * _average_size(levels)
        amount = mean * category_size * level_size * self._int(300, 1700) // (norm * 1000)
        return category, level, max(100, amount)

    def _claim_event(self, f: _Fund, ts: int, category: str, level: str, amount: int,
                     treated_in: str) -> dict[str, Any]:
        self.claim_seq += 1
        event = self._envelope("ClaimPaid", ts, "settlement.anhui")
        event.update(
            city=f.city, scheme=f.scheme, claim_id=f"C{f.city}-{self.claim_seq:010d}",
            institution_id=f"H{treated_in}{self._int(1, 60):03d}", hospital_level=level,
            category=category, eligible_fen=amount * self._int(10_000, 13_500) // 10_000,
            amount_fen=amount,
        )
        if treated_in != f.city:
            event["institution_city"] = treated_in
        return event

    def _treated_in(self, f: _Fund) -> str:
        if len(self.cities) > 1 and self._below(10_000) < OUT_OF_CITY_BP:
            others, cum = self.treating[f.city]
            return others[self._pick(cum)]
        return f.city

    def _claim(self, f: _Fund, ts: int) -> Simulated | None:
        """A pooling claim within the balance (E1); when it would pass the budget (B3), the
        budget is adjusted first (B5: a `BudgetAdjusted` for the rest of the year) instead."""
        year = self.year
        category, level, amount = self._draw(f.claim_mean[year], CATEGORIES[f.scheme], LEVELS["pooling"])
        if amount > f.balance:
            amount = f.balance // 2
            if amount < 100:
                return None
        if f.paid[year] + amount > f.budget_exp[year]:
            return self._budget_adjusted(f, ts, year, f.paid[year] + amount)
        treated_in = self._treated_in(f)
        event = self._claim_event(f, ts, category, level, amount, treated_in)
        f.balance -= amount
        f.paid[year] += amount
        booked = _Booked(event["event_id"], "claim", ts, year, "settlement.anhui", amount,
                         institution_id=event["institution_id"], institution_city=treated_in)
        f.claims.append(booked)
        f.reversible.append(booked)
        return self._emit(event)

    def _budget_adjusted(self, f: _Fund, ts: int, year: int, needed: int) -> Simulated:
        months_left = 13 - self.month
        planned = f.expected_income[year] * f.ratio_bp[year] // 10_000
        expenditure = max(f.budget_exp[year], needed) + planned * months_left * 11 // (12 * 10)
        income = max(f.budget_inc[year], expenditure)
        f.budget_exp[year], f.budget_inc[year] = expenditure, income
        event = self._envelope("BudgetAdjusted", ts, "nhsa.anhui")
        event.update(city=f.city, scheme=f.scheme, fiscal_year=year, income_fen=income, expenditure_fen=expenditure)
        return self._emit(event)

    def _personal_claim(self, f: _Fund, ts: int) -> Simulated | None:
        """E6: an employee's claim paid from the city's personal accounts, within what they hold."""
        year = self.year
        category, level, amount = self._draw(f.personal_mean[year], CATEGORIES["personal"], LEVELS["personal"])
        amount = min(amount, f.personal)
        if amount < 100:
            return None
        event = self._claim_event(f, ts, category, level, amount, self._treated_in(f))
        event["paid_from"] = "personal_account"
        f.personal -= amount
        f.reversible.append(_Booked(event["event_id"], "personal_claim", ts, year, "settlement.anhui", 0, amount))
        return self._emit(event)

    def _recovery(self, f: _Fund, ts: int) -> Simulated | None:
        """P4: an institution repays part (now and then all) of what is left of an earlier
        pooling claim of the fund, into the fund; neither income (X2, X5) nor less paid (B3)."""
        if not f.claims:
            return None
        claim = f.claims[self._below(len(f.claims))]
        left = claim.pooling_fen - claim.recovered_fen
        if claim.reversed or left < 1:
            return None
        amount = left if self.rng.random() < 0.15 else self._int(1, max(1, left // 3))
        claim.recovered_fen += amount
        f.balance += amount
        event = self._envelope("RecoveryReceived", ts, "audit.anhui")
        event.update(city=f.city, scheme=f.scheme, institution_id=claim.institution_id)
        if claim.institution_city != f.city:
            event["institution_city"] = claim.institution_city
        reason = RECOVERY_REASONS[self._pick(_RECOVERY_CUM)][0]
        event.update(reason=reason, claim_event_id=claim.event_id, amount_fen=amount)
        return self._emit(event)

    def _reversal(self, f: _Fund, ts: int) -> Simulated | None:
        """P2: the exact opposite of an earlier movement of this fiscal year, when the funds it
        debits hold it now (E1); a claim once recovered from is not reversed."""
        if not f.reversible:
            return None
        booked = f.reversible[self._below(len(f.reversible))]
        if booked.reversed or ts < booked.at:
            return None
        year = booked.year
        if booked.kind in ("contribution", "subsidy"):
            if booked.pooling_fen > f.balance or booked.personal_fen > f.personal:
                return None
            f.balance -= booked.pooling_fen
            f.personal -= booked.personal_fen
            f.income[year] -= booked.pooling_fen
            if booked.kind == "contribution" or self.base_with_subsidies:
                f.collected[year] -= booked.pooling_fen
        elif booked.kind == "claim":
            if booked.recovered_fen:
                return None
            f.balance += booked.pooling_fen
            f.paid[year] -= booked.pooling_fen
        else:  # a personal-account claim
            f.personal += booked.personal_fen
        booked.reversed = True
        self.reversed_ids.append((booked.event_id, f.city))
        event = self._envelope("EventReversed", ts, booked.source)
        event.update(original_event_id=booked.event_id, reason=self.rng.choice(REVERSAL_REASONS))
        return self._emit(event, key_city=f.city)

    def _late_contribution(self, ts: int) -> Simulated | None:
        """A valid contribution delivered late: dated up to three days before the latest
        business time published (never before its month, so never in a closed year)."""
        at = max(_ts(self.year, self.month), ts - self._int(3_600, 3 * 86_400))
        latest = self.totals.last_occurred_at
        if latest is None or _iso(at) >= latest:  # not earlier than what was published: not late
            return None
        f = self.fund_list[self._pick(self.fund_cum[self.month])]
        return self._contribution(f, at, expected=LATE_ACCEPTED)

    # -- faults ---------------------------------------------------------------------------

    def _duplicate(self) -> Simulated | None:
        """A re-delivery of a recent accepted message, byte for byte (I1: `duplicate`); late when
        dated before the latest business time published."""
        if not self.recent:
            return None
        event, value, key = self.recent[self._below(len(self.recent))]
        return self._emit(event, DUPLICATE, value, key_city=key.decode())

    def _invalid(self, ts: int) -> Simulated:
        """A message the contract refuses (`invalid_schema`) or not JSON at all (`invalid_json`)."""
        f = self.rng.choice(self.fund_list)
        event = self._envelope("ContributionReceived", ts, "tax.anhui")
        event.update(city=f.city, scheme=f.scheme, payer_kind="employer" if f.scheme == "employee" else "individual",
                     amount_fen=38_000 * self._int(1, 50))
        variant = self._below(8)
        if variant == 0:
            event["amount_fen"] = float(event["amount_fen"])  # money is integer fen
        elif variant == 1:
            event["amount_fen"] = str(event["amount_fen"])
        elif variant == 2:
            event["amount_yuan"] = event.pop("amount_fen") // 100  # unknown field, missing field
        elif variant == 3:
            event["city"] = event["city"][:5]  # not a 6-digit code
        elif variant == 4:
            event["occurred_at"] = event["occurred_at"][:19]  # no offset
        elif variant == 5:
            event["amount_fen"] = -event["amount_fen"]
        elif variant == 6:
            event["schema_version"] = 2
        else:  # cut off in transit: not JSON, no event_id to read
            value = orjson.dumps(event)
            unreadable = {"type": "(not JSON)", "occurred_at": event["occurred_at"], "city": f.city}
            return self._emit(unreadable, _INVALID_JSON, value[: len(value) // 2])
        return self._emit(event, _INVALID_SCHEMA)

    def _rule_breaking(self, ts: int) -> Simulated:
        """One event breaking one rule, with the reason the ledger gives it (`RULE_BREAKERS`):
        tried in a random order until one applies now (an unknown original always does)."""
        order = list(RULE_BREAKERS)
        self.rng.shuffle(order)
        for name in order:
            made = getattr(self, f"_break_{name}")(ts)
            if made is not None:
                return made
        return self._break_unknown_original(ts)

    def _rejected(self, event: dict[str, Any], reason: str, key_city: str | None = None) -> Simulated:
        return self._emit(event, _RULE[reason], key_city=key_city)

    def _any_fund(self) -> _Fund:
        return self.rng.choice(self.fund_list)

    def _break_unknown_city(self, ts: int) -> Simulated:
        """I2: a city (or a treating city, E7) outside the policy."""
        f = self._any_fund()
        unknown = self.policy.province[:2] + "9900"
        if self.rng.random() < 0.5:
            event = self._envelope("ContributionReceived", ts, "tax.anhui")
            event.update(city=unknown, scheme=f.scheme, payer_kind="employer" if f.scheme == "employee" else "individual",
                         amount_fen=38_000)
        else:
            event = self._claim_event(f, ts, "outpatient", "primary", 10_000, unknown)
        return self._rejected(event, "unknown_city")

    def _break_earmark_violation(self, ts: int) -> Simulated:
        """E5 (a subsidy to the employee scheme), E8 (medical assistance for employees) or E6
        (a resident claim from personal accounts)."""
        city = self.rng.choice(self.cities)
        variant = self._below(3)
        if variant == 0 and "employee" not in self.policy.subsidised_schemes:
            event = self._envelope("SubsidyDisbursed", ts, "finance.anhui")
            event.update(city=city, scheme="employee", level="central", amount_fen=48_800)
        elif variant == 1:
            event = self._envelope("ContributionReceived", ts, "tax.anhui")
            event.update(city=city, scheme="employee", payer_kind="medical_assistance", amount_fen=40_000)
        else:
            event = self._claim_event(self.funds[(city, "resident")], ts, "outpatient", "primary", 5_000, city)
            event["paid_from"] = "personal_account"
        return self._rejected(event, "earmark_violation")

    def _break_insufficient_funds(self, ts: int) -> Simulated:
        """E1: a personal-account claim above what the city's personal accounts hold (no budget
        binds them, B3, so E1 is the rule it breaks)."""
        f = self.funds[(self.rng.choice(self.cities), "employee")]
        amount = f.personal + self._int(1, 1_000_000)
        event = self._claim_event(f, ts, "outpatient", "secondary", amount, f.city)
        event["paid_from"] = "personal_account"
        return self._rejected(event, "insufficient_funds")

    def _break_over_budget(self, ts: int) -> Simulated:
        """B3: a pooling claim above what is left of the approved expenditure budget."""
        f = self._any_fund()
        year = self.year
        amount = f.budget_exp[year] - f.paid[year] + self._int(1, max(1, f.claim_mean[year]))
        return self._rejected(self._claim_event(f, ts, "inpatient", "tertiary", amount, f.city), "over_budget")

    def _break_extraction_cap_exceeded(self, ts: int) -> Simulated | None:
        """X2: an extraction above what is left of the city's cap for the year."""
        year = self.year
        f = self._any_fund()
        if not self._phase_active(f.scheme, ts, year):
            return None
        cap = self._base(f, year) * self.policy.extraction_rate_bp // 10_000
        event = self._envelope("AdjustmentFundExtracted", ts, "nhsa.anhui")
        event.update(city=f.city, scheme=f.scheme, fiscal_year=year,
                     amount_fen=cap - f.extracted[year] + self._int(1, 1_000_000))
        return self._rejected(event, "extraction_cap_exceeded")

    def _break_phase_not_active(self, ts: int) -> Simulated | None:
        """X1: an extraction before the scheme's adjustment fund operates."""
        year = self.year
        f = self._any_fund()
        if self._phase_active(f.scheme, ts, year):
            return None
        event = self._envelope("AdjustmentFundExtracted", ts, "nhsa.anhui")
        event.update(city=f.city, scheme=f.scheme, fiscal_year=year, amount_fen=self._int(1, 1_000_000))
        return self._rejected(event, "phase_not_active")

    def _break_allocation_exceeds_share(self, ts: int) -> Simulated | None:
        """X5: an allocation claiming a larger gap than the fund's claims and income show."""
        year = self.year
        f = self._any_fund()
        if not self._phase_active(f.scheme, ts, year):
            return None
        gap = max(0, f.paid[year] - f.income[year]) + self._int(1, 1_000_000)
        event = self._envelope("AdjustmentFundAllocated", ts, "nhsa.anhui")
        event.update(city=f.city, scheme=f.scheme, fiscal_year=year, gap_fen=gap, reason="other_reasonable",
                     amount_fen=max(1, gap // 4))
        return self._rejected(event, "allocation_exceeds_share")

    def _break_period_closed(self, ts: int) -> Simulated | None:
        """P1: a claim of last year arriving after last year was closed (out of order)."""
        year = self.year - 1
        f = self._any_fund()
        if year not in f.closed:
            return None
        at = _ts(year, 12, 31, 20) + self._below(3 * 3_600)
        event = self._claim_event(f, at, "inpatient", "secondary", self._int(10_000, 1_000_000), f.city)
        return self._rejected(event, "period_closed")

    def _break_period_not_ended(self, ts: int) -> Simulated:
        """P1: a fund's year closed before it ended."""
        f = self._any_fund()
        event = self._envelope("FiscalYearClosed", ts, "nhsa.anhui")
        event.update(city=f.city, scheme=f.scheme, fiscal_year=self.year)
        return self._rejected(event, "period_not_ended")

    def _break_fiscal_year_mismatch(self, ts: int) -> Simulated:
        """M2: a premium naming next year, paid this year."""
        f = self.funds[(self.rng.choice(self.cities), "resident")]
        event = self._envelope("CriticalIllnessPremiumPaid", ts, "nhsa.anhui")
        event.update(city=f.city, scheme="resident", insurer_id=INSURERS[0], fiscal_year=self.year + 1,
                     amount_fen=self._int(1, 1_000_000))
        return self._rejected(event, "fiscal_year_mismatch")

    def _break_budget_exists(self, ts: int) -> Simulated:
        """B5: a second approved budget for a fund and year."""
        f = self._any_fund()
        year = self.year
        event = self._envelope("BudgetApproved", ts, "nhsa.anhui")
        event.update(city=f.city, scheme=f.scheme, fiscal_year=year, income_fen=f.budget_inc[year],
                     expenditure_fen=f.budget_exp[year])
        return self._rejected(event, "budget_exists")

    def _break_deficit_budget(self, ts: int) -> Simulated:
        """B1: an adjusted budget spending more than it takes in (not below what was paid, B5)."""
        f = self._any_fund()
        year = self.year
        expenditure = max(f.budget_exp[year], f.paid[year], 1)
        event = self._envelope("BudgetAdjusted", ts, "nhsa.anhui")
        event.update(city=f.city, scheme=f.scheme, fiscal_year=year,
                     income_fen=expenditure - self._int(1, expenditure), expenditure_fen=expenditure)
        return self._rejected(event, "deficit_budget")

    def _break_recovery_exceeds_claim(self, ts: int) -> Simulated | None:
        """P4: a recovery above what is left of its claim."""
        f = self._any_fund()
        if not f.claims:
            return None
        claim = f.claims[self._below(len(f.claims))]
        if claim.reversed:
            return None
        event = self._envelope("RecoveryReceived", ts, "audit.anhui")
        event.update(city=f.city, scheme=f.scheme, institution_id=claim.institution_id)
        if claim.institution_city != f.city:
            event["institution_city"] = claim.institution_city
        event.update(reason="overpayment", claim_event_id=claim.event_id,
                     amount_fen=claim.pooling_fen - claim.recovered_fen + self._int(1, 100_000))
        return self._rejected(event, "recovery_exceeds_claim")

    def _break_unknown_original(self, ts: int) -> Simulated:
        """P2: a reversal of an event the ledger never saw."""
        event = self._envelope("EventReversed", ts, "settlement.anhui")
        event.update(original_event_id=self._id(), reason=self.rng.choice(REVERSAL_REASONS))
        return self._rejected(event, "unknown_original")

    def _break_already_reversed(self, ts: int) -> Simulated | None:
        """P2: a second reversal of a reversed event."""
        if not self.reversed_ids:
            return None
        event = self._envelope("EventReversed", ts, "settlement.anhui")
        original_id, city = self.reversed_ids[self._below(len(self.reversed_ids))]
        event.update(original_event_id=original_id, reason=self.rng.choice(REVERSAL_REASONS))
        return self._rejected(event, "already_reversed", key_city=city)

    def _break_reversal_before_original(self, ts: int) -> Simulated | None:
        """P2: a reversal dated before its original (out of order)."""
        f = self._any_fund()
        if not f.reversible:
            return None
        booked = f.reversible[self._below(len(f.reversible))]
        if booked.reversed:
            return None
        event = self._envelope("EventReversed", booked.at - self._int(1, 3_600), booked.source)
        event.update(original_event_id=booked.event_id, reason=self.rng.choice(REVERSAL_REASONS))
        return self._rejected(event, "reversal_before_original", key_city=f.city)

    def _break_event_id_conflict(self, ts: int) -> Simulated | None:
        """I1: a recent event's id again with another payload."""
        if not self.recent:
            return None
        event, _, key = self.recent[self._below(len(self.recent))]
        changed = {**event, "source": f"{event['source']}.replayed-with-changes"}
        return self._rejected(changed, "event_id_conflict", key_city=key.decode())


#: The rules a rule-breaking event breaks, each by a `_break_*` method of the simulator.
RULE_BREAKERS = (
    "unknown_city", "earmark_violation", "insufficient_funds", "over_budget", "extraction_cap_exceeded",
    "phase_not_active", "allocation_exceeds_share", "period_closed", "period_not_ended",
    "fiscal_year_mismatch", "budget_exists", "deficit_budget", "recovery_exceeds_claim",
    "unknown_original", "already_reversed", "reversal_before_original", "event_id_conflict",
)
_RULE = {reason: Expected("rejected", reason, "rule") for reason in RULE_BREAKERS}
_INVALID_JSON = Expected("rejected", "invalid_json", "invalid")
_INVALID_SCHEMA = Expected("rejected", "invalid_schema", "invalid")
_LATE = {e: replace(e, late=True) for e in (ACCEPTED, LATE_ACCEPTED, DUPLICATE, *_RULE.values())}


def _cumulative(items: tuple[tuple[str, int, int], ...]) -> list[int]:
    found = _CUMULATIVE.get(items)
    if found is None:
        found = _CUMULATIVE[items] = [sum(w for _, w, _ in items[: i + 1]) for i in range(len(items))]
    return found


def _average_size(items: tuple[tuple[str, int, int], ...]) -> int:
    """The mean relative size (per mille) of `items`, weighted by their shares."""
    if items not in _AVERAGE:
        _AVERAGE[items] = sum(w * size for _, w, size in items) // sum(w for _, w, _ in items)
    return _AVERAGE[items]


_CUMULATIVE: dict[tuple[tuple[str, int, int], ...], list[int]] = {}
_RECOVERY_CUM = [sum(w for _, w in RECOVERY_REASONS[: i + 1]) for i in range(len(RECOVERY_REASONS))]
#: The version (4) and variant (RFC 4122) bits of a random UUID.
_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_V4 = (0x4000 << 64) | (0x8000 << 48)
_AVERAGE: dict[tuple[tuple[str, int, int], ...], int] = {}
