"""The read API (DESIGN §5) over the projected tables, through the read-only role.

The figures it answers are compared with the test's own bookkeeping of the events it fed
(`tests.test_projections.Model`), never with the code under test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from ledger.application import Ledger
from pooling_ledger.embedded import free_port
from projections.api import create_app
from projections.roles import ensure_reader_role, reader_url
from storage import open_ledger
from tests.test_projections import (
    RISK_HIGH_MONTHS,
    RISK_LOW_MONTHS,
    SCHEMES,
    Feed,
    Model,
    contribution,
    fund_account,
    generated_year,
    project,
)

pytestmark = pytest.mark.integration

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
END_2025 = "2025-12-31T23:59:59+08:00"
MID_DECEMBER = "2025-12-15T12:15:00+08:00"
END_FEB = "2026-02-28T23:59:59+08:00"
SERVE_START_TIMEOUT_S = 60

#: Every /v1 endpoint, with arguments it answers 200 to.
V1_PATHS = [
    "/v1/cities",
    "/v1/cities/340100/balances",
    f"/v1/cities/340100/balances?scheme=resident&as_of={END_2025}",
    "/v1/accounts/city:340100:resident:pooling/daily",
    "/v1/province/summary?year=2025",
    "/v1/budgets?year=2025",
    "/v1/budgets/340100/resident/2025",
    "/v1/risk",
    f"/v1/events/{uuid.uuid4()}",
    "/v1/rejections",
    "/v1/audit/trial-balance",
]


@dataclass
class Served:
    client: TestClient
    model: Model
    ledger: Ledger
    feed: Feed
    database_url: str

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params, headers=AUTH)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def csv(self, path: str, **params: Any) -> list[dict[str, str]]:
        response = self.client.get(path, params={**params, "format": "csv"}, headers=AUTH)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("text/csv")
        return list(csv.DictReader(io.StringIO(response.text)))


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    phases, sim = generated_year(seed=3)
    ledger = open_ledger(database_url)
    model = Model(cities=tuple(sim.policy.cities))
    feed = Feed(ledger)
    for messages, rejected in phases:
        feed.send(messages)
        model.feed(messages, rejected)
    project(database_url, ledger, page_size=500)
    ensure_reader_role(database_url)
    with TestClient(create_app(reader_url(database_url), TOKEN)) as client:
        yield Served(client, model, ledger, feed, database_url)
    ledger.close()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def cell(value: Any) -> str:
    return "" if value is None else str(value)


def as_cells(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: cell(v) for k, v in row.items()} for row in rows]


# -- every endpoint, in its documented shape, with the test's own figures ---------------------


def test_city_balances_answer_the_documented_shape_with_the_ledgers_figures(served: Served) -> None:
    model = served.model
    for city in ("340100", "340400", "341800"):
        for scheme in SCHEMES:
            for as_of in (MID_DECEMBER, END_2025, END_FEB):
                body = served.get(f"/v1/cities/{city}/balances", scheme=scheme, as_of=as_of)
                assert {"city", "scheme", "balance_fen", "as_of", "income_fen", "expenditure_fen"} <= set(body)
                account, moment = fund_account(city, scheme), at(as_of)
                income, expenditure = model.flows(account, moment.year, moment)
                assert (body["city"], body["scheme"]) == (city, scheme)
                assert at(body["as_of"]) == moment
                assert body["balance_fen"] == model.balance(account, moment)
                assert body["income_fen"] == income
                assert body["expenditure_fen"] == expenditure
        both = served.get(f"/v1/cities/{city}/balances", as_of=END_2025)
        assert both["scheme"] is None
        assert both["balance_fen"] == sum(model.balance(fund_account(city, s), at(END_2025)) for s in SCHEMES)
    # the offset is honoured: Z is UTC, the same instant as 20:00 in Hefei
    utc = served.get("/v1/cities/340300/balances", scheme="employee", as_of="2025-12-15T04:31:00Z")
    assert utc["balance_fen"] == model.balance("city:340300:employee:pooling", at("2025-12-15T12:31:00+08:00"))
    latest = served.get("/v1/cities/340100/balances", scheme="resident")
    assert latest["balance_fen"] == model.balance("city:340100:resident:pooling")
    assert served.get("/v1/cities")["cities"][0] == {"city": "340100", "name": "Hefei"}
    assert [c["city"] for c in served.get("/v1/cities")["cities"]] == list(model.cities)


def test_province_summary_budgets_and_risk(served: Served) -> None:
    model = served.model
    for year in (2025, 2026):
        for as_of in (MID_DECEMBER, END_FEB):
            body = served.get("/v1/province/summary", year=year, as_of=as_of)
            assert body["year"] == year and at(body["as_of"]) == at(as_of)
            assert body["schemes"] == [model.province(s, year, at(as_of)) for s in SCHEMES]
    go_live = served.get("/v1/province/summary", year=2025, as_of=END_2025)["schemes"][1]
    income = sum(model.openings[fund_account(c, "resident")][1] for c in model.cities)
    assert go_live["ceiling_fen"] == income * 1000 // 10_000
    assert go_live["consolidated_fen"] == go_live["city_balances_fen"] + go_live["adjustment_fund_fen"]

    for city in model.cities[:8]:
        for scheme in SCHEMES:
            body = served.get(f"/v1/budgets/{city}/{scheme}/2025")
            paid = model.claims_paid(fund_account(city, scheme), 2025)
            planned = model.budgets[(city, scheme, 2025)]
            assert (body["city"], body["scheme"], body["fiscal_year"]) == (city, scheme, 2025)
            assert body["budget"]["expenditure_fen"] == planned
            assert body["actual"]["expenditure_fen"] == paid
            assert body["execution_bp"] == paid * 10_000 // planned
            assert body["flag"] is None
    none = served.get(f"/v1/budgets/{model.cities[9]}/employee/2026")
    assert none["budget"] is None and none["flag"] == "no_budget" and none["execution_bp"] is None
    year = served.get("/v1/budgets", year=2026)
    assert {(r["city"], r["scheme"]) for r in year["without_budget"]} == {
        (c, s) for c in model.cities for s in SCHEMES} - {("340100", "resident")}

    risk = served.get("/v1/risk", as_of=END_FEB)
    assert risk["band"] == {"low_months": RISK_LOW_MONTHS, "high_months": RISK_HIGH_MONTHS}
    assert len(risk["rows"]) == 2 * len(model.cities)
    for row in risk["rows"]:
        expected = model.risk(row["city"], row["scheme"], at(END_FEB))
        assert {k: row[k] for k in expected} == expected


def test_event_fates_rejections_daily_and_trial_balance(served: Served) -> None:
    model = served.model
    fates = list(model.fates.items())
    accepted = next(e for e, (s, _) in fates if s == "accepted")
    for event_id, (status, reason) in [fates[0], *[f for f in fates if f[1][0] == "rejected"]]:
        body = served.get(f"/v1/events/{event_id}")
        assert {k: body[k] for k in ("event_id", "status", "reason")} == {
            "event_id": event_id, "status": status, "reason": reason}
    assert served.get(f"/v1/events/{accepted}")["reason"] is None
    unknown = str(uuid.uuid4())
    assert served.get(f"/v1/events/{unknown}") == {"event_id": unknown, "status": "unknown", "reason": None}
    assert {r["reason"] for r in served.get("/v1/rejections")["rows"] if r["reason"] != "invalid_json"} == {
        reason for status, reason in model.fates.values() if status == "rejected"} | {"event_id_conflict"}
    rejections = {(r["reason"], r["source"]): r["count"] for r in served.get("/v1/rejections")["rows"]}
    assert rejections == dict(model.rejections)

    account = "city:340100:resident:pooling"
    daily = served.get(f"/v1/accounts/{account}/daily")
    assert daily == {"account": account, "days": model.closing_balances(account)}
    window = served.get(f"/v1/accounts/{account}/daily", **{"from": "2025-12-10", "to": "2025-12-20"})
    assert window["days"] == [d for d in model.closing_balances(account) if "2025-12-10" <= d["date"] <= "2025-12-20"]

    for as_of in (MID_DECEMBER, END_2025, END_FEB):
        body = served.get("/v1/audit/trial-balance", as_of=as_of)
        assert set(body) == {"as_of", "accounts", "total_fen"}
        assert at(body["as_of"]) == at(as_of)
        assert body["accounts"] == [{"account": a, "balance_fen": b}
                                    for a, b in sorted(model.balances(at(as_of)).items())]
        assert body["total_fen"] == 0
    now = served.get("/v1/audit/trial-balance")
    assert {r["account"]: r["balance_fen"] for r in now["accounts"]} == model.balances()


def test_an_event_is_found_by_the_event_id_its_producer_sent(served: Served) -> None:
    """The contract takes upper-case UUIDs; the producer asks with the id it sent."""
    event = contribution("340100", "resident", 38_000, "2026-03-02T10:00:00+08:00")
    event["event_id"] = event["event_id"].upper()
    bad = contribution("349900", "resident", 38_000, "2026-03-02T10:00:00+08:00")
    bad["event_id"] = bad["event_id"].upper()
    served.feed.send([event, bad])
    project(served.database_url, served.ledger)
    for sent, status, reason in ((event, "accepted", None), (bad, "rejected", "unknown_city")):
        for spelling in (sent["event_id"], sent["event_id"].lower()):
            body = served.get(f"/v1/events/{spelling}")
            assert (body["status"], body["reason"]) == (status, reason), spelling


def test_health_shows_the_projection_lag_until_the_projector_catches_up(served: Served) -> None:
    health = served.client.get("/health")  # no token needed
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["projection_lag"] == 0
    new = [contribution("340100", "resident", 1_000 + i, "2026-03-01T10:00:00+08:00") for i in range(3)]
    served.feed.send(new)
    served.model.feed(new)
    assert served.client.get("/health").json()["projection_lag"] == 3  # one receipt each
    before = served.get("/v1/cities/340100/balances", scheme="resident")["balance_fen"]
    assert before == served.model.balance("city:340100:resident:pooling") - 3_003
    project(served.database_url, served.ledger)
    assert served.client.get("/health").json()["projection_lag"] == 0
    after = served.get("/v1/cities/340100/balances", scheme="resident")["balance_fen"]
    assert after == served.model.balance("city:340100:resident:pooling") == before + 3_003


def test_csv_tables_are_the_json_tables(served: Served) -> None:
    cities = served.get("/v1/cities")
    assert served.csv("/v1/cities") == as_cells(cities["cities"])

    body = served.get("/v1/cities/340400/balances", scheme="resident", as_of=END_2025)
    rows = [{"side": side, "category": k, "amount_fen": v}
            for side in ("income", "expenditure") for k, v in body[f"{side}_fen"].items()]
    assert len(rows) > 5
    assert served.csv("/v1/cities/340400/balances", scheme="resident", as_of=END_2025) == as_cells(rows)

    summary = served.get("/v1/province/summary", year=2025, as_of=END_FEB)
    assert served.csv("/v1/province/summary", year=2025, as_of=END_FEB) == as_cells(summary["schemes"])

    def flat(row: dict[str, Any]) -> dict[str, Any]:
        planned = row["budget"] or {}
        return {"city": row["city"], "name": row["name"], "scheme": row["scheme"],
                "fiscal_year": row["fiscal_year"], "budget_income_fen": planned.get("income_fen"),
                "budget_expenditure_fen": planned.get("expenditure_fen"),
                "actual_income_fen": row["actual"]["income_fen"],
                "actual_expenditure_fen": row["actual"]["expenditure_fen"],
                "execution_bp": row["execution_bp"], "flag": row["flag"]}

    one = served.get("/v1/budgets/340600/resident/2025")
    assert served.csv("/v1/budgets/340600/resident/2025") == as_cells([flat(one)])
    for year in (2025, 2026):
        every = served.get("/v1/budgets", year=year)
        assert served.csv("/v1/budgets", year=year) == as_cells([flat(r) for r in every["rows"]])

    risk = served.get("/v1/risk", as_of=END_FEB)
    assert served.csv("/v1/risk", as_of=END_FEB) == as_cells(risk["rows"])
    assert served.csv("/v1/rejections") == as_cells(served.get("/v1/rejections")["rows"])
    trial = served.get("/v1/audit/trial-balance", as_of=END_2025)
    assert served.csv("/v1/audit/trial-balance", as_of=END_2025) == as_cells(trial["accounts"])
    account = "city:340100:employee:pooling"
    days = served.get(f"/v1/accounts/{account}/daily")["days"]
    assert served.csv(f"/v1/accounts/{account}/daily") == as_cells(days)
    # figures, not formatted text: the CSV sums to what the JSON says
    assert sum(int(r["balance_fen"]) for r in served.csv("/v1/audit/trial-balance")) == 0


def test_openapi_lists_every_endpoint(served: Served) -> None:
    response = served.client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {
        "/health",
        "/v1/cities",
        "/v1/cities/{city}/balances",
        "/v1/accounts/{account}/daily",
        "/v1/province/summary",
        "/v1/budgets",
        "/v1/budgets/{city}/{scheme}/{year}",
        "/v1/risk",
        "/v1/events/{event_id}",
        "/v1/rejections",
        "/v1/audit/trial-balance",
    } <= set(paths)
    assert all("get" in paths[p] for p in paths)
    balances = {p["name"] for p in paths["/v1/cities/{city}/balances"]["get"]["parameters"]}
    assert {"city", "scheme", "as_of", "format"} <= balances


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", V1_PATHS + ["/v1/cities/349900/balances", "/v1/risk?as_of=2025-12-20T00:00:00"])
def test_every_v1_endpoint_needs_the_bearer_token(served: Served, path: str) -> None:
    assert served.client.get(path, headers=AUTH).status_code in (200, 404, 422)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}):
        response = served.client.get(path, headers=headers)
        assert response.status_code == 401, (path, headers, response.text)
        assert response.headers.get("www-authenticate") == "Bearer"
        assert "fen" not in response.text
    response = served.client.get(path, params={"format": "csv"})
    assert response.status_code == 401


def test_an_unknown_city_is_404_and_a_time_without_offset_is_422(served: Served) -> None:
    for path in ("/v1/cities/349900/balances", "/v1/budgets/349900/resident/2025",
                 "/v1/cities/hefei/balances?scheme=resident"):
        response = served.client.get(path, headers=AUTH)
        assert response.status_code == 404, (path, response.text)
        assert "349900" in response.json()["detail"] or "hefei" in response.json()["detail"]
    for path in ("/v1/cities/340100/balances", "/v1/province/summary", "/v1/risk", "/v1/audit/trial-balance"):
        for naive in ("2025-12-20T00:00:00", "2025-12-20"):
            response = served.client.get(path, params={"as_of": naive}, headers=AUTH)
            assert response.status_code == 422, (path, naive, response.text)
        assert served.client.get(path, params={"as_of": "2025-12-20T00:00:00+08:00"}, headers=AUTH).status_code == 200
    assert served.client.get("/v1/budgets/340100/both/2025", headers=AUTH).status_code == 422


def test_the_read_role_can_select_and_nothing_else(served: Served) -> None:
    with psycopg.connect(reader_url(served.database_url), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("pooling_reader",)
        postings = conn.execute("SELECT count(*) FROM pl_postings").fetchone()
        assert postings == (2 * len(served.model.transfers),)
        assert conn.execute("SELECT count(*) > 0 FROM ledger_events").fetchone() == (True,)
        refused = [
            "INSERT INTO pl_postings SELECT * FROM pl_postings LIMIT 1",
            (
                "INSERT INTO pl_postings VALUES (999999, 'x', 'ClaimPaid', 'a', 'b', 1, 'claim.x', NULL,"
                " 2025, now(), current_date, false)"
            ),
            "UPDATE pl_postings SET amount_fen = amount_fen + 1",
            "DELETE FROM pl_postings",
            "TRUNCATE pl_postings",
            "UPDATE pl_account_balances SET balance_fen = 0",
            "UPDATE pl_tracking SET notification_id = 0",
            "INSERT INTO ledger_events SELECT * FROM ledger_events LIMIT 1",
            "UPDATE ledger_events SET topic = topic",
            "DELETE FROM ledger_events",
            "CREATE TABLE pl_mine (i integer)",
            "CREATE TABLE public.stolen AS SELECT * FROM pl_postings",
        ]
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(served.database_url) as admin:
        assert admin.execute("SELECT count(*) FROM pl_postings").fetchone() == postings
        assert admin.execute("SELECT to_regclass('pl_mine')").fetchone() == (None,)


# -- the command ----------------------------------------------------------------------------------------


def http_get(url: str, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@dataclass
class ServeRun:
    """A `pooling-ledger serve` subprocess: its base URL, first /health answer and, once stopped, its output."""

    base: str
    health: tuple[int, Any]
    returncode: int | None = None
    out: str = ""
    err: str = ""


@contextmanager
def serve_command(database_url: str, token: str, *args: str) -> Iterator[ServeRun]:
    """Starts `serve` on a free port, waits for /health, and stops it with SIGINT on exit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pooling_ledger.cli", "serve", *args, "--port", str(port)],
        env={**os.environ, "DATABASE_URL": database_url, "POOLING_API_TOKEN": token,
             "POOLING_LOG_LEVEL": "error"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    run: ServeRun | None = None
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        health: tuple[int, Any] | None = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = http_get(f"{base}/health", None)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert health is not None, (
            process.communicate()[1].decode()[-3000:] if process.poll() is not None else "timeout"
        )
        run = ServeRun(base, health)
        yield run
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        if run is not None:
            run.returncode, run.out, run.err = process.returncode, out.decode(), err.decode()


def test_serve_command_projects_serves_with_the_token_and_stops_on_sigint(database_url: str) -> None:
    ledger = open_ledger(database_url)
    events = [contribution("340100", "resident", 123_456, "2025-12-02T10:00:00+08:00"),
              contribution("340200", "employee", 654_321, "2025-12-03T10:00:00+08:00", "employer")]
    Feed(ledger).send(events)  # not projected yet: serve projects before it answers
    ledger.close()
    with serve_command(database_url, "s3cret-token") as run:
        assert run.health[0] == 200 and run.health[1]["projection_lag"] == 0
        status, body = http_get(f"{run.base}/v1/cities/340100/balances?scheme=resident", "s3cret-token")
        assert status == 200 and body["balance_fen"] == 123_456
        status, body = http_get(f"{run.base}/v1/events/{events[1]['event_id']}", "s3cret-token")
        assert status == 200 and body["status"] == "accepted"
        for token in (None, "wrong"):
            status, body = http_get(f"{run.base}/v1/cities/340100/balances?scheme=resident", token)
            assert status == 401 and "balance_fen" not in (body or {})
    assert run.returncode == 0, run.err[-3000:]
    assert run.base.removeprefix("http://") in run.out


def test_serve_without_its_projector_starts_on_an_empty_database(database_url: str) -> None:
    """Another process may project: serve must still create what its read role is granted."""
    with serve_command(database_url, "t0ken", "--no-project") as run:
        status, health = run.health
        body = dict(health)
        chain = body.pop("chain")  # the store's latest link: the first, over nothing yet
        assert (status, body) == (200, {"status": "ok", "projection_lag": 0, "projection_position": 0, "unprocessable": 0})
        assert (chain["events"], chain["last_notification_id"]) == (0, 0)
        status, body = http_get(f"{run.base}/v1/audit/trial-balance", "t0ken")
        assert status == 200 and body["accounts"] == [] and body["total_fen"] == 0
    assert run.returncode == 0, run.err[-3000:]


def test_more_concurrent_requests_than_worker_threads_and_connections_all_get_answers(served: Served) -> None:
    """150 clients at once (uvicorn runs sync endpoints on 40 worker threads; the pool has 8
    connections): every request is answered. Before the admission gate, threads blocked on the
    pool while the connection holders waited for a thread, and the server never answered again."""
    from concurrent.futures import ThreadPoolExecutor

    paths = ["/v1/risk", "/v1/province/summary?year=2025", "/v1/budgets?year=2025"]
    with ThreadPoolExecutor(150) as pool:
        futures = [pool.submit(served.client.get, paths[i % 3], headers=AUTH) for i in range(450)]
        statuses = [f.result(timeout=120).status_code for f in futures]
    assert statuses == [200] * 450
    assert served.client.get("/health").status_code == 200


def test_a_repeated_request_answers_with_what_the_projector_applied_since(served: Served) -> None:
    """Responses are kept per projection position (projections.api.ResponseCache): a request
    repeated after a page is projected gets the new figures at once, and the token is still
    checked for a request whose answer is kept."""
    path = "/v1/cities/340100/balances"
    before = served.get(path, scheme="resident")
    assert served.get(path, scheme="resident") == before  # the kept answer
    new = [contribution("340100", "resident", 4_321, "2026-03-01T10:00:00+08:00")]
    served.feed.send(new)
    served.model.feed(new)
    assert served.get(path, scheme="resident") == before  # not projected yet: the same figures
    project(served.database_url, served.ledger)
    after = served.get(path, scheme="resident")
    assert after["balance_fen"] == before["balance_fen"] + 4_321
    assert after["balance_fen"] == served.model.balance("city:340100:resident:pooling")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = served.client.get(path, params={"scheme": "resident"}, headers=headers)
        assert refused.status_code == 401
    kept = served.client.get(path, params={"scheme": "resident"}, headers=AUTH)
    assert kept.headers["x-content-type-options"] == "nosniff"  # security headers on a kept answer


def test_out_of_city_treatment_and_recoveries_are_read_as_the_test_sent_them(served: Served) -> None:
    """RULES revision 2 views: E7's insured x treatment city matrix, P4's recoveries by reason."""
    from tests import upstream
    from tests.test_projections import claim, reversal

    at = "2026-03-05T10:00:00+08:00"
    in_wuhu = {**claim("340100", "resident", 7_000, at), "institution_city": "340200"}
    in_wuhu_reversed = {**claim("340100", "resident", 500, at), "institution_city": "340200"}
    in_bengbu = {**claim("340100", "employee", 3_000, at), "institution_city": "340300"}
    from_hefei = {**claim("340200", "resident", 2_000, at), "institution_city": "340100"}
    at_home = claim("340100", "resident", 9_000, at)
    recovered = [
        upstream.event("RecoveryReceived", city="340100", scheme="resident", institution_id="H1",
                       reason="fraud", amount_fen=1_200, claim_event_id=at_home["event_id"],
                       occurred_at="2026-03-06T10:00:00+08:00"),
        upstream.event("RecoveryReceived", city="340100", scheme="resident", institution_id="H1",
                       reason="overpayment", amount_fen=300, occurred_at="2026-03-06T10:00:00+08:00"),
        upstream.event("RecoveryReceived", city="340100", scheme="resident", institution_id="H1",
                       reason="fraud", amount_fen=100, occurred_at="2026-03-06T10:00:00+08:00"),
    ]
    sent = [in_wuhu, in_wuhu_reversed, in_bengbu, from_hefei, at_home, *recovered,
            reversal(in_wuhu_reversed, "2026-03-07T10:00:00+08:00")]
    outcomes = served.feed.send(sent)
    assert [o.status for o in outcomes] == ["accepted"] * len(sent)
    project(served.database_url, served.ledger)

    matrix = served.get("/v1/out-of-city", year=2026)["rows"]
    assert matrix == [
        {"insured_city": "340100", "scheme": "employee", "treatment_city": "340300", "amount_fen": 3_000, "postings": 1},
        {"insured_city": "340100", "scheme": "resident", "treatment_city": "340200", "amount_fen": 7_000, "postings": 3},
        {"insured_city": "340200", "scheme": "resident", "treatment_city": "340100", "amount_fen": 2_000, "postings": 1},
    ]
    assert served.get("/v1/recoveries", year=2026)["rows"] == [
        {"city": "340100", "scheme": "resident", "reason": "fraud", "amount_fen": 1_300, "postings": 2},
        {"city": "340100", "scheme": "resident", "reason": "overpayment", "amount_fen": 300, "postings": 1},
    ]
    # the simulated 2025 has its own out-of-city claims: the matrix from the test's model
    expected: dict[tuple[str, str, str], list[int]] = {}
    for debit, credit, amount, category, _, year in served.model.transfers.values():
        if year != 2025 or not category.startswith("claim."):
            continue
        fund, institution, sign = (debit, credit, 1) if debit.startswith("city:") else (credit, debit, -1)
        _, insured, scheme, _ = fund.split(":")
        treated = institution.rsplit(":", 1)[1]
        if treated != insured:
            cell = expected.setdefault((insured, scheme, treated), [0, 0])
            cell[0] += sign * amount
            cell[1] += 1
    assert expected, "the simulated year treats some insured in another city"
    assert served.get("/v1/out-of-city", year=2025)["rows"] == [
        {"insured_city": c, "scheme": s, "treatment_city": t, "amount_fen": a, "postings": n}
        for (c, s, t), (a, n) in sorted(expected.items())
    ]
