"""The dashboard in a real browser: Debian's headless Chromium against the API over HTTP.

A generated province is booked and projected, the API is served by uvicorn on a loopback
port, and Chromium renders `/dashboard`; the figures the page puts in its `data-*`
attributes must be the API's own, and a page without the token must show no data.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn

from consumers.booking import record_batch
from consumers.inbound import Inbound, SourcePosition
from ledger.policy import load_packaged_policy
from pooling_ledger.simulate import Simulation, encode, pooling_year
from storage import open_ledger

YEAR = 2025  # the simulated December's fiscal year
from projections.api import create_app
from projections.projector import Projector
from projections.roles import ensure_reader_role, reader_url

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_TIMEOUT_S = 90
SERVER_START_TIMEOUT_S = 30
SCHEMES = ("employee", "resident")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SCREENSHOT_BYTES_MIN = 20 * 1024


# -- the province, projected and served -------------------------------------------------------


@dataclass(frozen=True)
class Served:
    base: str
    token: str


def ingest_province(database_url: str) -> None:
    policy = load_packaged_policy()
    ledger = open_ledger(database_url)
    try:
        offset = 0
        for _, phase in pooling_year(Simulation(policy, month=12, seed=3), events_per_city=60):
            batch = []
            for event in phase:
                batch.append(Inbound.parse(encode(event)[1], SourcePosition("t", 0, offset)))
                offset += 1
            record_batch(ledger, batch)
        with Projector(ledger, database_url) as projector:
            projector.run_until_caught_up()
    finally:
        ledger.close()


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    ingest_province(database_url)
    ensure_reader_role(database_url)
    token = secrets.token_urlsafe(24)
    app = create_app(reader_url(database_url), token)
    # proto IPPROTO_TCP, as uvicorn's own bind has it: asyncio sets TCP_NODELAY only on such
    # sockets, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race for a "free" one
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert thread.is_alive(), "the API server thread died while starting"
            assert time.monotonic() < deadline, f"the API did not answer /health within {SERVER_START_TIMEOUT_S} s"
            time.sleep(0.1)
        yield Served(base, token)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def api(served: Served, path: str) -> Any:
    request = urllib.request.Request(
        served.base + path, headers={"Authorization": f"Bearer {served.token}", "Accept": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, path
        return json.load(response)


# -- the browser --------------------------------------------------------------------------------


def chromium(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard test needs Debian's chromium "
            "(`./run test` installs it as root, or `apt-get install chromium`)"
        )
    profile = Path(tempfile.mkdtemp(prefix="dashboard-chromium-"))
    try:
        args = [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=15000", *extra, url,
        ]
        try:
            result = subprocess.run(
                args, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {' '.join(args)}")
        assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr[-4000:]}"
        return result
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class PageIds(HTMLParser):
    """The attributes of `<body>` and of every element with a `data-testid`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.body: dict[str, str] | None = None
        self.by_id: dict[str, dict[str, str]] = {}
        self._in_no_access = 0
        self.no_access_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = values
        testid = values.get("data-testid")
        if testid:
            assert testid not in self.by_id, f"data-testid {testid} appears twice"
            self.by_id[testid] = values
            if testid == "no-access":
                self._in_no_access = 1
        elif self._in_no_access:
            self._in_no_access += 1

    def handle_endtag(self, tag: str) -> None:
        if self._in_no_access:
            self._in_no_access -= 1

    def handle_data(self, data: str) -> None:
        if self._in_no_access:
            self.no_access_text += data


def render(url: str) -> PageIds:
    result = chromium(url, "--dump-dom")
    assert "<body" in result.stdout, f"chromium dumped no DOM:\n{result.stderr[-4000:]}"
    page = PageIds()
    page.feed(result.stdout)
    page.close()
    assert page.body is not None, "the dumped DOM has no <body>"
    return page


def fen_attr(value: int | None) -> str:
    """What the page writes in `data-fen` / `data-execution-bp`: the integer, or empty for none."""
    return "" if value is None else str(value)


# -- the tests ----------------------------------------------------------------------------------


def test_dashboard_shows_the_api_figures_in_a_real_browser(served: Served) -> None:
    page = render(f"{served.base}/dashboard?year={YEAR}#token={served.token}")
    body = page.body or {}
    assert "data-error" not in body, f"the dashboard reported an error: {body.get('data-error')}"
    assert body.get("data-loaded") == "true"

    summary = api(served, f"/v1/province/summary?year={YEAR}")
    assert summary["year"] == YEAR
    assert {s["scheme"] for s in summary["schemes"]} == set(SCHEMES)
    for s in summary["schemes"]:
        for field, key in (("balance", "adjustment_fund_fen"), ("ceiling", "ceiling_fen"), ("headroom", "headroom_fen")):
            testid = f"adjustment-{s['scheme']}-{field}"
            assert page.by_id[testid]["data-fen"] == str(s[key]), testid
    # the province has booked something: the comparisons below are not of zeros only
    assert any(s["adjustment_fund_fen"] > 0 for s in summary["schemes"])

    cities = [c["city"] for c in api(served, "/v1/cities")["cities"]]
    assert len(cities) == 16
    budgets = {(r["city"], r["scheme"]): r for r in api(served, f"/v1/budgets?year={summary['year']}")["rows"]}
    year_end = quote(f"{YEAR}-12-31T23:59:59+08:00")
    risk = {(r["city"], r["scheme"]): r for r in api(served, f"/v1/risk?as_of={year_end}")["rows"]}
    moved = 0
    for city in cities:
        for scheme in SCHEMES:
            days = api(served, f"/v1/accounts/city:{city}:{scheme}:pooling/daily")["days"]
            balance = api(served, f"/v1/cities/{city}/balances?scheme={scheme}")["balance_fen"]
            latest = page.by_id[f"city-latest-{city}-{scheme}"]["data-fen"]
            if days:
                moved += 1
                assert days[-1]["balance_fen"] == balance, (city, scheme)
                assert latest == str(days[-1]["balance_fen"]), (city, scheme)
            else:
                assert latest == "", (city, scheme)
            assert page.by_id[f"chart-line-{city}-{scheme}"]["data-points"] == str(len(days)), (city, scheme)

            bar = page.by_id[f"budget-{city}-{scheme}"]
            assert bar["data-execution-bp"] == fen_attr(budgets[(city, scheme)]["execution_bp"]), (city, scheme)
            badge = page.by_id[f"risk-{city}-{scheme}"]
            assert badge["data-level"] == risk[(city, scheme)]["level"], (city, scheme)
            assert badge["data-months-hundredths"] == fen_attr(
                risk[(city, scheme)]["months_covered_hundredths"]
            ), (city, scheme)
    assert moved == 2 * len(cities), "every city fund moved in the simulated month"
    # every fund had an approved budget for the simulated year: real execution figures compared
    assert all(b["execution_bp"] is not None for b in budgets.values())

    health = api(served, "/health")
    assert health["projection_lag"] == 0
    assert page.by_id["lag"]["data-lag"] == str(health["projection_lag"])


def test_dashboard_without_the_token_shows_no_access(served: Served) -> None:
    page = render(f"{served.base}/dashboard")
    body = page.body or {}
    assert body.get("data-loaded") == "true"
    assert body.get("data-error") == "unauthorized"
    assert "no-access" in page.by_id
    assert "No access" in page.no_access_text
    assert not any(t.startswith(("adjustment-", "city-latest-", "budget-", "risk-")) for t in page.by_id)


def test_dashboard_screenshot(served: Served) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    chromium(f"{served.base}/dashboard?year={YEAR}#token={served.token}", f"--screenshot={shot}", "--window-size=1400,2600")
    assert shot.exists(), "chromium wrote no screenshot"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > SCREENSHOT_BYTES_MIN, shot.stat().st_size
