"""RULES revision 2's read views (issue 9): the employee personal accounts per city (E6), the
major-illness premium under a city's expenditure (E8), the subsidy reconciliation (I3 as a
view) and the dashboard's sections for them and for the out-of-city matrix and recoveries.

Every expected figure is the test's own: literals, or sums over the events it sent.
"""

from __future__ import annotations

import csv
import io
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient

from ledger.application import Ledger
from ledger.policy import load_packaged_policy
from projections.api import create_app
from projections.projector import PROJECTION_NAME, Projector
from projections.queries import reconcile_subsidies, subsidy_reconciliation
from projections.rebuild import rebuild_from_zero
from projections.roles import ensure_reader_role, reader_url
from schemas.policy import Policy, SubsidyLevel, SubsidyStandard, SubsidyTotalStandard
from storage import open_ledger
from tests import upstream
from tests.test_projections import READ_TABLES, Feed, claim, contribution, project, reversal

TOKEN = "rev2-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEFEI, WUHU, BENGBU = "340100", "340200", "340300"
END_2025 = "2025-12-31T23:59:59+08:00"
END_2026 = "2026-12-31T23:59:59+08:00"
NEW_ROUTES = ("/v1/personal-accounts", "/v1/subsidies/reconciliation")

#: Anhui's policy with per-capita standards for 2026 (the packaged file has none): central
#: 488 yuan a head, provincial 61 or 91.5, and the two together at most 610.
CENTRAL_FEN, PROVINCIAL_LOW_FEN, PROVINCIAL_HIGH_FEN, TOGETHER_FEN = 48_800, 6_100, 9_150, 61_000


def standards_policy() -> Policy:
    return load_packaged_policy().model_copy(update={
        "name": "Anhui with 2026 subsidy standards (test)",
        "subsidy_standards": [
            SubsidyStandard(fiscal_year=2026, level=SubsidyLevel.central, per_capita_fen=[CENTRAL_FEN]),
            SubsidyStandard(fiscal_year=2026, level=SubsidyLevel.provincial,
                            per_capita_fen=[PROVINCIAL_HIGH_FEN, PROVINCIAL_LOW_FEN]),
        ],
        "subsidy_totals": [
            SubsidyTotalStandard(fiscal_year=2026, levels=[SubsidyLevel.central, SubsidyLevel.provincial],
                                 per_capita_fen=[TOGETHER_FEN]),
        ],
    })


# -- the ledger, projected and served -------------------------------------------------------------


@dataclass
class Views:
    client: TestClient
    ledger: Ledger
    feed: Feed
    database_url: str

    def send(self, *messages: dict[str, Any]) -> None:
        outcomes = self.feed.send(messages)
        assert [(o.status, o.reason) for o in outcomes] == [("accepted", None)] * len(messages), [
            (o.status, o.reason, o.detail) for o in outcomes]
        project(self.database_url, self.ledger)

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params, headers=AUTH)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def csv(self, path: str, **params: Any) -> list[dict[str, str]]:
        response = self.client.get(path, params={**params, "format": "csv"}, headers=AUTH)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("text/csv")
        return list(csv.DictReader(io.StringIO(response.text)))


@contextmanager
def served_ledger(database_url: str, policy: Policy | None = None) -> Iterator[Views]:
    ledger = open_ledger(database_url, seed_policy=policy)
    try:
        project(database_url, ledger)  # the read tables, before the reader role is granted them
        ensure_reader_role(database_url)
        with TestClient(create_app(reader_url(database_url), TOKEN)) as client:
            yield Views(client, ledger, Feed(ledger), database_url)
    finally:
        ledger.close()


@pytest.fixture
def views(database_url: str) -> Iterator[Views]:
    with served_ledger(database_url) as served:
        yield served


def as_cells(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]


def premium(city: str, amount_fen: int, at: str, fiscal_year: int = 2026) -> dict[str, Any]:
    return upstream.event("CriticalIllnessPremiumPaid", city=city, scheme="resident", insurer_id="PICC-AH",
                          fiscal_year=fiscal_year, amount_fen=amount_fen, occurred_at=at, source="nhsa.anhui")


def subsidy(city: str, level: str, amount_fen: int, at: str, headcount: int | None = None) -> dict[str, Any]:
    counted = {} if headcount is None else {"headcount": headcount}
    return upstream.subsidy(city, "resident", amount_fen, level=level, occurred_at=at, source="finance.anhui",
                            **counted)


# -- E8: the major-illness premium is a city's expenditure -------------------------------------------


@pytest.mark.integration
def test_the_major_illness_premium_is_listed_under_the_citys_expenditure_and_counts_against_its_budget(
    views: Views,
) -> None:
    views.send(
        contribution(HEFEI, "resident", 2_000_000, "2026-01-05T10:00:00+08:00"),
        contribution(HEFEI, "employee", 500_000, "2026-01-05T10:00:00+08:00", payer_kind="employer"),
        upstream.budget(2_000_000, 1_000_000, fiscal_year=2026, occurred_at="2026-01-10T10:00:00+08:00"),
        claim(HEFEI, "resident", 300_000, "2026-03-01T10:00:00+08:00"),
        premium(HEFEI, 250_000, "2026-03-10T10:00:00+08:00"),
    )
    later = premium(HEFEI, 40_000, "2026-03-11T10:00:00+08:00")
    views.send(later, reversal(later, "2026-03-12T10:00:00+08:00"))

    resident = views.get(f"/v1/cities/{HEFEI}/balances", scheme="resident", as_of=END_2026)
    assert resident["expenditure_fen"] == {"claim.inpatient.secondary": 300_000, "premium.critical_illness": 250_000}
    assert resident["income_fen"] == {"contribution.individual": 2_000_000}
    assert resident["balance_fen"] == 2_000_000 - 300_000 - 250_000
    # as of an instant between the second premium and its reversal, both premiums were paid
    between = views.get(f"/v1/cities/{HEFEI}/balances", scheme="resident", as_of="2026-03-11T12:00:00+08:00")
    assert between["expenditure_fen"]["premium.critical_illness"] == 250_000 + 40_000
    before = views.get(f"/v1/cities/{HEFEI}/balances", scheme="resident", as_of="2026-03-09T12:00:00+08:00")
    assert before["expenditure_fen"] == {"claim.inpatient.secondary": 300_000}
    # both schemes together (the employee book has no expenditure)
    both = views.get(f"/v1/cities/{HEFEI}/balances", as_of=END_2026)
    assert both["expenditure_fen"] == {"claim.inpatient.secondary": 300_000, "premium.critical_illness": 250_000}
    assert both["schemes"]["employee"]["expenditure_fen"] == {}
    rows = views.csv(f"/v1/cities/{HEFEI}/balances", scheme="resident", as_of=END_2026)
    assert {"side": "expenditure", "category": "premium.critical_illness", "amount_fen": "250000"} in rows

    # B3 counts the premium with the claims: so does the budget's execution
    budget = views.get(f"/v1/budgets/{HEFEI}/resident/2026")
    assert budget["actual"] == {"income_fen": 2_000_000, "expenditure_fen": 550_000,
                                "claims_fen": 300_000, "premium_fen": 250_000}
    assert budget["execution_bp"] == 550_000 * 10_000 // 1_000_000
    row = next(r for r in views.get("/v1/budgets", year=2026)["rows"]
               if (r["city"], r["scheme"]) == (HEFEI, "resident"))
    assert row["actual"]["expenditure_fen"] == 550_000


@pytest.mark.integration
def test_the_risk_views_monthly_expenditure_counts_the_major_illness_premium_with_the_claims(views: Views) -> None:
    """B4's average monthly expenditure: claims and the premium (E8) over the months since the
    first of them in the 12-month window; Anhui's band is 6 to 9 months."""
    reversed_premium = premium(HEFEI, 40_000, "2026-02-10T10:00:00+08:00")
    views.send(
        contribution(HEFEI, "resident", 2_000_000, "2026-01-05T10:00:00+08:00"),
        upstream.budget(2_000_000, 1_000_000, fiscal_year=2026, occurred_at="2026-01-10T10:00:00+08:00"),
        premium(HEFEI, 250_000, "2026-01-20T10:00:00+08:00"),
        reversed_premium,
        reversal(reversed_premium, "2026-02-11T10:00:00+08:00"),
        claim(HEFEI, "resident", 300_000, "2026-03-01T10:00:00+08:00"),
    )

    def hefei(as_of: str) -> dict[str, Any]:
        body = views.get("/v1/risk", as_of=as_of)
        assert body["band"] == {"low_months": 6, "high_months": 9}
        row = next(r for r in body["rows"] if (r["city"], r["scheme"]) == (HEFEI, "resident"))
        return {k: row[k] for k in ("balance_fen", "monthly_expenditure_fen", "months_covered_hundredths", "level")}

    # end of March: January (the first premium), February and March
    monthly = (250_000 + 300_000) // 3
    balance = 2_000_000 - 250_000 - 300_000
    assert hefei("2026-03-31T23:59:59+08:00") == {
        "balance_fen": balance, "monthly_expenditure_fen": monthly,
        "months_covered_hundredths": balance * 100 // monthly, "level": "ok"}  # 7.90 months
    # between the second premium and its reversal: both premiums, January and February, no claim yet
    monthly = (250_000 + 40_000) // 2
    balance = 2_000_000 - 250_000 - 40_000
    assert hefei("2026-02-10T12:00:00+08:00") == {
        "balance_fen": balance, "monthly_expenditure_fen": monthly,
        "months_covered_hundredths": balance * 100 // monthly, "level": "high"}  # 11.79 months
    # before any expenditure: nothing to cover
    assert hefei("2026-01-15T00:00:00+08:00") == {
        "balance_fen": 2_000_000, "monthly_expenditure_fen": 0, "months_covered_hundredths": None,
        "level": "no_expenditure"}


# -- I3 as a view: the subsidy reconciliation -----------------------------------------------------


def test_the_reconciliation_compares_paid_with_headcount_times_the_standard() -> None:
    """The computation on its own inputs."""
    policy = standards_policy().model_copy(update={"cities": {HEFEI: "Hefei", WUHU: "Wuhu", BENGBU: "Bengbu"}})
    paid = {
        (HEFEI, "resident", "central"): (48_800_000, 1),
        (HEFEI, "resident", "provincial"): (8_000_000, 1),  # between 1,000 x 61 and 1,000 x 91.5 yuan
        (WUHU, "resident", "central"): (14_000_000, 2),  # short of 300 x 488 yuan
        (WUHU, "resident", "provincial"): (9_500_000, 1),  # above 1,000 x 91.5 yuan
        (BENGBU, "resident", "provincial"): (5_000_000, 1),  # below 1,000 x 61 yuan
        (BENGBU, "resident", "city"): (12_345, 1),  # a level without a standard
    }
    headcounts = {
        (HEFEI, "resident", "central"): 1_000, (HEFEI, "resident", "provincial"): 1_000,
        (WUHU, "resident", "central"): 300, (WUHU, "resident", "provincial"): 1_000,
        (BENGBU, "resident", "provincial"): 1_000,
    }
    body = reconcile_subsidies(policy, 2026, paid, headcounts)
    assert body["headcounts_known"] is True
    got = {(r["city"], r["level"]): r for r in body["rows"]}
    assert list(got) == [(HEFEI, "central"), (HEFEI, "provincial"), (WUHU, "central"), (WUHU, "provincial"),
                         (BENGBU, "central"), (BENGBU, "provincial"), (BENGBU, "city")]

    def figures(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["paid_fen"], row["headcount"], row["per_capita_low_fen"], row["per_capita_high_fen"],
                row["expected_low_fen"], row["expected_high_fen"], row["difference_fen"])

    assert figures(got[(HEFEI, "central")]) == (48_800_000, 1_000, 48_800, 48_800, 48_800_000, 48_800_000, 0)
    assert figures(got[(HEFEI, "provincial")]) == (8_000_000, 1_000, 6_100, 9_150, 6_100_000, 9_150_000, 0)
    assert figures(got[(WUHU, "central")]) == (14_000_000, 300, 48_800, 48_800, 14_640_000, 14_640_000, -640_000)
    assert figures(got[(WUHU, "provincial")]) == (9_500_000, 1_000, 6_100, 9_150, 6_100_000, 9_150_000, 350_000)
    assert figures(got[(BENGBU, "provincial")]) == (5_000_000, 1_000, 6_100, 9_150, 6_100_000, 9_150_000,
                                                    -1_100_000)
    # nothing paid, no headcount: the standard, and nothing expected of a count nobody reported
    assert figures(got[(BENGBU, "central")]) == (0, None, 48_800, 48_800, None, None, None)
    assert figures(got[(BENGBU, "city")]) == (12_345, None, None, None, None, None, None)
    assert got[(WUHU, "central")]["postings"] == 2 and got[(HEFEI, "central")]["name"] == "Hefei"

    totals = {r["city"]: r for r in body["totals"]}
    assert totals[HEFEI]["levels"] == ["central", "provincial"]
    assert figures(totals[HEFEI]) == (56_800_000, 1_000, 61_000, 61_000, 61_000_000, 61_000_000, -4_200_000)
    assert figures(totals[WUHU]) == (23_500_000, 1_000, 61_000, 61_000, 61_000_000, 61_000_000, -37_500_000)
    assert reconcile_subsidies(policy, 2025, paid, headcounts)["totals"] == []  # no 2025 standard


def reset_read_tables(database_url: str) -> None:
    """The read tables emptied and the projection back at zero (the reader keeps its grants)."""
    with psycopg.connect(database_url) as conn:
        conn.execute("TRUNCATE " + ", ".join(t for t in READ_TABLES if t != "pl_tracking"))
        conn.execute("UPDATE pl_tracking SET notification_id = 0")


@pytest.mark.integration
def test_subsidy_reconciliation_reads_what_each_level_paid_against_the_policys_standard(database_url: str) -> None:
    """Headcounts are the payments' own, net of reversals; the same figures whether the read tables
    were fed as the events came (page by page), rebuilt from zero set-based, or paged from zero."""
    with served_ledger(database_url, standards_policy()) as views:
        reversed_same_page = subsidy(WUHU, "central", 50 * CENTRAL_FEN, "2026-02-11T10:00:00+08:00", headcount=50)
        reversed_later = subsidy(BENGBU, "central", 20 * CENTRAL_FEN, "2026-02-11T10:00:00+08:00", headcount=20)
        views.send(
            subsidy(HEFEI, "central", 1_000 * CENTRAL_FEN, "2026-02-10T10:00:00+08:00", headcount=1_000),
            subsidy(HEFEI, "provincial", 1_000 * PROVINCIAL_LOW_FEN, "2026-02-10T10:00:00+08:00", headcount=1_000),
            # I3 lets an amount stray 1 fen (the standard's rounding tolerance) from headcount x standard
            subsidy(WUHU, "central", 300 * CENTRAL_FEN - 1, "2026-02-10T10:00:00+08:00", headcount=300),
            reversed_same_page,
            reversal(reversed_same_page, "2026-02-12T10:00:00+08:00"),
            subsidy(WUHU, "provincial", 200 * PROVINCIAL_HIGH_FEN + 1, "2026-02-10T10:00:00+08:00", headcount=200),
            subsidy(BENGBU, "city", 12_345, "2026-02-10T10:00:00+08:00", headcount=7),
            reversed_later,
            subsidy(HEFEI, "central", 1_000, "2025-06-01T10:00:00+08:00"),  # fiscal 2025: no standard, no headcount
        )
        views.send(reversal(reversed_later, "2026-02-13T10:00:00+08:00"))  # its original in an earlier page

        body = views.get("/v1/subsidies/reconciliation", year=2026)
        assert body["fiscal_year"] == 2026
        assert body["policy"] == {"name": "Anhui with 2026 subsidy standards (test)", "effective_from": "2020-01-01"}
        cities = list(load_packaged_policy().cities)
        # every city at both levels with a standard, and Bengbu's city level, which was paid
        expected_keys = []
        for city in cities:
            expected_keys += [(city, "resident", "central"), (city, "resident", "provincial")]
            if city == BENGBU:
                expected_keys.append((city, "resident", "city"))

        def figures(row: dict[str, Any]) -> tuple[Any, ...]:
            return (row["paid_fen"], row["postings"], row["headcount"], row["per_capita_low_fen"],
                    row["per_capita_high_fen"], row["expected_low_fen"], row["expected_high_fen"],
                    row["difference_fen"])

        # (paid, postings, headcount, per capita low, high, expected low, high, difference)
        expected = {
            (HEFEI, "resident", "central"): (1_000 * CENTRAL_FEN, 1, 1_000, CENTRAL_FEN, CENTRAL_FEN,
                                             1_000 * CENTRAL_FEN, 1_000 * CENTRAL_FEN, 0),
            (HEFEI, "resident", "provincial"): (1_000 * PROVINCIAL_LOW_FEN, 1, 1_000, PROVINCIAL_LOW_FEN,
                                                PROVINCIAL_HIGH_FEN, 1_000 * PROVINCIAL_LOW_FEN,
                                                1_000 * PROVINCIAL_HIGH_FEN, 0),
            # 300 + 50 - 50 people; paid 1 fen short of 300 x 488 yuan
            (WUHU, "resident", "central"): (300 * CENTRAL_FEN - 1, 3, 300, CENTRAL_FEN, CENTRAL_FEN,
                                            300 * CENTRAL_FEN, 300 * CENTRAL_FEN, -1),
            # 1 fen above the top of 200 x 61..91.5 yuan
            (WUHU, "resident", "provincial"): (200 * PROVINCIAL_HIGH_FEN + 1, 1, 200, PROVINCIAL_LOW_FEN,
                                               PROVINCIAL_HIGH_FEN, 200 * PROVINCIAL_LOW_FEN,
                                               200 * PROVINCIAL_HIGH_FEN, 1),
            # paid and taken back: nobody, nothing expected
            (BENGBU, "resident", "central"): (0, 2, 20 - 20, CENTRAL_FEN, CENTRAL_FEN, 0, 0, 0),
            (BENGBU, "resident", "provincial"): (0, 0, None, PROVINCIAL_LOW_FEN, PROVINCIAL_HIGH_FEN,
                                                 None, None, None),
            (BENGBU, "resident", "city"): (12_345, 1, 7, None, None, None, None, None),  # no standard
        }
        # (paid, postings, headcount, expected, difference) of central + provincial against 610 yuan a head
        expected_totals = {
            HEFEI: (1_000 * CENTRAL_FEN + 1_000 * PROVINCIAL_LOW_FEN, 2, 1_000, 1_000 * TOGETHER_FEN,
                    1_000 * CENTRAL_FEN + 1_000 * PROVINCIAL_LOW_FEN - 1_000 * TOGETHER_FEN),
            # the largest headcount of the two levels: 300 (the levels pay for the same people)
            WUHU: (300 * CENTRAL_FEN - 1 + 200 * PROVINCIAL_HIGH_FEN + 1, 4, 300, 300 * TOGETHER_FEN,
                   300 * CENTRAL_FEN + 200 * PROVINCIAL_HIGH_FEN - 300 * TOGETHER_FEN),
            BENGBU: (0, 2, 0, 0, 0),
        }

        per_capita = {"central": (CENTRAL_FEN, CENTRAL_FEN), "provincial": (PROVINCIAL_LOW_FEN, PROVINCIAL_HIGH_FEN)}

        def check(body: dict[str, Any]) -> None:
            assert body["headcounts_known"] is True  # every 2026 payment came with its headcount
            rows = {(r["city"], r["scheme"], r["level"]): r for r in body["rows"]}
            assert list(rows) == expected_keys
            for key in expected_keys:
                want = expected[key] if key in expected else (0, 0, None, *per_capita[key[2]], None, None, None)
                assert figures(rows[key]) == want, key
            assert rows[(HEFEI, "resident", "central")]["name"] == "Hefei"
            totals = {r["city"]: r for r in body["totals"]}
            assert list(totals) == cities
            for city, total in totals.items():
                assert total["per_capita_low_fen"] == total["per_capita_high_fen"] == TOGETHER_FEN
                paid_fen, postings, headcount, expected_fen, difference = expected_totals.get(
                    city, (0, 0, None, None, None))
                assert (total["paid_fen"], total["postings"], total["headcount"], total["expected_low_fen"],
                        total["expected_high_fen"], total["difference_fen"]) == (
                    paid_fen, postings, headcount, expected_fen, expected_fen, difference), city

        check(body)
        assert views.csv("/v1/subsidies/reconciliation", year=2026) == as_cells(body["rows"])
        last_year = views.get("/v1/subsidies/reconciliation", year=2025)
        assert last_year["headcounts_known"] is False  # its one payment came without a headcount
        assert [(r["city"], r["level"], r["paid_fen"], r["headcount"], r["per_capita_low_fen"])
                for r in last_year["rows"]] == [(HEFEI, "central", 1_000, None, None)]
        assert last_year["totals"] == []

        # the same figures from the read tables rebuilt from zero (set-based), then paged from zero,
        # read as the read role does (the API would answer from its cache: same position)
        for rebuild in (True, False):
            reset_read_tables(database_url)
            projector = Projector(views.ledger, database_url, page_size=2, rebuild=rebuild)
            try:
                rebuilt = rebuild_from_zero(projector.conn, views.ledger, PROJECTION_NAME) if rebuild else None
                assert (rebuilt is not None) == rebuild  # rebuilt set-based, or not at all
                projector.run_until_caught_up()
            finally:
                projector.close()
            with psycopg.connect(reader_url(database_url)) as conn:
                check(subsidy_reconciliation(conn, 2026))
                assert subsidy_reconciliation(conn, 2025)["headcounts_known"] is False


@pytest.mark.integration
def test_a_store_projected_before_headcounts_were_kept_reports_them_unknown(database_url: str) -> None:
    """An existing projection gains pl_subsidy_headcounts with its subsidies counted as payments
    without a headcount (their receipts are only read again by a rebuild from zero)."""
    with served_ledger(database_url, standards_policy()) as views:
        views.send(subsidy(HEFEI, "central", 10 * CENTRAL_FEN, "2026-02-10T10:00:00+08:00", headcount=10),
                   subsidy(HEFEI, "central", 5 * CENTRAL_FEN, "2026-02-10T10:00:00+08:00", headcount=5))
        with psycopg.connect(database_url) as conn:  # as the store was before: no table, no column
            conn.execute("DROP TABLE pl_subsidy_headcounts")
            conn.execute("ALTER TABLE pl_postings DROP COLUMN headcount")
        project(database_url, views.ledger)  # ensure_schema adds both
        ensure_reader_role(database_url)
        with psycopg.connect(reader_url(database_url)) as conn:
            body = subsidy_reconciliation(conn, 2026)
            assert conn.execute("SELECT * FROM pl_subsidy_headcounts").fetchall() == [
                (2026, HEFEI, "resident", "central", 0, 2, 2)]
        row = next(r for r in body["rows"] if (r["city"], r["level"]) == (HEFEI, "central"))
        assert (row["paid_fen"], row["headcount"], row["difference_fen"]) == (15 * CENTRAL_FEN, None, None)
        assert body["headcounts_known"] is False
        # a new payment is counted with its headcount, the old ones still without
        views.send(subsidy(HEFEI, "central", 3 * CENTRAL_FEN, "2026-02-11T10:00:00+08:00", headcount=3))
        with psycopg.connect(reader_url(database_url)) as conn:
            assert conn.execute("SELECT * FROM pl_subsidy_headcounts").fetchall() == [
                (2026, HEFEI, "resident", "central", 3, 3, 2)]
        # a rebuild from zero reads every receipt's headcount again
        reset_read_tables(database_url)
        project(database_url, views.ledger)
        with psycopg.connect(reader_url(database_url)) as conn:
            assert conn.execute("SELECT * FROM pl_subsidy_headcounts").fetchall() == [
                (2026, HEFEI, "resident", "central", 10 + 5 + 3, 3, 0)]
            assert subsidy_reconciliation(conn, 2026)["headcounts_known"] is True


# -- the routes: documented, behind the token --------------------------------------------------------


@pytest.mark.integration
def test_the_new_routes_are_in_the_openapi_and_need_the_token(views: Views) -> None:
    paths = views.client.get("/openapi.json").json()["paths"]
    assert set(NEW_ROUTES) <= set(paths)
    assert {p["name"] for p in paths["/v1/personal-accounts"]["get"]["parameters"]} == {"year", "as_of", "format"}
    for route in NEW_ROUTES:
        assert views.client.get(route, params={"year": 2026}).status_code == 401
        assert views.client.get(route, params={"year": 2026}, headers={"Authorization": "Bearer x"}).status_code == 401
        assert views.client.get(route, headers=AUTH).status_code == 422  # the year is required
        assert views.client.get(route, params={"year": 1800}, headers=AUTH).status_code == 422
    assert views.client.get("/v1/personal-accounts", params={"year": 2026, "as_of": "2026-01-01T00:00:00"},
                            headers=AUTH).status_code == 422  # an instant needs its offset


# -- E6: the employee personal accounts per city --------------------------------------------------


def personal_claim(city: str, amount: int, at: str) -> dict[str, Any]:
    return {**claim(city, "employee", amount, at, category="outpatient", level="primary"),
            "paid_from": "personal_account"}


PERSONAL_EVENTS_AT = "2026-02-01T10:00:00+08:00"


def personal_account_events() -> list[dict[str, Any]]:
    """Hefei: 7,000 in 2025, 120,000 in 2026 (5,000 more reversed), 30,000 paid out (10,000 more
    reversed); Wuhu: 80,000 in; an employer's contribution, which goes to the pooling fund."""
    reversed_in = contribution(HEFEI, "employee", 5_000, "2026-02-02T10:00:00+08:00")
    reversed_out = personal_claim(HEFEI, 10_000, "2026-03-02T10:00:00+08:00")
    return [
        contribution(HEFEI, "employee", 7_000, "2025-12-20T10:00:00+08:00"),
        contribution(HEFEI, "employee", 120_000, PERSONAL_EVENTS_AT),
        contribution(WUHU, "employee", 80_000, PERSONAL_EVENTS_AT),
        contribution(HEFEI, "employee", 50_000, PERSONAL_EVENTS_AT, payer_kind="employer"),
        reversed_in,
        reversal(reversed_in, "2026-02-03T10:00:00+08:00"),
        personal_claim(HEFEI, 30_000, "2026-03-01T10:00:00+08:00"),
        reversed_out,
        reversal(reversed_out, "2026-03-03T10:00:00+08:00"),
    ]


@pytest.mark.integration
def test_personal_accounts_show_each_citys_balance_income_and_payouts(views: Views) -> None:
    """Anhui credits the whole of an employee's own contribution to the personal accounts
    (`personal_account_share_bp` 10000): the figures below are the contributions sent."""
    views.send(*personal_account_events())
    body = views.get("/v1/personal-accounts", year=2026)
    assert body["fiscal_year"] == 2026
    rows = {r["city"]: r for r in body["rows"]}
    assert list(rows) == list(load_packaged_policy().cities)  # every city, in the policy's order
    assert rows[HEFEI] == {"city": HEFEI, "name": "Hefei", "account": "city:340100:employee:personal",
                           "balance_fen": 7_000 + 120_000 - 30_000, "income_fen": 120_000, "payouts_fen": 30_000}
    assert {k: rows[WUHU][k] for k in ("balance_fen", "income_fen", "payouts_fen")} == {
        "balance_fen": 80_000, "income_fen": 80_000, "payouts_fen": 0}
    assert all((r["balance_fen"], r["income_fen"], r["payouts_fen"]) == (0, 0, 0)
               for c, r in rows.items() if c not in (HEFEI, WUHU))
    assert body["total"] == {"balance_fen": 97_000 + 80_000, "income_fen": 200_000, "payouts_fen": 30_000}
    assert views.csv("/v1/personal-accounts", year=2026) == as_cells(body["rows"])

    # as of a past instant: the balance and the year's flows of that instant
    february = {r["city"]: r for r in views.get(
        "/v1/personal-accounts", year=2026, as_of="2026-02-15T00:00:00+08:00")["rows"]}
    assert (february[HEFEI]["balance_fen"], february[HEFEI]["income_fen"], february[HEFEI]["payouts_fen"]) == (
        7_000 + 120_000, 120_000, 0)
    last_year = {r["city"]: r for r in views.get("/v1/personal-accounts", year=2025, as_of=END_2025)["rows"]}
    assert (last_year[HEFEI]["balance_fen"], last_year[HEFEI]["income_fen"]) == (7_000, 7_000)

    # the personal accounts are not the pooling fund's: only the employer's contribution is there
    pooling = views.get(f"/v1/cities/{HEFEI}/balances", scheme="employee", as_of=END_2026)
    assert (pooling["balance_fen"], pooling["income_fen"], pooling["expenditure_fen"]) == (
        50_000, {"contribution.employer": 50_000}, {})


@pytest.mark.integration
def test_out_of_city_counts_personal_account_claims_in_the_employee_scheme(views: Views) -> None:
    """E7 x E6: a claim paid from Hefei's personal accounts to a Wuhu institution is Hefei's
    employees treated in Wuhu, beside the pooling fund's claims there; the rows keep their shape."""
    at = "2026-03-05T10:00:00+08:00"

    def elsewhere(message: dict[str, Any], city: str) -> dict[str, Any]:
        return {**message, "institution_city": city}

    personal_reversed = elsewhere(personal_claim(HEFEI, 600, at), WUHU)
    views.send(
        contribution(HEFEI, "employee", 100_000, "2026-01-05T10:00:00+08:00"),  # all to the personal accounts
        contribution(HEFEI, "employee", 100_000, "2026-01-05T10:00:00+08:00", payer_kind="employer"),
        elsewhere(personal_claim(HEFEI, 4_000, at), WUHU),
        elsewhere(claim(HEFEI, "employee", 3_000, at), WUHU),
        personal_reversed,
        reversal(personal_reversed, "2026-03-06T10:00:00+08:00"),
        elsewhere(personal_claim(HEFEI, 500, at), BENGBU),
        personal_claim(HEFEI, 1_000, at),  # treated at home: not in the matrix
    )
    body = views.get("/v1/out-of-city", year=2026)
    assert body["rows"] == [
        {"insured_city": HEFEI, "scheme": "employee", "treatment_city": WUHU,
         "amount_fen": 4_000 + 3_000 + 600 - 600, "postings": 4},
        {"insured_city": HEFEI, "scheme": "employee", "treatment_city": BENGBU, "amount_fen": 500, "postings": 1},
    ]
    assert views.csv("/v1/out-of-city", year=2026) == as_cells(body["rows"])
    # the personal accounts paid 4,000 + 500 + 1,000 of it (net of the reversed 600)
    personal = {r["city"]: r for r in views.get("/v1/personal-accounts", year=2026)["rows"]}[HEFEI]
    assert personal["payouts_fen"] == 4_000 + 500 + 1_000


# -- the dashboard in a real browser --------------------------------------------------------------


@contextmanager
def uvicorn_serving(database_url: str) -> Iterator[str]:
    """The API on a loopback port (as tests/test_dashboard.py serves it); yields its base URL."""
    app = create_app(reader_url(database_url), TOKEN)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=sock.getsockname()[1],
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.mark.integration
def test_dashboard_shows_personal_accounts_the_out_of_city_matrix_and_recoveries(views: Views) -> None:
    from tests.test_dashboard import render

    at = "2026-03-05T10:00:00+08:00"
    funded = [contribution(HEFEI, "resident", 100_000, "2026-01-05T10:00:00+08:00"),
              contribution(HEFEI, "employee", 100_000, "2026-01-05T10:00:00+08:00", payer_kind="employer"),
              contribution(WUHU, "resident", 100_000, "2026-01-05T10:00:00+08:00")]
    in_wuhu = {**claim(HEFEI, "resident", 7_000, at), "institution_city": WUHU}
    in_wuhu_reversed = {**claim(HEFEI, "resident", 500, at), "institution_city": WUHU}
    in_bengbu = {**claim(HEFEI, "employee", 3_000, at), "institution_city": BENGBU}
    from_wuhu = {**claim(WUHU, "resident", 2_000, at), "institution_city": HEFEI}

    def recovery(reason: str, amount_fen: int) -> dict[str, Any]:
        return upstream.event("RecoveryReceived", city=HEFEI, scheme="resident", institution_id="H1",
                              reason=reason, amount_fen=amount_fen, occurred_at="2026-03-06T10:00:00+08:00")

    views.send(*funded, in_wuhu, in_wuhu_reversed, in_bengbu, from_wuhu,
               reversal(in_wuhu_reversed, "2026-03-07T10:00:00+08:00"),
               recovery("fraud", 1_200), recovery("fraud", 100), recovery("overpayment", 300),
               *personal_account_events())

    with uvicorn_serving(views.database_url) as base:
        page = render(f"{base}/dashboard?year=2026#token={TOKEN}")
    body = page.body or {}
    assert "data-error" not in body, body.get("data-error")
    assert body.get("data-loaded") == "true"

    def fen(testid: str) -> str:
        return page.by_id[testid]["data-fen"]

    assert fen(f"out-of-city-resident-{HEFEI}-{WUHU}") == str(7_000)  # the 500 reversed
    assert fen(f"out-of-city-employee-{HEFEI}-{BENGBU}") == str(3_000)
    assert fen(f"out-of-city-resident-{WUHU}-{HEFEI}") == str(2_000)
    assert sorted(t for t in page.by_id if t.startswith("out-of-city-")) == sorted([
        f"out-of-city-resident-{HEFEI}-{WUHU}", f"out-of-city-employee-{HEFEI}-{BENGBU}",
        f"out-of-city-resident-{WUHU}-{HEFEI}"])
    assert fen(f"recovery-{HEFEI}-resident-fraud") == str(1_200 + 100)
    assert fen(f"recovery-{HEFEI}-resident-overpayment") == str(300)
    assert sorted(t for t in page.by_id if t.startswith("recovery-")) == [
        f"recovery-{HEFEI}-resident-fraud", f"recovery-{HEFEI}-resident-overpayment"]
    assert (fen(f"personal-{HEFEI}-balance"), fen(f"personal-{HEFEI}-income"), fen(f"personal-{HEFEI}-payouts")) == (
        str(7_000 + 120_000 - 30_000), str(120_000), str(30_000))
    assert fen(f"personal-{WUHU}-balance") == str(80_000)
    assert fen("personal-total-income") == str(120_000 + 80_000)


def test_the_dashboard_page_asks_for_the_revision_2_views() -> None:
    from importlib import resources

    page = (resources.files("projections") / "static" / "dashboard.html").read_text("utf-8")
    for route in ("/v1/personal-accounts?year=", "/v1/out-of-city?year=", "/v1/recoveries?year="):
        assert route in page, route
    for section in ("personal-body", "out-of-city-body", "recoveries-body"):
        assert f'id="{section}"' in page, section
