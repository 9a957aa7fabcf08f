"""The read side: the projector's tables and the read computations, against the real PostgreSQL.

Every expected figure is computed here, from the events the test feeds the ledger (`Model`),
never by calling the code under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from consumers.booking import record_batch
from consumers.inbound import Inbound, SourcePosition
from ledger.application import Ledger
from ledger.policy import load_packaged_policy
from pooling_ledger.simulate import Simulation, pooling_year
from projections import queries
from projections.projector import PROJECTION_NAME, LagCounter, Projector, lag
from projections.rebuild import rebuild_from_zero
from projections.service import project_loop
from storage import open_ledger
from tests import upstream

pytestmark = pytest.mark.integration

CST = timezone(timedelta(hours=8))
EVENTS_TOPIC = "pooling.events.v1"
SCHEMES = ("employee", "resident")
RISK_LOW_MONTHS, RISK_HIGH_MONTHS = 6, 9  # Anhui policy's risk band
PAUSE_RATIO_BP = 1000  # Anhui policy: the adjustment fund's ceiling, 10 % of last year's income


# -- feeding the ledger ----------------------------------------------------------------


class Feed:
    """Gives every message its own Kafka position, as the consumer would."""

    def __init__(self, ledger: Ledger, topic: str = EVENTS_TOPIC) -> None:
        self.ledger, self.topic, self.offset = ledger, topic, 0

    def send(self, messages: Iterable[dict[str, Any] | bytes], batch_size: int = 200) -> list[Any]:
        inbound = []
        for message in messages:
            raw = message if isinstance(message, bytes) else json.dumps(message).encode()
            inbound.append(Inbound.parse(raw, SourcePosition(self.topic, 0, self.offset)))
            self.offset += 1
        outcomes = []
        for start in range(0, len(inbound), batch_size):
            outcomes += record_batch(self.ledger, inbound[start : start + batch_size])
        return outcomes


def contribution(city: str, scheme: str, amount: int, at: str, payer_kind: str = "individual") -> dict[str, Any]:
    return upstream.contribution(city, scheme, amount, payer_kind=payer_kind, occurred_at=at, source="tax.anhui")


def claim(city: str, scheme: str, amount: int, at: str, category: str = "inpatient",
          level: str = "secondary") -> dict[str, Any]:
    return upstream.claim(city, scheme, amount, claim_id=f"C-{uuid.uuid4().hex[:10]}",
                          institution_id=f"H{city}009", hospital_level=level, category=category,
                          occurred_at=at, source="settlement.anhui")


def reversal(original: dict[str, Any], at: str) -> dict[str, Any]:
    return upstream.reversal(original, reason="booked in error", occurred_at=at, source="nhsa.anhui")


def project(database_url: str, ledger: Ledger, page_size: int = 5000, *, rebuild: bool = True) -> int:
    with Projector(ledger, database_url, page_size=page_size, rebuild=rebuild) as projector:
        return projector.run_until_caught_up()


# -- the test's own bookkeeping ------------------------------------------------------------


def fund_account(city: str | None, scheme: str) -> str:
    return f"city:{city}:{scheme}:pooling" if city else f"province:{scheme}:adjustment"


def cst_day(moment: datetime) -> date:
    return moment.astimezone(CST).date()


@dataclass(frozen=True)
class Posting:
    event_id: str
    account: str
    amount: int  # credit +, debit -
    category: str
    subcategory: str | None
    fiscal_year: int
    at: datetime

    @property
    def day(self) -> date:
        return cst_day(self.at)


@dataclass
class Model:
    """What the read tables must show, from the events and their (known) fates alone."""

    postings: list[Posting] = field(default_factory=list)
    transfers: dict[str, tuple[str, str, int, str, str | None, int]] = field(default_factory=dict)
    payloads: dict[str, str] = field(default_factory=dict)
    fates: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    rejections: Counter[tuple[str, str]] = field(default_factory=Counter)
    closed: dict[tuple[str, int], int] = field(default_factory=dict)
    openings: dict[str, tuple[int, int]] = field(default_factory=dict)  # account -> (year, previous income)
    budgets: dict[tuple[str, str, int], int] = field(default_factory=dict)  # -> budgeted expenditure
    cities: tuple[str, ...] = ()

    # feeding ------------------------------------------------------------------------

    def feed(self, messages: Sequence[dict[str, Any] | bytes], rejected: dict[str, str] | None = None) -> None:
        """`rejected`: event_id -> reason of the messages the rules refuse (all others pass)."""
        rejected = rejected or {}
        for message in messages:
            if isinstance(message, bytes):  # not JSON: counted, not addressable
                self.rejections[("invalid_json", "unknown")] += 1
                continue
            event_id, canonical = message["event_id"], json.dumps(message, sort_keys=True)
            if event_id in self.payloads:  # I1: a re-delivery, or a conflicting reuse
                if self.payloads[event_id] != canonical:
                    self.rejections[("event_id_conflict", message["source"])] += 1
                continue
            self.payloads[event_id] = canonical
            if event_id in rejected:
                self.fates[event_id] = ("rejected", rejected[event_id])
                self.rejections[(rejected[event_id], message["source"])] += 1
                continue
            self.fates[event_id] = ("accepted", None)
            self._accept(message)

    def _accept(self, e: dict[str, Any]) -> None:
        kind: str = e["type"]
        city: Any = e.get("city")
        scheme: Any = e.get("scheme")
        at = datetime.fromisoformat(e["occurred_at"])
        year = cst_day(at).year
        fund = fund_account(city, scheme) if scheme else ""
        sub = None
        if kind == "ContributionReceived":
            debit, credit = f"external:contributors:{city}:{scheme}:{e['payer_kind']}", fund
            if scheme == "employee" and e["payer_kind"] == "individual":  # E6, the default share: all of it
                credit = f"city:{city}:employee:personal"
            amount, category = e["amount_fen"], f"contribution.{e['payer_kind']}"
        elif kind == "SubsidyDisbursed":
            debit, credit, amount, category = f"external:finance:{e['level']}", fund, e["amount_fen"], f"subsidy.{e['level']}"
        elif kind == "ClaimPaid":
            payer = f"city:{city}:employee:personal" if e.get("paid_from") == "personal_account" else fund
            treated = e.get("institution_city") or city
            debit, credit, amount = payer, f"external:institutions:{treated}", e["amount_fen"]
            category, sub = f"claim.{e['category']}", e["hospital_level"]
        elif kind == "CriticalIllnessPremiumPaid":  # E8
            debit, credit, amount, category = fund, f"external:insurers:{e['insurer_id']}", e["amount_fen"], "premium.critical_illness"
            year = e["fiscal_year"]
        elif kind == "RecoveryReceived":  # P4: back into the fund that paid
            treated = e.get("institution_city") or city
            debit, credit, amount = f"external:institutions:{treated}", fund, e["amount_fen"]
            category = f"recovery.{e['reason']}"
        elif kind == "InterestCredited":
            debit, credit, amount, category = "external:interest", fund, e["amount_fen"], "interest"
        elif kind == "OpeningBalanceRecorded":
            debit, credit, amount, category = "equity:opening", fund, e["balance_fen"], "opening"
            self.openings[fund] = (e["fiscal_year"], e["previous_year_income_fen"])
        elif kind == "AdjustmentFundExtracted":
            debit, credit, amount, category = fund, fund_account(None, scheme), e["amount_fen"], "extraction"
            year = e["fiscal_year"]
        elif kind == "AdjustmentFundAllocated":
            debit, credit, amount, category = fund_account(None, scheme), fund, e["amount_fen"], "allocation"
            year = e["fiscal_year"]
        elif kind in ("BudgetApproved", "BudgetAdjusted"):
            self.budgets[(city, scheme, e["fiscal_year"])] = e["expenditure_fen"]
            return
        elif kind == "FiscalYearClosed":
            self.closed[(fund, e["fiscal_year"])] = self.base_of(fund, e["fiscal_year"] + 1, scheme)
            return
        elif kind == "EventReversed":
            o_debit, o_credit, amount, o_category, sub, o_year = self.transfers[e["original_event_id"]]
            prior = any((a, o_year) in self.closed for a in (o_debit, o_credit))
            debit, credit = o_credit, o_debit
            category = f"prior_year_adjustment.{o_category}" if prior else o_category
            year = year if prior else o_year
        else:
            raise AssertionError(f"no expectation for {kind}")
        self.transfers[e["event_id"]] = (debit, credit, amount, category, sub, year)
        for account, sign in ((credit, 1), (debit, -1)):
            self.postings.append(Posting(e["event_id"], account, sign * amount, category, sub, year, at))

    # figures ------------------------------------------------------------------------------

    def contributions(self, account: str, year: int) -> int:
        return sum(p.amount for p in self.postings
                   if p.account == account and p.fiscal_year == year and p.category.startswith("contribution."))

    def base_of(self, account: str, year: int, scheme: str) -> int:
        """Collected income of `year - 1` (contributions, the Anhui extraction base)."""
        if account.startswith("province:"):
            if (account, year - 1) in self.closed:
                return self.closed[(account, year - 1)]
            return sum(self.base_of(fund_account(c, scheme), year, scheme) for c in self.cities)
        opening = self.openings.get(account)
        if opening and opening[0] == year:
            return opening[1]
        if (account, year - 1) in self.closed:
            return self.closed[(account, year - 1)]
        return self.contributions(account, year - 1)

    def until(self, as_of: datetime | None) -> list[Posting]:
        return [p for p in self.postings if as_of is None or p.at <= as_of]

    def balances(self, as_of: datetime | None = None) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for p in self.until(as_of):
            out[p.account] += p.amount
        return dict(out)

    def balance(self, account: str, as_of: datetime | None = None) -> int:
        return self.balances(as_of).get(account, 0)

    def flows(self, account: str, year: int, as_of: datetime | None = None) -> tuple[dict[str, int], dict[str, int]]:
        """(income, expenditure) of a fund in a fiscal year by category, positive amounts."""
        income: dict[str, int] = defaultdict(int)
        expenditure: dict[str, int] = defaultdict(int)
        for p in self.until(as_of):
            if p.account != account or p.fiscal_year != year:
                continue
            base = p.category.removeprefix("prior_year_adjustment.")
            key = f"{p.category}.{p.subcategory}" if p.subcategory else p.category
            if base.startswith(("contribution.", "subsidy.", "interest", "allocation")):
                income[key] += p.amount
            elif base.startswith(("claim.", "extraction", "premium.")):
                expenditure[key] -= p.amount
        return dict(income), dict(expenditure)

    def daily(self) -> dict[tuple[str, date], int]:
        out: dict[tuple[str, date], int] = defaultdict(int)
        for p in self.postings:
            out[(p.account, p.day)] += p.amount
        return dict(out)

    def closing_balances(self, account: str) -> list[dict[str, Any]]:
        running, days = 0, []
        for (a, day), net in sorted(self.daily().items(), key=lambda kv: kv[0][1]):
            if a == account:
                running += net
                days.append({"date": day.isoformat(), "balance_fen": running})
        return days

    def budget_income(self, account: str, year: int) -> int:
        """Contributions, subsidies and interest of the year (not allocations, not prior years)."""
        return sum(p.amount for p in self.postings if p.account == account and p.fiscal_year == year
                   and p.category.startswith(("contribution.", "subsidy.", "interest")))

    def claims_paid(self, account: str, year: int) -> int:
        return -sum(p.amount for p in self.postings
                    if p.account == account and p.fiscal_year == year
                    and p.category.startswith(("claim.", "premium.")))  # B3 counts the premium (E8)

    def province(self, scheme: str, year: int, as_of: datetime | None) -> dict[str, Any]:
        province = fund_account(None, scheme)
        income = self.base_of(province, year, scheme)
        ceiling = PAUSE_RATIO_BP * income // 10_000
        fund = self.balance(province, as_of)
        cities = sum(self.balance(fund_account(c, scheme), as_of) for c in self.cities)
        mine = [p for p in self.until(as_of) if p.account == province and p.fiscal_year == year]
        return {
            "scheme": scheme,
            "city_balances_fen": cities,
            "adjustment_fund_fen": fund,
            "province_income_fen": income,
            "pause_ratio_bp": PAUSE_RATIO_BP,
            "ceiling_fen": ceiling,
            "headroom_fen": max(0, ceiling - fund),
            "extraction_paused": fund >= ceiling,
            "extracted_fen": sum(p.amount for p in mine if p.category == "extraction"),
            "allocated_fen": -sum(p.amount for p in mine if p.category == "allocation"),
            "consolidated_fen": cities + fund,
        }

    def risk(self, city: str, scheme: str, as_of: datetime) -> dict[str, Any]:
        account, today = fund_account(city, scheme), cst_day(as_of)
        year_ago = today.replace(year=today.year - 1)
        in_window = [p for p in self.until(as_of) if p.account == account  # B3/E8: premium with claims
                     and p.category.startswith(("claim.", "premium.")) and p.day > year_ago]
        claims = -sum(p.amount for p in in_window)
        first = min((p.day for p in in_window), default=None)
        months = max(1, (today.year - first.year) * 12 + today.month - first.month + 1) if first else 12
        monthly = claims // months
        balance = self.balance(account, as_of)
        covered = balance * 100 // monthly if monthly > 0 else None
        if covered is None:
            level = "no_expenditure"
        elif covered < RISK_LOW_MONTHS * 50:
            level = "critical"
        elif covered < RISK_LOW_MONTHS * 100:
            level = "low"
        elif covered > RISK_HIGH_MONTHS * 100:
            level = "high"
        else:
            level = "ok"
        return {"balance_fen": balance, "monthly_expenditure_fen": monthly,
                "months_covered_hundredths": covered, "level": level}


# -- reading the tables -------------------------------------------------------------------------


def table(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query, params).fetchall()


def read(database_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(database_url, autocommit=True)


# -- the generated year ---------------------------------------------------------------------------


Phase = tuple[Sequence[dict[str, Any] | bytes], dict[str, str]]


def generated_year(seed: int) -> tuple[list[Phase], Simulation]:
    """pooling_year's phases with their known rejections, and a hand-made February 2026."""
    policy = load_packaged_policy()
    sim = Simulation(policy, month=12, seed=seed)
    phases = pooling_year(sim, events_per_city=30)
    cities = list(policy.cities)
    (_, month), (_, gap), (_, closes), (_, january) = phases
    refused = gap[3]
    assert refused["claim_id"] == "C-over-budget"
    late = january[0]
    assert late["claim_id"] == "C-late"

    # Business days are China Standard Time: 23:30 UTC on 31 December is 1 January in Anhui.
    new_year_night = contribution(cities[1], "resident", 77_700, "2025-12-31T23:30:00+00:00")
    utc_morning = contribution(cities[2], "employee", 12_300, "2025-12-15T04:30:00+00:00", "employer")
    month = [*month, new_year_night, utc_morning]

    feb = "2026-02-1{}T10:00:00+08:00"
    c1, c2 = cities[0], cities[7]
    budget = upstream.budget(9 * 10**9, 4 * 10**6, city=c1, scheme="resident", fiscal_year=2026,
                             occurred_at="2026-01-20T09:00:00+08:00", source="nhsa.anhui")
    pay = [contribution(c1, "resident", 5_000_000, feb.format(0)),
           contribution(c2, "employee", 2_000_000, feb.format(0), "employer")]
    paid = [claim(c1, "resident", 1_234_567, feb.format(1), "outpatient", "primary"),
            claim(c1, "resident", 765_433, feb.format(2), "outpatient", "primary"),
            claim(c2, "employee", 999_999, feb.format(2), "maternity", "tertiary")]
    province_interest = upstream.interest("resident", 4_321, occurred_at=feb.format(3), source="bank.anhui")
    mistaken = contribution(c2, "employee", 50_000, feb.format(3))
    undo = reversal(mistaken, feb.format(4))
    float_amount = contribution(c1, "resident", 1, feb.format(5))
    float_amount["amount_fen"] = 38000.0
    unknown_city = contribution("349900", "resident", 38_000, feb.format(5))
    employee_subsidy = upstream.subsidy(c1, "employee", 48_800, level="central", occurred_at=feb.format(5),
                                        source="finance.anhui")
    overdraft = claim(c2, "resident", 10**13, feb.format(6))
    redelivered = pay[0]
    conflicting = {**paid[0], "amount_fen": 1_000_000, "source": "settlement.anhui.replayed"}
    february: list[dict[str, Any] | bytes] = [
        budget, *pay, *paid, province_interest, mistaken, undo, b"<xml>not json</xml>",
        float_amount, unknown_city, employee_subsidy, overdraft, redelivered, conflicting,
    ]
    return [
        (month, {}),
        (gap, {refused["event_id"]: "over_budget"}),
        (closes, {}),
        (january, {late["event_id"]: "period_closed"}),
        (february, {
            float_amount["event_id"]: "invalid_schema",
            unknown_city["event_id"]: "unknown_city",
            employee_subsidy["event_id"]: "earmark_violation",
            overdraft["event_id"]: "insufficient_funds",
        }),
    ], sim


@pytest.fixture
def year_ledger(database_url: str) -> tuple[Ledger, Model, Feed]:
    """The generated year, fed to the ledger and to the test's model."""
    phases, sim = generated_year(seed=3)
    ledger = open_ledger(database_url)
    model = Model(cities=tuple(sim.policy.cities))
    feed = Feed(ledger)
    for messages, rejected in phases:
        feed.send(messages, batch_size=97)
        model.feed(messages, rejected)
    return ledger, model, feed


READ_TABLES = (
    "pl_postings", "pl_account_balances", "pl_account_daily", "pl_events", "pl_rejections",
    "pl_budgets", "pl_openings", "pl_closed_years", "pl_policies", "pl_account_year_totals",
    "pl_account_monthly_claims", "pl_subsidy_headcounts", "pl_tracking",
)


def test_a_rebuild_from_zero_fills_the_read_tables_as_paging_does(
    database_url: str, year_ledger: tuple[Ledger, Model, Feed]
) -> None:
    """The set-based rebuild (projections.rebuild) against page-by-page projection, which the
    test above holds to the test's own model: every row of every read table the same."""
    ledger, model, feed = year_ledger
    # subsidies with and without a headcount (the simulator sends none), one reversed pages later,
    # and a 2025 subsidy of the generated year reversed after its year's close
    city, at = model.cities[4], "2026-02-20T10:00:00+08:00"

    def subsidy(amount_fen: int, **headcount: int) -> dict[str, Any]:
        return upstream.subsidy(city, "resident", amount_fen, level="central", occurred_at=at,
                                source="finance.anhui", **headcount)

    counted = subsidy(40 * 48_800, headcount=40)
    generated = next(e for e, t in model.transfers.items() if t[3].startswith("subsidy.") and t[5] == 2025)
    extra = [counted, subsidy(5_000), subsidy(7 * 48_800, headcount=7),
             *(contribution(city, "resident", 100, at) for _ in range(40)),  # more than a page of 37
             reversal(counted, "2026-02-21T10:00:00+08:00"), upstream.reversal(
                 generated, reason="booked in error", occurred_at="2026-02-21T10:00:00+08:00", source="nhsa.anhui")]
    assert [o.status for o in feed.send(extra)] == ["accepted"] * len(extra)
    model.feed(extra)

    def tables() -> dict[str, list[tuple[Any, ...]]]:
        with read(database_url) as conn:
            return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in READ_TABLES}

    paged_count = project(database_url, ledger, page_size=37, rebuild=False)
    paged = tables()
    assert len(paged["pl_postings"]) == 2 * len(model.transfers)
    # (fiscal year, city, scheme, level, headcount, payments, payments without headcount)
    assert (2026, city, "resident", "central", 40 + 7 - 40, 4, 1) in paged["pl_subsidy_headcounts"]
    with psycopg.connect(database_url) as conn:
        conn.execute("TRUNCATE " + ", ".join(t for t in READ_TABLES if t != "pl_tracking"))
        conn.execute("UPDATE pl_tracking SET notification_id = 0")
    projector = Projector(ledger, database_url)
    try:
        rebuilt = rebuild_from_zero(projector.conn, ledger, PROJECTION_NAME)
        assert rebuilt is not None  # set-based indeed, not page by page again
        assert rebuilt + projector.run_until_caught_up() == paged_count
        assert projector.run_until_caught_up() == 0  # caught up: nothing applied twice
    finally:
        projector.close()
    rebuilt = tables()
    for table in READ_TABLES:
        assert rebuilt[table] == paged[table], table


def test_the_project_command_fills_an_empty_projection_set_based_then_pages(
    database_url: str, year_ledger: tuple[Ledger, Model, Feed]
) -> None:
    """`pooling-ledger project` and `serve` run `project_loop`: an empty projection is filled in
    one set-based pass (it used to page from zero), and what is recorded later is paged."""
    ledger, model, feed = year_ledger
    projector = Projector(ledger, database_url, page_size=37)
    try:
        with capture_logs() as logs:
            filled = project_loop(projector, lambda: False, idle_exit=True)
        assert [e["notifications"] for e in logs if e["event"] == "projection_rebuilt"] == [filled]
        later = [contribution(model.cities[0], "resident", 1_234, "2026-02-20T10:00:00+08:00")]
        feed.send(later)
        model.feed(later)
        with capture_logs() as logs:
            assert project_loop(projector, lambda: False, idle_exit=True) == 1  # its receipt, paged
        assert not [e for e in logs if e["event"] == "projection_rebuilt"]
        assert projector.lag() == 0
    finally:
        projector.close()
    balances = dict(table(database_url, "SELECT account, balance_fen FROM pl_account_balances WHERE balance_fen <> 0"))
    assert balances == {a: b for a, b in model.balances().items() if b}


def test_generated_year_projects_to_figures_the_test_computes_itself(
    database_url: str, year_ledger: tuple[Ledger, Model, Feed]
) -> None:
    ledger, model, _ = year_ledger
    # many pages, odd boundaries (an empty projection is otherwise filled in one set-based pass,
    # held to this one by the test below)
    projected = project(database_url, ledger, page_size=37, rebuild=False)
    assert projected > 0

    with read(database_url) as conn:
        # every account: the running balance, and the net of each CST business day
        balances = dict(conn.execute("SELECT account, balance_fen FROM pl_account_balances").fetchall())
        assert {a: b for a, b in balances.items() if b or a in model.balances()} == model.balances()
        daily = {(a, d): n for a, d, n in conn.execute("SELECT * FROM pl_account_daily").fetchall()}
        assert daily == model.daily()
        assert ("city:340200:resident:pooling", date(2026, 1, 1)) in daily  # 23:30 UTC, 31 Dec
        assert ("city:340300:employee:pooling", date(2025, 12, 15)) in daily
        assert conn.execute("SELECT count(*) FROM pl_postings").fetchone() == (2 * len(model.transfers),)
        for account in ("city:340100:resident:pooling", "province:resident:adjustment",
                        "city:340200:resident:pooling", "external:institutions:340800"):
            assert queries.daily(conn, account)["days"] == model.closing_balances(account)
        window = queries.daily(conn, "city:340100:resident:pooling", date(2025, 12, 5), date(2025, 12, 9))
        assert window["days"] == [d for d in model.closing_balances("city:340100:resident:pooling")
                                  if "2025-12-05" <= d["date"] <= "2025-12-09"]

        trial = queries.trial_balance(conn)
        assert {r["account"]: r["balance_fen"] for r in trial["accounts"] if r["balance_fen"]} == {
            a: b for a, b in model.balances().items() if b}
        assert trial["total_fen"] == 0

        # city balances and the year's income and expenditure by category
        end_2025 = datetime(2025, 12, 31, 23, 59, 59, tzinfo=CST)
        end_feb = datetime(2026, 2, 28, 23, 59, 59, tzinfo=CST)
        for city in model.cities:
            for scheme in SCHEMES:
                account = fund_account(city, scheme)
                for moment in (end_2025, end_feb):
                    got = queries.city_balances(conn, city, scheme, moment)
                    income, expenditure = model.flows(account, moment.year, moment)
                    assert got["balance_fen"] == model.balance(account, moment), (account, moment)
                    assert got["income_fen"] == income, (account, moment)
                    assert got["expenditure_fen"] == expenditure, (account, moment)
                    assert got["fiscal_year"] == moment.year
            both = queries.city_balances(conn, city, None, end_2025)
            assert both["balance_fen"] == sum(model.balance(fund_account(city, s), end_2025) for s in SCHEMES)
        # the current year, as of now
        this_year = queries.now().year
        now_view = queries.city_balances(conn, "340100", "resident", None)
        assert now_view["balance_fen"] == model.balance("city:340100:resident:pooling")
        assert (now_view["income_fen"], now_view["expenditure_fen"]) == model.flows(
            "city:340100:resident:pooling", this_year)
        # the categories the issue names are all there for a city with a gap allocation
        income_2025, spent_2025 = model.flows("city:340400:resident:pooling", 2025)
        assert "allocation" in income_2025 and "extraction" in spent_2025
        assert any(k.startswith("claim.inpatient.") for k in spent_2025)
        # a same-year reversal of a contribution nets it out of its category
        c2_income, _ = model.flows("city:340800:employee:pooling", 2026)
        assert queries.city_balances(conn, "340800", "employee", end_feb)["income_fen"] == c2_income

        # the province: sum of city balances, the adjustment fund against its ceiling
        for year in (2025, 2026):
            summary = queries.province_summary(conn, year, end_feb)
            assert summary["year"] == year
            assert summary["schemes"] == [model.province(s, year, end_feb) for s in SCHEMES], year
        go_live = sum(model.openings[fund_account(c, "resident")][1] for c in model.cities)
        summary_2025 = queries.province_summary(conn, 2025, end_2025)["schemes"][1]
        assert summary_2025["province_income_fen"] == go_live
        assert summary_2025["ceiling_fen"] == go_live * 1000 // 10_000
        assert summary_2025["extracted_fen"] > 0 and summary_2025["allocated_fen"] > 0

        # budget execution: claims paid in the year / budgeted expenditure
        for city in model.cities:
            for scheme in SCHEMES:
                for year in (2025, 2026):
                    got = queries.budget(conn, city, scheme, year)
                    account = fund_account(city, scheme)
                    paid = model.claims_paid(account, year)
                    assert got["actual"]["expenditure_fen"] == paid, (account, year)
                    assert got["actual"]["income_fen"] == model.budget_income(account, year)
                    planned = model.budgets.get((city, scheme, year))
                    if planned is None:
                        assert got["flag"] == "no_budget" and got["budget"] is None, (account, year)
                        assert got["execution_bp"] is None
                    else:
                        assert got["budget"]["expenditure_fen"] == planned
                        assert got["execution_bp"] == paid * 10_000 // planned, (account, year)
        adjusted = queries.budget(conn, model.cities[5], "resident", 2025)
        assert adjusted["budget"]["kind"] == "adjusted" and adjusted["execution_bp"] == 10_000
        feb_budget = queries.budget(conn, "340100", "resident", 2026)
        assert feb_budget["execution_bp"] == 2_000_000 * 10_000 // (4 * 10**6) == 5_000
        assert feb_budget["execution_pct"] == "50.00"
        everything = queries.budgets(conn, 2026)
        assert len(everything["without_budget"]) == 2 * len(model.cities) - 1

        # months covered, against the Anhui band
        for moment in (end_2025, end_feb):
            risk = queries.risk(conn, moment)
            assert risk["band"] == {"low_months": RISK_LOW_MONTHS, "high_months": RISK_HIGH_MONTHS}
            rows = {(r["city"], r["scheme"]): r for r in risk["rows"]}
            assert set(rows) == {(c, s) for c in model.cities for s in SCHEMES}
            for (city, scheme), row in rows.items():
                expected = model.risk(city, scheme, moment)
                assert {k: row[k] for k in expected} == expected, (city, scheme, moment)

        # the fate of every event, and the rejections by reason and producing service
        fates = {e: (s, r) for e, s, r in conn.execute("SELECT event_id, status, reason FROM pl_events")}
        assert fates == model.fates
        for event_id, (status, reason) in list(model.fates.items())[::25]:
            got = queries.event_status(conn, event_id)
            assert (got["event_id"], got["status"], got["reason"]) == (event_id, status, reason)
        missing = str(uuid.uuid4())
        assert queries.event_status(conn, missing) == {"event_id": missing, "status": "unknown", "reason": None}
        rejections = {(r["reason"], r["source"]): r["count"] for r in queries.rejections(conn)["rows"]}
        assert rejections == dict(model.rejections)
        assert rejections[("event_id_conflict", "settlement.anhui.replayed")] == 1
        assert rejections[("invalid_json", "unknown")] == 1

        assert queries.health(conn)["projection_lag"] == 0


def test_projecting_page_by_page_while_the_ledger_grows_counts_everything_once(
    database_url: str,
) -> None:
    phases, sim = generated_year(seed=21)
    ledger = open_ledger(database_url)
    model = Model(cities=tuple(sim.policy.cities))
    feed = Feed(ledger)
    projector = Projector(ledger, database_url, page_size=250)
    counted = LagCounter()  # the consumer's metric: counts only what changed since it last counted
    try:
        for messages, rejected in phases:
            feed.send(messages)
            model.feed(messages, rejected)
            with read(database_url) as conn:
                assert queries.health(conn)["projection_lag"] > 0
                assert counted(conn) == lag(conn)  # lag counts the whole backlog
            projector.run_once()  # one page now, the rest later
            with read(database_url) as conn:
                assert counted(conn) == lag(conn)
        projector.run_until_caught_up()
        assert projector.run_until_caught_up() == 0  # caught up: nothing applied twice
        assert projector.lag() == 0
        with psycopg.connect(database_url) as conn:
            assert counted(conn) == 0
            conn.execute("UPDATE pl_tracking SET notification_id = 0")  # as before a rebuild
            assert counted(conn) == lag(conn) > 0
            conn.rollback()
            assert counted(conn) == 0
    finally:
        projector.close()
    project(database_url, ledger)  # a second projector starts from the stored position
    balances = dict(table(database_url, "SELECT account, balance_fen FROM pl_account_balances WHERE balance_fen <> 0"))
    assert balances == {a: b for a, b in model.balances().items() if b}
    assert table(database_url, "SELECT count(*) FROM pl_postings") == [(2 * len(model.transfers),)]
    rejections = {(r, s): n for r, s, n in table(database_url, "SELECT * FROM pl_rejections")}
    assert rejections == dict(model.rejections)


def test_two_projectors_at_once_apply_each_page_once(database_url: str) -> None:
    sim = Simulation(load_packaged_policy(), seed=8)
    events = sim.clean_stream(60, opening_balance_fen_max=10**7)
    ledger = open_ledger(database_url)
    Feed(ledger).send(events)
    model = Model(cities=tuple(sim.policy.cities))
    model.feed(events)

    def run() -> int:
        return project(database_url, open_ledger(database_url), page_size=50)

    with ThreadPoolExecutor(3) as pool:
        applied = [f.result(timeout=60) for f in [pool.submit(run) for _ in range(3)]]
    # each notification applied by one projector only: a receipt per event, and the seed policy
    assert sum(applied) == len(model.fates) + 1
    balances = dict(table(database_url, "SELECT account, balance_fen FROM pl_account_balances"))
    assert balances == model.balances()
    assert table(database_url, "SELECT count(*) FROM pl_postings") == [(2 * len(model.transfers),)]


def test_as_of_a_past_instant_shows_the_balances_of_that_instant(
    database_url: str, year_ledger: tuple[Ledger, Model, Feed]
) -> None:
    ledger, model, _ = year_ledger
    project(database_url, ledger)
    instants = [
        datetime(2025, 12, 1, 7, 59, 59, tzinfo=CST),  # before anything moved
        datetime(2025, 12, 1, 8, 0, 0, tzinfo=CST),  # the openings' instant itself (inclusive)
        datetime(2025, 12, 10, 20, 0, tzinfo=CST),
        datetime(2025, 12, 15, 12, 15, tzinfo=CST),  # before the 04:30 UTC (12:30 CST) contribution
        datetime(2025, 12, 15, 4, 31, tzinfo=UTC),  # just after it, in another offset
        datetime(2025, 12, 20, 12, 0, tzinfo=CST),  # after the resident extractions
        datetime(2026, 1, 5, 12, 0, tzinfo=CST),
    ]
    with read(database_url) as conn:
        for moment in instants:
            expected = {a: b for a, b in model.balances(moment).items()}
            trial = queries.trial_balance(conn, moment)
            assert {r["account"]: r["balance_fen"] for r in trial["accounts"]} == expected, moment
            assert trial["total_fen"] == 0
            assert datetime.fromisoformat(trial["as_of"]) == moment
            for city in model.cities[:6]:
                for scheme in SCHEMES:
                    account = fund_account(city, scheme)
                    got = queries.city_balances(conn, city, scheme, moment)
                    income, expenditure = model.flows(account, cst_day(moment).year, moment)
                    assert got["balance_fen"] == model.balance(account, moment), (account, moment)
                    assert (got["income_fen"], got["expenditure_fen"]) == (income, expenditure), (account, moment)
            summary = queries.province_summary(conn, 2025, moment)
            assert summary["schemes"] == [model.province(s, 2025, moment) for s in SCHEMES], moment
        before, after = (model.balance("city:340300:employee:pooling", m) for m in instants[3:5])
        assert after - before == 12_300
        assert queries.trial_balance(conn, instants[0])["accounts"] == []


def test_a_reversed_claim_nets_out_of_its_own_category(database_url: str) -> None:
    """fund_year is "net of reversals": a claim and its reversal cancel under claim.{category}.{level}."""
    ledger = open_ledger(database_url)
    feed, model = Feed(ledger), Model(cities=tuple(load_packaged_policy().cities))
    city = "340100"
    money = contribution(city, "resident", 10_000_000, "2025-03-01T09:00:00+08:00")
    kept = claim(city, "resident", 300_000, "2025-03-02T09:00:00+08:00", "inpatient", "tertiary")
    wrong = claim(city, "resident", 120_000, "2025-03-03T09:00:00+08:00", "inpatient", "tertiary")
    other = claim(city, "resident", 55_000, "2025-03-03T10:00:00+08:00", "outpatient", "primary")
    undo = reversal(wrong, "2025-03-04T09:00:00+08:00")
    undo_other = reversal(other, "2025-03-04T10:00:00+08:00")
    messages = [money, kept, wrong, other, undo, undo_other]
    feed.send(messages)
    model.feed(messages)
    project(database_url, ledger)
    with read(database_url) as conn:
        got = queries.city_balances(conn, city, "resident", datetime(2025, 3, 31, tzinfo=CST))
        assert got["balance_fen"] == 10_000_000 - 300_000
        assert sum(got["expenditure_fen"].values()) == 300_000
        # the reversed claims are gone from their categories; nothing negative appears beside them
        assert all(v >= 0 for v in got["expenditure_fen"].values()), got["expenditure_fen"]
        nonzero = {k: v for k, v in got["expenditure_fen"].items() if v}
        assert nonzero == {"claim.inpatient.tertiary": 300_000}
        assert nonzero == {k: v for k, v in model.flows(
            fund_account(city, "resident"), 2025)[1].items() if v}


def test_a_claim_of_a_closed_year_reversed_is_a_prior_year_adjustment_of_the_open_year(
    database_url: str,
) -> None:
    ledger = open_ledger(database_url)
    feed = Feed(ledger)
    city = "340200"
    money = contribution(city, "employee", 8_000_000, "2025-06-01T09:00:00+08:00", "employer")
    paid = claim(city, "employee", 700_000, "2025-06-02T09:00:00+08:00", "maternity", "primary")
    close = upstream.close(city, 2025, scheme="employee", occurred_at="2026-01-03T09:00:00+08:00",
                           source="nhsa.anhui")
    undo = reversal(paid, "2026-01-10T09:00:00+08:00")
    feed.send([money, paid, close, undo])
    project(database_url, ledger)
    with read(database_url) as conn:
        closed = queries.city_balances(conn, city, "employee", datetime(2025, 12, 31, 12, tzinfo=CST))
        assert closed["income_fen"] == {"contribution.employer": 8_000_000}
        assert closed["expenditure_fen"] == {"claim.maternity.primary": 700_000}
        reopened = queries.city_balances(conn, city, "employee", datetime(2026, 1, 31, tzinfo=CST))
        assert reopened["balance_fen"] == 8_000_000
        assert reopened["income_fen"] == {}
        prior = {k: v for k, v in reopened["expenditure_fen"].items()
                 if k.startswith("prior_year_adjustment.claim.maternity")}
        assert sum(prior.values()) == -700_000 and set(prior) == set(reopened["expenditure_fen"])
        # the closed year's budget execution is as it was closed
        assert queries.budget(conn, city, "employee", 2025)["actual"]["expenditure_fen"] == 700_000


# -- months covered --------------------------------------------------------------------------------


RISK_CITIES = {  # city -> balance left after one month's claims, in months of those claims
    "340100": (299, "critical"),  # 2.99 months: below half the low bound (6 x 50)
    "340200": (300, "low"),  # exactly half the low bound
    "340300": (599, "low"),
    "340400": (600, "ok"),  # the low bound is inside the band
    "340500": (900, "ok"),  # so is the high bound
    "340600": (901, "high"),
}
MONTHLY_FEN = 1_000_000


def test_months_covered_and_levels_at_the_band_boundaries(database_url: str) -> None:
    ledger = open_ledger(database_url)
    feed, model = Feed(ledger), Model(cities=tuple(load_packaged_policy().cities))
    messages: list[dict[str, Any] | bytes] = []
    for city, (hundredths, _) in RISK_CITIES.items():
        left = hundredths * MONTHLY_FEN // 100
        messages += [contribution(city, "resident", left + MONTHLY_FEN, "2025-05-02T09:00:00+08:00"),
                     claim(city, "resident", MONTHLY_FEN, "2025-05-20T09:00:00+08:00")]
    # claims over three months: the average divides by the three months the fund has paid in
    messages += [contribution("340700", "employee", 50_000_000, "2025-03-01T09:00:00+08:00", "employer"),
                 claim("340700", "employee", 1_000_000, "2025-03-10T09:00:00+08:00"),
                 claim("340700", "employee", 2_000_000, "2025-04-10T09:00:00+08:00"),
                 claim("340700", "employee", 3_000_001, "2025-05-10T09:00:00+08:00")]
    # money and no claims at all
    messages += [contribution("340800", "employee", 1_000, "2025-05-01T09:00:00+08:00")]
    feed.send(messages)
    model.feed(messages)
    project(database_url, ledger)
    as_of = datetime(2025, 5, 31, 18, 0, tzinfo=CST)
    with read(database_url) as conn:
        risk = queries.risk(conn, as_of)
    rows = {(r["city"], r["scheme"]): r for r in risk["rows"]}
    for city, (hundredths, level) in RISK_CITIES.items():
        row = rows[(city, "resident")]
        assert row["monthly_expenditure_fen"] == MONTHLY_FEN
        assert row["months_covered_hundredths"] == hundredths, city
        assert row["months_covered"] == f"{hundredths // 100}.{hundredths % 100:02d}"
        assert row["level"] == level, (city, hundredths)
    three = rows[("340700", "employee")]
    assert three["monthly_expenditure_fen"] == 6_000_001 // 3
    assert three["months_covered_hundredths"] == (50_000_000 - 6_000_001) * 100 // (6_000_001 // 3)
    assert rows[("340800", "employee")]["months_covered_hundredths"] is None
    for (city, scheme), row in rows.items():
        expected = model.risk(city, scheme, as_of)
        assert {k: row[k] for k in expected} == expected, (city, scheme)


def test_months_covered_counts_only_the_claims_of_the_last_twelve_months(database_url: str) -> None:
    """A claim paid a year and two weeks ago is not among the last 12 months' claims."""
    ledger = open_ledger(database_url)
    feed, model = Feed(ledger), Model(cities=tuple(load_packaged_policy().cities))
    city = "341000"
    messages: list[dict[str, Any] | bytes] = [
        contribution(city, "resident", 100_000_000, "2024-06-01T09:00:00+08:00"),
        claim(city, "resident", 40_000_000, "2024-06-05T09:00:00+08:00"),  # 12 months + 15 days before
        claim(city, "resident", 2_000_000, "2025-06-10T09:00:00+08:00"),
    ]
    feed.send(messages)
    model.feed(messages)
    project(database_url, ledger)
    as_of = datetime(2025, 6, 20, 12, 0, tzinfo=CST)
    with read(database_url) as conn:
        row = next(r for r in queries.risk(conn, as_of)["rows"] if (r["city"], r["scheme"]) == (city, "resident"))
    # only the June 2025 claim is in the window, and it is the fund's first there: one month
    assert row["monthly_expenditure_fen"] == 2_000_000
    assert row["months_covered_hundredths"] == 58_000_000 * 100 // 2_000_000
    assert row == {**row, **model.risk(city, "resident", as_of)}


# -- crash safety ----------------------------------------------------------------------------------


def position(database_url: str) -> int:
    try:
        rows = table(database_url, "SELECT notification_id FROM pl_tracking")
    except psycopg.errors.UndefinedTable:
        return 0
    return int(rows[0][0]) if rows else 0


SMALL_PAGE_PROJECTOR = (
    "import sys\n"
    "from storage import open_ledger\n"
    "from projections.projector import Projector\n"
    "url = sys.argv[1]\n"
    "projector = Projector(open_ledger(url), url, page_size=int(sys.argv[2]))\n"
    "while projector.run_once():\n"
    "    pass\n"
)
KILL_WAIT_S = 60


def _first_value(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _env(database_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "POOLING_LOG_LEVEL": "error"}


def _kill_when(process: subprocess.Popen[bytes], reached: Any, what: str) -> None:
    deadline = time.monotonic() + KILL_WAIT_S
    while not reached() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    assert process.poll() is None, f"{what}: exited before the kill: " + (
        process.stderr.read().decode()[-2000:] if process.stderr else "")
    assert reached(), f"{what}: no progress in {KILL_WAIT_S} s"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_projector_killed_with_sigkill_mid_stream_double_counts_nothing(database_url: str) -> None:
    sim = Simulation(load_packaged_policy(), seed=13)
    events: list[dict[str, Any] | bytes] = list(sim.clean_stream(800, opening_balance_fen_max=10**8))
    city = next(iter(sim.policy.cities))
    unknown_city = contribution("349900", "resident", 38_000, "2025-03-05T10:00:00+08:00")
    overdraft = claim(city, "resident", 10**13, "2025-03-28T10:00:00+08:00")
    faults: list[dict[str, Any] | bytes] = [b"not json at all", unknown_city, overdraft]
    rejected = {unknown_city["event_id"]: "unknown_city", overdraft["event_id"]: "insufficient_funds"}
    last = events[-1]
    assert isinstance(last, dict)
    stream = events[: len(events) // 2] + faults + events[len(events) // 2 :] + events[-5:]
    stream.append({**last, "source": "tax.anhui.changed"})
    ledger = open_ledger(database_url)
    Feed(ledger).send(stream, batch_size=500)
    model = Model(cities=tuple(sim.policy.cities))
    model.feed(stream, rejected)
    receipts = len(model.fates) + 1  # + the junk message, which has no event_id
    assert receipts > 12_000

    # the command itself fills the empty projection in one set-based transaction: killed while
    # starting, during that pass or after it, it leaves none of it or all of it
    for delay in (0.3, 1.5, 3.0):
        process = subprocess.Popen(
            [sys.executable, "-m", "pooling_ledger.cli", "project"],
            env=_env(database_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with psycopg.connect(database_url) as conn:
            made = [t for t in READ_TABLES if _first_value(conn, "SELECT to_regclass(%s) IS NOT NULL", t)]
            if "pl_tracking" not in made:  # killed before it made its tables (they are made again)
                continue
            assert position(database_url) == 0 or lag(conn) == 0
            conn.execute("TRUNCATE " + ", ".join(t for t in made if t != "pl_tracking"))
            conn.execute("UPDATE pl_tracking SET notification_id = 0")
    # a projector with small pages, killed right after commits at different points (mid-page)
    for step in (700, 1_200, 1_300):
        target = position(database_url) + step
        process = subprocess.Popen(
            [sys.executable, "-c", SMALL_PAGE_PROJECTOR, database_url, "100"],
            env=_env(database_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        _kill_when(process, lambda t=target: position(database_url) >= t, f"small pages to {target}")
    (notifications,) = table(database_url, "SELECT max(notification_id) FROM ledger_events")[0]
    assert position(database_url) < notifications, "the kills should have come before the end"

    final = subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", "project", "--until-caught-up"],
        env=_env(database_url), capture_output=True, timeout=120, check=False,
    )
    assert final.returncode == 0, final.stderr.decode()[-3000:]
    report = json.loads(final.stdout.decode().strip().splitlines()[-1])
    assert report["lag"] == 0 and report["projected"] > 0

    balances = dict(table(database_url, "SELECT account, balance_fen FROM pl_account_balances"))
    assert balances == model.balances()
    daily_sums = dict(table(database_url, "SELECT account, sum(net_fen) FROM pl_account_daily GROUP BY account"))
    assert daily_sums == model.balances()
    daily = {(a, d): n for a, d, n in table(database_url, "SELECT * FROM pl_account_daily")}
    assert daily == model.daily()
    assert table(database_url, "SELECT count(*) FROM pl_postings") == [(2 * len(model.transfers),)]
    assert table(database_url, "SELECT count(*) FROM pl_events") == [(len(model.fates),)]
    rejections = {(r, s): n for r, s, n in table(database_url, "SELECT * FROM pl_rejections")}
    assert rejections == dict(model.rejections) == {
        ("invalid_json", "unknown"): 1, ("unknown_city", "tax.anhui"): 1,
        ("insufficient_funds", "settlement.anhui"): 1, ("event_id_conflict", "tax.anhui.changed"): 1,
    }
    assert table(database_url, "SELECT count(*) FROM pl_policies") == [(1,)]
    assert sum(model.balances().values()) == 0
