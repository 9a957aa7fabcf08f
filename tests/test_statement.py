"""The annual fund statement (issue 10) and the exports of the journal and the statement.

A two-year history (2025, 2026) of hand-made events goes through the real PostgreSQL ledger
and the projector: every category (contributions of every payer kind, subsidies of every
level, interest, claims of every category, the major-illness premium, recoveries of every
reason, openings, extractions, allocations), the employee personal accounts (E6), a reversal
within its year and two reversals of a closed year's movements (prior-year adjustments).

Every expected figure is the test's own: sums over the journal (`export journal`, the event
store's accepted transfers, checked against the events sent) or literals from the events sent;
never the statement code's.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pooling_ledger.embedded import create_database
from projections.statement import YearTotal, annual_statement, yuan_text
from tests import statement_model, upstream
from tests.test_projections import Feed, project

HEFEI, WUHU = "340100", "340200"
TOKEN = "statement-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
YEARS = (2025, 2026)
PARQUET_HINT = "pip install 'pooling-ledger[parquet]'"
MONEY_TYPES = {
    "OpeningBalanceRecorded": "balance_fen", "ContributionReceived": "amount_fen", "SubsidyDisbursed": "amount_fen",
    "InterestCredited": "amount_fen", "ClaimPaid": "amount_fen", "CriticalIllnessPremiumPaid": "amount_fen",
    "RecoveryReceived": "amount_fen", "AdjustmentFundExtracted": "amount_fen", "AdjustmentFundAllocated": "amount_fen",
}


def at(day: str, hour: int = 10) -> str:
    return f"{day}T{hour:02d}:00:00+08:00"


def claim(city: str, scheme: str, amount_fen: int, day: str, category: str, **extra: Any) -> dict[str, Any]:
    return upstream.claim(city, scheme, amount_fen, category=category, occurred_at=at(day), **extra)


# -- the history ------------------------------------------------------------------------------------

INPATIENT_2025 = claim(HEFEI, "resident", 9_000_000, "2025-04-01", "inpatient")
CHRONIC_2025 = claim(HEFEI, "resident", 700_000, "2025-04-02", "chronic_special")
WRONG_2025 = claim(HEFEI, "resident", 65_000, "2025-04-03", "outpatient")
PERSONAL_2025 = claim(HEFEI, "employee", 300_000, "2025-04-04", "outpatient", paid_from="personal_account")

YEAR_2025 = [
    upstream.opening(HEFEI, "resident", 50_000_000, previous_year_income_fen=200_000_000),
    upstream.opening(WUHU, "resident", 30_000_000, previous_year_income_fen=100_000_000),
    upstream.opening(HEFEI, "employee", 20_000_000, previous_year_income_fen=80_000_000),
    upstream.contribution(HEFEI, "resident", 8_000_000, occurred_at=at("2025-02-01")),
    upstream.contribution(HEFEI, "resident", 300_000, payer_kind="medical_assistance", occurred_at=at("2025-02-01")),
    upstream.contribution(HEFEI, "employee", 5_000_000, payer_kind="employer", occurred_at=at("2025-02-02")),
    upstream.contribution(HEFEI, "employee", 2_000_000, payer_kind="individual", occurred_at=at("2025-02-02")),
    upstream.contribution(WUHU, "resident", 4_000_000, occurred_at=at("2025-02-03")),
    upstream.subsidy(HEFEI, "resident", 6_000_000, level="central", occurred_at=at("2025-03-01")),
    upstream.subsidy(HEFEI, "resident", 1_500_000, level="provincial", occurred_at=at("2025-03-01")),
    upstream.subsidy(HEFEI, "resident", 500_000, level="city", occurred_at=at("2025-03-01")),
    upstream.subsidy(HEFEI, "resident", 200_000, level="county", occurred_at=at("2025-03-01")),
    upstream.subsidy(WUHU, "resident", 3_000_000, level="central", occurred_at=at("2025-03-02")),
    upstream.interest("resident", 12_345, city=HEFEI, occurred_at=at("2025-03-20")),
    upstream.interest("employee", 1_111, city=HEFEI, occurred_at=at("2025-03-20")),
    upstream.premium(HEFEI, "resident", 250_000, fiscal_year=2025, occurred_at=at("2025-03-15")),
    INPATIENT_2025,
    claim(HEFEI, "resident", 1_200_000, "2025-04-01", "outpatient"),
    CHRONIC_2025,
    WRONG_2025,
    claim(HEFEI, "employee", 400_000, "2025-04-05", "maternity"),
    PERSONAL_2025,
    claim(WUHU, "resident", 9_000_000, "2025-05-01", "inpatient"),
    upstream.reversal(WRONG_2025, occurred_at=at("2025-04-10")),  # within its year: nets out of outpatient
    upstream.recovery(HEFEI, "resident", 50_000, claim_event_id=INPATIENT_2025["event_id"], reason="fraud",
                      occurred_at=at("2025-06-01")),
    upstream.recovery(HEFEI, "resident", 20_000, reason="overpayment", occurred_at=at("2025-06-02")),
    upstream.extraction(1_000_000, city=HEFEI, fiscal_year=2025, occurred_at=at("2025-07-01")),
    upstream.extraction(500_000, city=WUHU, fiscal_year=2025, occurred_at=at("2025-07-01")),
    upstream.interest("resident", 6_789, occurred_at=at("2025-07-20")),  # the province's adjustment fund
    upstream.allocation(2_000_000, 800_000, city=WUHU, fiscal_year=2025, occurred_at=at("2025-09-01")),
]
YEAR_2026 = [
    upstream.close(HEFEI, 2025, scheme="resident", occurred_at=at("2026-01-05")),
    upstream.close(HEFEI, 2025, scheme="employee", occurred_at=at("2026-01-05")),  # locks the personal accounts
    upstream.contribution(HEFEI, "resident", 9_000_000, occurred_at=at("2026-02-01")),
    upstream.contribution(HEFEI, "resident", 350_000, payer_kind="medical_assistance", occurred_at=at("2026-02-01")),
    upstream.contribution(HEFEI, "employee", 6_000_000, payer_kind="employer", occurred_at=at("2026-02-02")),
    upstream.contribution(HEFEI, "employee", 2_500_000, payer_kind="individual", occurred_at=at("2026-02-02")),
    upstream.contribution(WUHU, "resident", 4_500_000, occurred_at=at("2026-02-03")),
    upstream.subsidy(HEFEI, "resident", 6_500_000, level="central", occurred_at=at("2026-03-01")),
    upstream.subsidy(WUHU, "resident", 1_000_000, level="provincial", occurred_at=at("2026-03-01")),
    upstream.interest("resident", 20_000, city=WUHU, occurred_at=at("2026-03-20")),
    upstream.interest("resident", 5_000, occurred_at=at("2026-03-20")),
    upstream.reversal(CHRONIC_2025, occurred_at=at("2026-02-10")),  # a prior-year adjustment (2025 closed)
    upstream.reversal(PERSONAL_2025, occurred_at=at("2026-02-11")),  # one of the personal accounts
    claim(HEFEI, "resident", 10_000_000, "2026-04-01", "inpatient"),
    claim(HEFEI, "employee", 3_000_000, "2026-04-02", "inpatient"),
    claim(HEFEI, "employee", 500_000, "2026-04-03", "chronic_special", paid_from="personal_account"),
    claim(WUHU, "resident", 8_000_000, "2026-04-04", "outpatient"),
    upstream.premium(HEFEI, "resident", 260_000, fiscal_year=2026, occurred_at=at("2026-04-15")),
    upstream.recovery(WUHU, "resident", 30_000, reason="audit_adjustment", occurred_at=at("2026-05-01")),
    upstream.extraction(300_000, city=HEFEI, fiscal_year=2026, occurred_at=at("2026-06-01")),
    upstream.extraction(200_000, city=HEFEI, scheme="employee", fiscal_year=2026, occurred_at=at("2026-06-01")),
    upstream.allocation(2_480_000, 600_000, city=WUHU, fiscal_year=2026, occurred_at=at("2026-09-01")),
]


@dataclass
class History:
    database_url: str
    #: the journal (`export journal`, every year) as CSV rows
    journal: list[dict[str, str]]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "pooling_ledger.cli", *args],
            env={**os.environ, "POOLING_LOG_LEVEL": "error", "DATABASE_URL": self.database_url},
            capture_output=True, text=True, timeout=300, check=False,
        )
        if check:
            assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-4000:])
        return result

    def statement(self, year: int, *options: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.cli("statement", "--year", str(year), "--format", "json",
                                                   *options).stdout)
        return body


@pytest.fixture(scope="module")
def history(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    from storage import open_ledger

    database_url = create_database(pg_server_url, f"test_{uuid.uuid4().hex[:12]}")
    ledger = open_ledger(database_url)
    try:
        feed = Feed(ledger)
        for year in (YEAR_2025, YEAR_2026):
            outcomes = feed.send(year)
            assert [(o.status, o.reason) for o in outcomes] == [("accepted", None)] * len(year), [
                (o.status, o.reason, o.detail) for o in outcomes if o.status != "accepted"]
        project(database_url, ledger)
    finally:
        ledger.close()
    made = History(database_url, [])
    journal = tmp_path_factory.mktemp("journal") / "journal.csv"
    made.cli("export", "journal", "-o", str(journal))
    made.journal = list(csv.DictReader(journal.open(encoding="utf-8")))
    yield made


# -- the test's own figures, from the journal ---------------------------------------------------------


def expected_lines(
    journal: list[dict[str, str]], year: int, funds: set[str], consolidated: bool
) -> dict[str, int]:
    """The figure of every line of a statement of `funds` (accounts) in `year`, computed here."""
    return statement_model.expected_lines(statement_model.effects(journal), year, funds, consolidated)


def funds_of(statement: dict[str, Any], journal: list[dict[str, str]]) -> set[str]:
    """The accounts a statement is about, named here from what it says it is."""
    city, scheme, fund = statement["city"], statement["scheme"], statement["fund"]
    posted = {row[k] for row in journal for k in ("debit_account", "credit_account")}
    if fund == "pooling":
        return {f"city:{city}:{scheme}:pooling"}
    if fund == "personal_accounts":
        return {f"city:{city}:employee:personal"} if city else {a for a in posted if a.endswith(":employee:personal")}
    if fund == "adjustment":
        return {f"province:{scheme}:adjustment"}
    assert fund == "consolidated", fund
    return {a for a in posted if a.startswith("city:") and a.endswith(f":{scheme}:pooling")} | {
        f"province:{scheme}:adjustment"}


def figures(statement: dict[str, Any]) -> dict[str, int]:
    return {line["code"]: line["amount_fen"] for line in statement["lines"]}


def key(statement: dict[str, Any]) -> tuple[str, str | None, str, str]:
    return (statement["scope"], statement["city"], statement["scheme"], statement["fund"])


def one(body: dict[str, Any], city: str | None, scheme: str, fund: str) -> dict[str, Any]:
    found = [s for s in body["statements"] if (s["city"], s["scheme"], s["fund"]) == (city, scheme, fund)]
    assert len(found) == 1, (city, scheme, fund)
    return found[0]


# -- the journal, against the events sent ----------------------------------------------------------------


@pytest.mark.integration
def test_the_journal_export_holds_every_event_sent_and_filters_by_fiscal_year(
    history: History, tmp_path: Path
) -> None:
    by_event: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in history.journal:
        by_event[row["event_id"]].append(row)
    sent = YEAR_2025 + YEAR_2026
    for message in sent:
        field = MONEY_TYPES.get(message["type"])
        if field is not None:  # an employee's own contribution is split (E6): its transfers add up
            assert sum(int(r["amount_fen"]) for r in by_event[message["event_id"]]) == message[field], message
    reversals = {m["event_id"]: m["original_event_id"] for m in sent if m["type"] == "EventReversed"}
    for event_id, original in reversals.items():
        assert [r["reversal_of"] for r in by_event[event_id]] == [original]
    assert set(by_event) == {m["event_id"] for m in sent if m["type"] in MONEY_TYPES} | set(reversals)
    prior = [r for r in history.journal if r["prior_year_adjustment"] == "True"]
    assert sorted((r["category"], r["fiscal_year"]) for r in prior) == [
        ("prior_year_adjustment.claim.chronic_special", "2026"), ("prior_year_adjustment.claim.outpatient", "2026")]

    for year in YEARS:
        target = tmp_path / f"journal-{year}.csv"
        history.cli("export", "journal", "--year", str(year), "--format", "csv", "-o", str(target))
        rows = list(csv.DictReader(target.open(encoding="utf-8")))
        assert rows == [r for r in history.journal if r["fiscal_year"] == str(year)]
        assert rows
    assert history.cli("export", "journal", "--format", "xlsx", check=False).returncode == 2
    assert history.cli("export", "events", "--year", "2025", check=False).returncode == 2


@pytest.mark.integration
def test_the_journal_as_parquet_or_the_install_it_needs(history: History, tmp_path: Path) -> None:
    """CI installs only `.[test]`: without pyarrow the export names the extra to install; with it, the
    file holds the journal's rows with integer fen."""
    target = tmp_path / "journal-2026.parquet"
    result = history.cli("export", "journal", "--year", "2026", "--format", "parquet", "-o", str(target),
                         check=False)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert result.returncode == 2, result.stderr
        assert PARQUET_HINT in result.stderr
        assert not target.exists()
        return
    assert result.returncode == 0, result.stderr
    table = pq.read_table(target)
    assert str(table.schema.field("amount_fen").type) == "int64"
    assert str(table.schema.field("fiscal_year").type) == "int32"
    rows = table.to_pylist()
    expected = [r for r in history.journal if r["fiscal_year"] == "2026"]
    assert len(rows) == len(expected) > 0
    for got, want in zip(rows, expected, strict=True):
        assert got["amount_fen"] == int(want["amount_fen"]) and isinstance(got["amount_fen"], int)
        assert got["notification_id"] == int(want["notification_id"])
        assert got["fiscal_year"] == 2026
        assert got["prior_year_adjustment"] == (want["prior_year_adjustment"] == "True")
        for column in ("event_id", "type", "debit_account", "credit_account", "category", "occurred_at"):
            assert got[column] == want[column]
        assert (got["reversal_of"] or "") == want["reversal_of"]
    assert history.cli("export", "journal", "--format", "parquet", check=False).returncode == 2  # needs -o


# -- the statement ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_every_line_is_the_journals_sum_of_its_categories_and_the_years_chain(history: History) -> None:
    bodies = {year: history.statement(year) for year in YEARS}
    for year, body in bodies.items():
        assert (body["statement"], body["fiscal_year"], body["unit"]) == ("annual_fund_statement", year, "fen")
        assert body["city"] is None and body["scheme"] is None
        for statement in body["statements"]:
            funds = funds_of(statement, history.journal)
            assert set(statement["accounts"]) >= funds
            expected = expected_lines(history.journal, year, funds, statement["fund"] == "consolidated")
            got = figures(statement)
            assert {code: got.get(code) for code in expected} == expected, (year, key(statement))
            assert {c: v for c, v in got.items() if v and c not in expected} == {}, (year, key(statement))
            assert all(statement["checks"].values()), statement["checks"]
            for line in statement["lines"]:
                assert Decimal(line["amount_yuan"]) == Decimal(line["amount_fen"]) / 100
    # each statement's closing balance is the next year's opening line (no opening is recorded in 2026)
    closing = {key(s): figures(s)["closing_balance"] for s in bodies[2025]["statements"]}
    opening = {key(s): figures(s)["opening_balance"] for s in bodies[2026]["statements"]}
    assert closing == opening
    assert len(closing) == len(bodies[2025]["statements"])

    # literals from the events sent
    y25, y26 = bodies[2025], bodies[2026]
    hefei = figures(one(y25, HEFEI, "resident", "pooling"))
    assert hefei["opening_balance.recorded"] == 50_000_000
    assert hefei["claim.outpatient"] == 1_200_000  # the 65,000 reversed within the year nets out
    assert hefei["income.other"] == 70_000 and hefei["premium.critical_illness"] == 250_000
    assert hefei["contribution.medical_assistance"] == 300_000 and hefei["subsidy.county"] == 200_000
    assert hefei["extraction.remitted"] == 1_000_000
    hefei_26 = figures(one(y26, HEFEI, "resident", "pooling"))
    assert hefei_26["prior_year_adjustment.claim.chronic_special"] == 700_000
    assert hefei_26["prior_year_adjustment"] == 700_000 and hefei_26["claim.chronic_special"] == 0
    assert figures(one(y25, HEFEI, "resident", "pooling"))["claim.chronic_special"] == 700_000  # as closed
    personal = figures(one(y25, HEFEI, "employee", "personal_accounts"))
    assert (personal["contribution.individual"], personal["claim.outpatient"]) == (2_000_000, 300_000)
    assert personal["closing_balance"] == 1_700_000
    personal_26 = figures(one(y26, HEFEI, "employee", "personal_accounts"))
    assert personal_26["prior_year_adjustment.claim.outpatient"] == 300_000
    assert personal_26["closing_balance"] == 1_700_000 + 300_000 + 2_500_000 - 500_000
    employee = figures(one(y25, HEFEI, "employee", "pooling"))
    assert employee["contribution.individual"] == 0 and employee["contribution.employer"] == 5_000_000
    assert figures(one(y25, WUHU, "resident", "pooling"))["allocation.received"] == 800_000
    assert figures(one(y26, WUHU, "resident", "pooling"))["recovery.audit_adjustment"] == 30_000


@pytest.mark.integration
def test_the_consolidated_province_cancels_extractions_and_allocations(history: History) -> None:
    """X6: in the consolidated statement what the cities remit the adjustment fund receives, and what it
    allocates the cities receive; shown both ways, netting to zero, and out of the totals."""
    for year, (extracted, allocated) in {2025: (1_500_000, 800_000), 2026: (300_000, 600_000)}.items():
        body = history.statement(year)
        for scheme in ("employee", "resident"):
            got = figures(one(body, None, scheme, "consolidated"))
            adjustment = figures(one(body, None, scheme, "adjustment"))
            cities = [figures(s) for s in body["statements"] if s["fund"] == "pooling" and s["scheme"] == scheme]
            assert got["extraction.remitted"] == got["extraction.received"] == adjustment["extraction.received"]
            assert got["allocation.paid"] == got["allocation.received"] == adjustment["allocation.paid"]
            assert got["x6.extraction_net"] == got["x6.allocation_net"] == 0
            assert got["extraction.remitted"] == sum(c["extraction.remitted"] for c in cities)
            assert got["closing_balance"] == adjustment["closing_balance"] + sum(c["closing_balance"] for c in cities)
            internal = {line["code"] for line in one(body, None, scheme, "consolidated")["lines"]
                        if line["section"] == "internal"}
            assert internal == {"extraction.remitted", "extraction.received", "allocation.paid",
                                "allocation.received", "x6.extraction_net", "x6.allocation_net"}
            # the totals leave the internal transfers out: the year's surplus is the cities' and the fund's
            assert got["surplus"] == sum(c["surplus"] for c in cities) + adjustment["surplus"]
        resident = figures(one(body, None, "resident", "consolidated"))
        assert (resident["extraction.received"], resident["allocation.paid"]) == (extracted, allocated)
    employee_26 = figures(one(history.statement(2026), None, "employee", "consolidated"))
    assert employee_26["extraction.received"] == 200_000
    # the employee personal accounts are never in the consolidated pooling figures
    assert not any("personal" in a for a in one(history.statement(2026), None, "employee", "consolidated")["accounts"])


@pytest.mark.integration
def test_one_city_and_one_scheme_and_the_other_formats(history: History, tmp_path: Path) -> None:
    whole = history.statement(2026)
    hefei = history.statement(2026, "--city", HEFEI, "--scheme", "employee")
    assert [(s["city"], s["fund"]) for s in hefei["statements"]] == [(HEFEI, "pooling"), (HEFEI, "personal_accounts")]
    assert hefei["statements"] == [one(whole, HEFEI, "employee", f) for f in ("pooling", "personal_accounts")]

    rows = list(csv.DictReader(io.StringIO(history.cli("export", "statement", "--year", "2026").stdout)))
    lines = [(s, line) for s in whole["statements"] for line in s["lines"]]
    assert len(rows) == len(lines)
    for row, (s, line) in zip(rows, lines, strict=True):
        assert (row["city"], row["scheme"], row["fund"], row["code"]) == (s["city"] or "", s["scheme"], s["fund"],
                                                                          line["code"])
        assert (int(row["amount_fen"]), row["amount_yuan"]) == (line["amount_fen"], line["amount_yuan"])

    table = history.cli("statement", "--year", "2026", "--city", WUHU).stdout
    assert "Closing balance carried forward" in table and "Wuhu (340200), resident scheme, pooling fund" in table
    closing = figures(one(whole, WUHU, "resident", "pooling"))["closing_balance"]
    assert f"{closing // 100:,}.{closing % 100:02d}" in table

    exported = tmp_path / "statement.json"
    history.cli("export", "statement", "--year", "2026", "--format", "json", "-o", str(exported))
    assert json.loads(exported.read_text(encoding="utf-8")) == whole

    unknown = history.cli("statement", "--year", "2026", "--city", "999999", check=False)
    assert unknown.returncode == 2 and "999999" in unknown.stderr
    assert history.cli("statement", "--year", "2026", "--format", "pdf", check=False).returncode == 2
    assert history.cli("statement", "--year", "2026", "--scheme", "farmers", check=False).returncode == 2
    assert history.cli("statement", "--year", "2026", "--format", "xlsx", check=False).returncode == 2  # needs -o
    assert history.cli("export", "statement", check=False).returncode == 2  # needs --year
    assert history.cli("export", "statement", "--year", "2026", "--format", "parquet", check=False).returncode == 2


@pytest.mark.integration
def test_the_xlsx_has_a_sheet_per_statement_with_the_json_figures(history: History, tmp_path: Path) -> None:
    from openpyxl import load_workbook

    body = history.statement(2026)
    for command in (("statement",), ("export", "statement")):
        target = tmp_path / f"{'-'.join(command)}.xlsx"
        history.cli(*command, "--year", "2026", "--format", "xlsx", "-o", str(target))
        book = load_workbook(target)
        assert len(book.sheetnames) == len(set(book.sheetnames)) == len(body["statements"])
        for sheet, statement in zip(book.worksheets, body["statements"], strict=True):
            rows = list(sheet.iter_rows(values_only=True))
            assert statement["title"] in rows[0][0]
            header = next(i for i, row in enumerate(rows) if row and row[0] == "code")
            lines = [row for row in rows[header + 1:] if row and row[0]]
            assert [row[0] for row in lines] == [line["code"] for line in statement["lines"]]
            for row, line in zip(lines, statement["lines"], strict=True):
                fen, yuan = row[5], row[6]
                assert isinstance(fen, int) and fen == line["amount_fen"], (sheet.title, line["code"])
                assert Decimal(str(yuan)).quantize(Decimal("0.01")) == Decimal(line["amount_yuan"])
                assert Decimal(line["amount_yuan"]) == Decimal(fen) / 100
            numbered = [c for c in sheet["G"] if isinstance(c.value, int | float) and not isinstance(c.value, bool)]
            assert numbered and all(c.number_format == "#,##0.00" for c in numbered)


@pytest.mark.integration
def test_the_api_answers_the_statement_with_the_token_and_401_without(history: History) -> None:
    from fastapi.testclient import TestClient

    from projections.api import create_app
    from projections.roles import ensure_reader_role, reader_url

    cli_body = history.statement(2025)
    hefei = history.statement(2025, "--city", HEFEI)
    ensure_reader_role(history.database_url)
    with TestClient(create_app(reader_url(history.database_url), TOKEN)) as client:
        assert client.get("/v1/statements/2025").status_code == 401
        assert client.get("/v1/statements/2025", headers={"Authorization": "Bearer wrong"}).status_code == 401
        answered = client.get("/v1/statements/2025", headers=AUTH)
        assert answered.status_code == 200, answered.text
        assert answered.json() == cli_body
        # the event store's latest hash-chain link, as /health shows it
        link = cli_body["chain_link"]
        assert link == client.get("/health").json()["chain"]
        assert link is not None and link["last_notification_id"] >= cli_body["projection_position"] > 0
        assert client.get("/v1/statements/2025", params={"city": HEFEI}, headers=AUTH).json() == hefei
        resident = client.get("/v1/statements/2025", params={"scheme": "resident"}, headers=AUTH).json()
        assert resident["statements"] == [s for s in cli_body["statements"] if s["scheme"] == "resident"]
        assert client.get("/v1/statements/2025", params={"city": "999999"}, headers=AUTH).status_code == 404
        assert client.get("/v1/statements/2025", params={"scheme": "farmers"}, headers=AUTH).status_code == 422
        assert client.get("/v1/statements/1800", headers=AUTH).status_code == 422
        table = client.get("/v1/statements/2025", params={"format": "csv", "city": WUHU}, headers=AUTH)
        assert table.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(table.text)))
        wuhu = one(cli_body, WUHU, "resident", "pooling")
        assert [int(r["amount_fen"]) for r in rows if r["scheme"] == "resident"] == [
            line["amount_fen"] for line in wuhu["lines"]]


# -- the pure function ----------------------------------------------------------------------------------


def test_yuan_is_written_from_fen_by_integer_arithmetic() -> None:
    assert [yuan_text(f) for f in (0, 7, -7, 100, -12_345, 10**15 + 1)] == [
        "0.00", "0.07", "-0.07", "1.00", "-123.45", "10000000000000.01"]


def test_a_category_the_statement_does_not_name_is_kept_and_every_statement_reconciles() -> None:
    totals = [
        YearTotal(2025, "city:340100:resident:pooling", "opening", 1_000),
        YearTotal(2025, "city:340100:resident:pooling", "extraction", -50),
        YearTotal(2025, "province:resident:adjustment", "extraction", 50),
        YearTotal(2026, "city:340100:resident:pooling", "contribution.individual", 500),
        YearTotal(2026, "city:340100:resident:pooling", "claim.inpatient", -300),
        YearTotal(2026, "city:340100:resident:pooling", "novelty", -7),
        YearTotal(2026, "city:340100:resident:pooling", "prior_year_adjustment.extraction", 50),
        YearTotal(2026, "province:resident:adjustment", "prior_year_adjustment.extraction", -50),
        YearTotal(2026, "external:interest", "interest", -1),  # not a fund: no statement
        YearTotal(2027, "city:340100:resident:pooling", "claim.inpatient", -100),  # a later year: not in it
    ]
    body = annual_statement(totals, 2026, {"340100": "Hefei"}, scheme="resident", projection_position=9)
    assert [(s["city"], s["fund"]) for s in body["statements"]] == [
        ("340100", "pooling"), (None, "adjustment"), (None, "consolidated")]
    hefei, adjustment, consolidated = (figures(s) for s in body["statements"])
    assert (hefei["opening_balance"], hefei["other.novelty"], hefei["income.other"]) == (950, -7, -7)
    assert hefei["closing_balance"] == 950 + 500 - 300 - 7 + 50
    assert hefei["prior_year_adjustment.extraction"] == 50 and adjustment["prior_year_adjustment"] == -50
    assert consolidated["prior_year_adjustment"] == 0 and consolidated["closing_balance"] == 1_000 + 500 - 300 - 7
    assert all(all(s["checks"].values()) for s in body["statements"])
    with pytest.raises(LookupError):
        annual_statement(totals, 2026, {"340100": "Hefei"}, city="340200")
