"""`pooling-ledger verify`: an auditor's replay catches an altered history."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from consumers.booking import record_batch
from consumers.inbound import Inbound, SourcePosition
from projections.projector import Projector
from storage import open_ledger
from tests.pipeline_support import claim, contribution

pytestmark = pytest.mark.integration


def run_verify(database_url: str, *args: str) -> tuple[int, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", "verify", "--json", *args],
        env={**os.environ, "DATABASE_URL": database_url, "POOLING_LOG_LEVEL": "error"},
        capture_output=True, text=True, timeout=120, check=False,
    )
    return result.returncode, json.loads(result.stdout)


def book(database_url: str, *events: dict[str, object]) -> None:
    ledger = open_ledger(database_url)
    record_batch(
        ledger, [Inbound.parse(json.dumps(e).encode(), SourcePosition("t", 0, i)) for i, e in enumerate(events)]
    )
    with Projector(ledger, database_url) as projector:
        projector.run_until_caught_up()
    ledger.close()


def test_verify_passes_on_an_untouched_history_and_its_fingerprint_is_stable(database_url: str) -> None:
    book(database_url, contribution("340100", "resident", 100_000), claim("340100", "resident", 40_000))
    code, first = run_verify(database_url)
    assert code == 0, first
    assert first["ok"] is True
    assert set(first["checks"]) == {  # type: ignore[arg-type]
        "trial_balance_zero", "funds_match_replay", "no_fund_negative",
        "projection_caught_up", "projection_matches_replay", "append_only_guard", "chain_intact",
    }
    assert first["chain"]["ok"] is True  # type: ignore[index]
    code, again = run_verify(database_url, "--expect", str(first["fingerprint"]))
    assert code == 0 and again["fingerprint"] == first["fingerprint"]


def test_verify_catches_an_event_altered_behind_the_append_only_guard(database_url: str) -> None:
    book(database_url, contribution("340100", "resident", 100_000), claim("340100", "resident", 40_000))
    _, before = run_verify(database_url)

    with psycopg.connect(database_url, autocommit=True) as conn:  # a superuser tampering
        conn.execute("ALTER TABLE ledger_events DISABLE TRIGGER ledger_events_append_only")
        changed = conn.execute(
            "UPDATE ledger_events SET state = convert_to(replace(convert_from(state, 'UTF8'),"
            " '\"amount_fen\":40000', '\"amount_fen\":4000'), 'UTF8')"
            " WHERE convert_from(state, 'UTF8') LIKE '%\"amount_fen\":40000%'"
        ).rowcount
    assert changed >= 1

    code, after = run_verify(database_url, "--expect", str(before["fingerprint"]))
    assert code == 1, after
    checks = after["checks"]
    assert checks["fingerprint_matches"] is False, after  # type: ignore[index]
    assert checks["append_only_guard"] is False, after  # type: ignore[index]
    assert checks["projection_matches_replay"] is False, after  # type: ignore[index]
    assert checks["chain_intact"] is False, after  # type: ignore[index]

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE ledger_events ENABLE TRIGGER ledger_events_append_only")
    code, later = run_verify(database_url, "--expect", str(before["fingerprint"]))
    assert code == 1 and later["checks"]["append_only_guard"] is True  # type: ignore[index]
    assert later["checks"]["fingerprint_matches"] is False  # type: ignore[index]
    assert later["checks"]["chain_intact"] is False  # type: ignore[index]
