"""RULES revision 2's read views (issue 9): the major-illness premium under a city's
expenditure (E8), and counted with the claims in its budget's execution (B3).

Every expected figure is the test's own: literals, or sums over the events it sent.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ledger.application import Ledger
from ledger.policy import load_packaged_policy
from projections.api import create_app
from projections.roles import ensure_reader_role, reader_url
from schemas.policy import Policy, SubsidyLevel, SubsidyStandard, SubsidyTotalStandard
from storage import open_ledger
from tests import upstream
from tests.test_projections import Feed, claim, contribution, project, reversal

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
