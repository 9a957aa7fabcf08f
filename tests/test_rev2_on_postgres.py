"""RULES revision 2 where it crosses PostgreSQL: I4's day markers found by another process's
ledger, and an E6 split contribution projected into the read tables."""

from __future__ import annotations

import psycopg
import pytest

from ledger.policy import load_packaged_policy
from storage import open_ledger
from tests import upstream
from tests.test_projections import Feed, project
from tests.test_rules_revision2 import adopt_anhui

pytestmark = pytest.mark.integration


def test_a_rejection_stored_by_one_process_makes_a_policy_retroactive_for_another(database_url: str) -> None:
    first = open_ledger(database_url)
    (outcome,) = Feed(first).send([upstream.claim(amount_fen=1, occurred_at="2025-06-01T10:00:00+08:00")])
    assert (outcome.status, outcome.reason) == ("rejected", "insufficient_funds")

    other = open_ledger(database_url)  # knows nothing in memory: reads the stored day marker
    outcomes = Feed(other).send([
        adopt_anhui("2025-06-01", "2025-05-20T10:00:00+08:00", extraction_rate_bp=300),
        adopt_anhui("2025-06-02", "2025-05-20T10:00:00+08:00", extraction_rate_bp=300),
    ])
    assert [(o.status, o.reason) for o in outcomes] == [("rejected", "policy_retroactive"), ("accepted", None)]


def test_a_split_contribution_projects_to_both_funds_and_one_posting_of_its_payer(database_url: str) -> None:
    """personal_account_share_bp 7000: 10,001 fen -> 7,000 personal, 3,001 pooling (E6)."""
    policy = load_packaged_policy().model_copy(update={"personal_account_share_bp": 7000})
    ledger = open_ledger(database_url, policy)
    paid_in = upstream.contribution("340100", "employee", 10_001, payer_kind="individual", source="tax.anhui")
    outcomes = Feed(ledger).send([paid_in])
    assert [o.status for o in outcomes] == ["accepted"]
    assert project(database_url, ledger) > 0  # from zero: the split makes it page by page
    with psycopg.connect(database_url) as conn:
        balances = dict(conn.execute("SELECT account, balance_fen FROM pl_account_balances").fetchall())
        postings = conn.execute(
            "SELECT account, amount_fen FROM pl_postings WHERE event_id = %s ORDER BY account",
            (paid_in["event_id"],)).fetchall()
    assert balances["city:340100:employee:personal"] == 7_000
    assert balances["city:340100:employee:pooling"] == 3_001
    assert balances["external:contributors:340100:employee:individual"] == -10_001
    assert postings == [
        ("city:340100:employee:personal", 7_000),
        ("city:340100:employee:pooling", 3_001),
        ("external:contributors:340100:employee:individual", -10_001),
    ]
