"""`pooling-ledger demo` (issue 10): fiscal 2024-2026 of the simulated province through Kafka, the
ledger, the relay and the read side, its figures held to the simulator's own expectations.

The demo runs as a user runs it (a subprocess, `--json --no-serve`) on this module's database and
broker, with an events topic of one partition, as the demo makes on its own broker: the
adjustment funds' messages depend on other cities' (an allocation on every city's extractions,
an extraction on the room left under the ceiling), and Kafka keeps order within a partition only
(pooling_ledger/demo.py, `province_settings`). What it reports is checked against
the stream generated here again: the fates against `sim.totals`, every fund's balance against the
accepted messages folded by tests/test_province.py's StreamBook, the adjustment funds year by
year and the allocations against the accepted messages; then the dashboard, in Chromium, shows
the years as the API gives them. The demo at its default size runs too (its wall time is
measured in the README, not asserted here).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from ledger.clock import CHINA_STANDARD_TIME
from ledger.policy import load_packaged_policy
from pooling_ledger.embedded import create_database, ensure_topics
from pooling_ledger.province import BadShare, ProvinceSimulation, Simulated
from projections.roles import ensure_reader_role
from tests.test_cli import cli
from tests.test_province import StreamBook

POLICY = load_packaged_policy()
CITIES = list(POLICY.cities)
SCHEMES = ("employee", "resident")
YEARS = (2024, 2025, 2026)
#: The small run: 6,000 messages over the three years with the demo's default 1 % of bad ones.
EVENTS, SEED, BAD_SHARE = 6_000, 13, "0.01"
#: The demo's default size (pooling_ledger/demo.py DEFAULT_EVENTS and the CLI's default).
DEFAULT_EVENTS = 50_000
DEMO_TIMEOUT_S = 600


@dataclass(frozen=True)
class DemoRun:
    database_url: str
    report: dict[str, Any]
    messages: tuple[Simulated, ...]
    sim: ProvinceSimulation


def one_partition_topics(bootstrap: str) -> dict[str, str]:
    prefix = f"d{uuid.uuid4().hex[:8]}"
    names = {kind: f"{prefix}.pooling.{kind}.v1" for kind in ("events", "ledger", "rejections")}
    ensure_topics(bootstrap, {names["events"]: 1, names["ledger"]: 4, names["rejections"]: 4})
    return names


def run_demo(pg_server_url: str, bootstrap: str, data_dir: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """`demo --json --no-serve ARGS` on a fresh database and fresh topics: (its URL, the report)."""
    database_url = create_database(pg_server_url, f"demo_{uuid.uuid4().hex[:12]}")
    topics = one_partition_topics(bootstrap)
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "POOLING_EVENTS_TOPIC": topics["events"],
        "POOLING_LEDGER_TOPIC": topics["ledger"],
        "POOLING_REJECTIONS_TOPIC": topics["rejections"],
        "POOLING_DATA_DIR": str(data_dir),
    }
    result = cli("demo", "--json", "--no-serve", *args, env=env, timeout=DEMO_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return database_url, json.loads(result.stdout)


@pytest.fixture(scope="module")
def demo_run(pg_server_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    url, report = run_demo(
        pg_server_url, kafka_bootstrap, tmp_path_factory.mktemp("demo"),
        "--events", str(EVENTS), "--seed", str(SEED), "--bad-share", BAD_SHARE,
    )
    sim = ProvinceSimulation(POLICY, events=EVENTS, seed=SEED, years=(2024, 2026), bad_share=BadShare.parse(BAD_SHARE))
    messages = tuple(sim)
    yield DemoRun(url, report, messages, sim)


def rejected_by_reason(by_fate: Counter[str] | dict[str, int]) -> dict[str, int]:
    return {f.split(":", 1)[1]: n for f, n in sorted(by_fate.items()) if f.startswith("rejected:")}


def funds_of(balances: dict[str, int]) -> dict[str, int]:
    return {a: b for a, b in balances.items() if b and a.split(":")[0] in ("city", "province")}


def year_end(year: int) -> datetime:
    return datetime(year, 12, 31, 23, 59, 59, tzinfo=CHINA_STANDARD_TIME)


def accepted_events(messages: tuple[Simulated, ...], kind: str) -> list[dict[str, Any]]:
    events = (json.loads(m.value) for m in messages if m.expected.status == "accepted")
    return [e for e in events if e["type"] == kind]


# -- the tests ------------------------------------------------------------------------------------


def test_demo_help_names_the_three_year_options_and_the_one_month_one() -> None:
    shown = cli("demo", "--help")
    assert shown.returncode == 0, shown.stderr
    for option in ("--events", "--years", "--bad-share", "--seed", "--events-per-city", "--no-serve", "--json"):
        assert option in shown.stdout, option
    refused = cli("demo", "--events", "2000", "--no-serve")  # fewer than 1,000 a year
    assert refused.returncode == 2
    assert "at least 3,000 events" in refused.stderr


@pytest.mark.integration
def test_every_message_gets_the_fate_the_simulator_expects_and_the_trial_balance_is_zero(demo_run: DemoRun) -> None:
    report, totals = demo_run.report, demo_run.sim.totals
    assert totals.messages == EVENTS
    assert (report["years"], report["seed"], report["events"]) == ([2024, 2026], SEED, EVENTS)
    assert report["published"] == report["decided"] == EVENTS
    assert report["fates"] == dict(sorted(totals.by_fate.items()))
    assert report["as_expected"] is True
    assert report["outcomes"] == {
        status: n for status in ("accepted", "rejected", "duplicate")
        if (n := sum(c for f, c in totals.by_fate.items() if f.split(":")[0] == status))
    }
    assert report["outcomes"]["accepted"] == totals.by_fate["accepted"]
    expected_rejections = rejected_by_reason(totals.by_fate)
    assert len(expected_rejections) >= 5, expected_rejections  # the stream does break rules, in several ways
    assert report["rejections_by_reason"] == expected_rejections
    assert report["rejections_read_back"] == expected_rejections  # relayed to the rejections topic
    assert report["trial_balance"]["total_fen"] == 0
    assert report["projected"] > 0  # the read tables fed for the dashboard


@pytest.mark.integration
def test_every_fund_holds_what_the_accepted_messages_say(demo_run: DemoRun) -> None:
    book = StreamBook(demo_run.messages)
    booked = {a["account"]: a["balance_fen"] for a in demo_run.report["trial_balance"]["accounts"]}
    assert funds_of(booked) == funds_of(book.balances())
    assert {a for a in funds_of(booked) if a.endswith(":pooling")} == {
        f"city:{c}:{s}:pooling" for c in CITIES for s in SCHEMES}
    cities = {c["city"]: c for c in demo_run.report["cities"]}
    for city in CITIES:
        assert cities[city]["resident_balance_fen"] == booked.get(f"city:{city}:resident:pooling", 0)
        assert cities[city]["employee_balance_fen"] == booked.get(f"city:{city}:employee:pooling", 0)
        assert cities[city]["personal_balance_fen"] == booked.get(f"city:{city}:employee:personal", 0)


@pytest.mark.integration
def test_the_adjustment_funds_work_from_their_phase_and_allocations_reach_the_cities_with_gaps(demo_run: DemoRun) -> None:
    report, messages = demo_run.report, demo_run.messages
    extracted: Counter[tuple[str, int]] = Counter()
    for e in accepted_events(messages, "AdjustmentFundExtracted"):
        extracted[(e["scheme"], e["fiscal_year"])] += e["amount_fen"]
    allocated: Counter[tuple[int, str, str]] = Counter()
    for e in accepted_events(messages, "AdjustmentFundAllocated"):
        allocated[(e["fiscal_year"], e["scheme"], e["city"])] += e["amount_fen"]
    book = StreamBook(messages)

    province = {(r["year"], r["scheme"]): r for r in report["province"]}
    assert set(province) == {(y, s) for y in YEARS for s in SCHEMES}
    for (year, scheme), row in province.items():
        assert row["extracted_fen"] == extracted[(scheme, year)], (year, scheme)
        assert row["allocated_fen"] == sum(n for (y, s, _), n in allocated.items() if (y, s) == (year, scheme))
        account = f"province:{scheme}:adjustment"
        at_year_end = sum(change for when, a, change in book.legs if a == account and when <= year_end(year))
        assert row["adjustment_fund_fen"] == at_year_end, (year, scheme)
        assert row["ceiling_fen"] > 0, (year, scheme)
    # the unification: residents' adjustment fund from 2025, employees' from 2026 (X1)
    working = {(y, s) for (y, s), r in province.items() if r["extracted_fen"]}
    assert working == {(2025, "resident"), (2026, "resident"), (2026, "employee")}
    assert province[(2024, "resident")]["adjustment_fund_fen"] == province[(2025, "employee")]["adjustment_fund_fen"] == 0

    shown = {(r["year"], r["scheme"], r["city"]): r["allocated_fen"] for r in report["allocations"]}
    assert shown == dict(allocated)
    assert shown, "the province allocated to a city with a gap"
    funds = {f["scheme"]: f for f in report["adjustment_funds"]}
    for scheme in SCHEMES:
        assert funds[scheme]["balance_fen"] == book.balances().get(f"province:{scheme}:adjustment", 0)
        assert {int(y): v for y, v in funds[scheme]["extracted_fen"].items()} == {y: extracted[(scheme, y)] for y in YEARS}


@pytest.mark.integration
def test_the_dashboard_shows_the_years_of_provincial_pooling(demo_run: DemoRun) -> None:
    from tests.test_dashboard import render
    from tests.test_read_views_rev2 import TOKEN, uvicorn_serving

    ensure_reader_role(demo_run.database_url)
    with uvicorn_serving(demo_run.database_url) as base:
        page = render(f"{base}/dashboard?year=2026#token={TOKEN}")
        summaries = {y: api(base, f"/v1/province/summary?year={y}&as_of={quote(year_end(y).isoformat())}") for y in YEARS}
        days = {s: api(base, f"/v1/accounts/province:{s}:adjustment/daily")["days"] for s in SCHEMES}
    body = page.body or {}
    assert "data-error" not in body, body.get("data-error")
    assert body.get("data-loaded") == "true"
    assert page.by_id["lag"]["data-lag"] == "0"  # the demo projected every event before it serves
    for year, summary in summaries.items():
        for s in summary["schemes"]:
            for field, key in (("extracted", "extracted_fen"), ("allocated", "allocated_fen"),
                               ("balance", "adjustment_fund_fen"), ("ceiling", "ceiling_fen")):
                testid = f"year-{year}-{s['scheme']}-{field}"
                assert page.by_id[testid]["data-fen"] == str(s[key]), testid
    operating = {(y, s): page.by_id[f"year-{y}-{s}-row"]["data-operating"] == "true" for y in YEARS for s in SCHEMES}
    assert {k for k, on in operating.items() if on} == {(2025, "resident"), (2026, "resident"), (2026, "employee")}
    for scheme in SCHEMES:
        assert page.by_id[f"adjustment-line-{scheme}"]["data-points"] == str(len(days[scheme]))
    assert {t for t in page.by_id if t.startswith("ceiling-line-")} == {
        "ceiling-line-2025-resident", "ceiling-line-2026-resident", "ceiling-line-2026-employee"}
    allocations = {f"allocation-{r['year']}-{r['city']}-{r['scheme']}": str(r["allocated_fen"])
                   for r in demo_run.report["allocations"]}
    assert {t: page.by_id[t]["data-fen"] for t in page.by_id if t.startswith("allocation-")} == allocations


def api(base: str, path: str) -> Any:
    import urllib.request

    from tests.test_read_views_rev2 import TOKEN

    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.mark.integration
def test_the_demo_at_its_default_size_runs_the_three_years_as_expected(
    pg_server_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    _, report = run_demo(pg_server_url, kafka_bootstrap, tmp_path, "--seed", "1")
    assert report["events"] == report["published"] == report["decided"] == DEFAULT_EVENTS
    assert report["as_expected"] is True, (report["fates"], report["expected_fates"])
    assert report["trial_balance"]["total_fen"] == 0
