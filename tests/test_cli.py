"""The `pooling-ledger` command line, run as a user would, against the real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline_support import claim, contribution

COMMANDS = [
    "demo", "consume", "publish", "balances", "project", "serve", "verify", "replay", "export",
    "schemas", "schemas export", "statement", "simulate", "prepare-db",
]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", *args],
        env={**os.environ, "POOLING_LOG_LEVEL": "error", **(env or {})},
        capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = cli(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def service_env(database_url: str, bootstrap: str, topics: dict[str, str]) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "POOLING_EVENTS_TOPIC": topics["events"],
        "POOLING_LEDGER_TOPIC": topics["ledger"],
        "POOLING_REJECTIONS_TOPIC": topics["rejections"],
    }


@pytest.mark.integration
def test_publish_consume_and_balances_from_the_command_line(
    tmp_path: Path, database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    env = service_env(database_url, kafka_bootstrap, topics)
    events = [contribution("340100", "resident", 38_000), claim("340100", "resident", 12_345)]
    lines = [json.dumps(e) for e in events] + ["", "{not json"]
    feed = tmp_path / "feed.jsonl"
    feed.write_text("\n".join(lines) + "\n")

    published = cli("publish", str(feed), env=env)
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout) == {"published": 3, "topic": topics["events"]}
    consumed = cli("consume", "--idle-exit", "1", env=env)
    assert consumed.returncode == 0, consumed.stderr
    assert json.loads(consumed.stdout.splitlines()[-1])["accepted"] == 2
    balances = cli("balances", "--json", env=env)
    assert balances.returncode == 0, balances.stderr
    trial = json.loads(balances.stdout)
    assert trial["total_fen"] == 0
    assert {"account": "city:340100:resident:pooling", "balance_fen": 38_000 - 12_345} in trial["accounts"]
    assert {"account": "external:institutions:340100", "balance_fen": 12_345} in trial["accounts"]
    before = cli("balances", "--json", "--as-of", "2025-03-10T09:29:59+08:00", env=env)  # both dated 09:30
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["accounts"] == []
    at_ten = cli("balances", "--json", "--as-of", "2025-03-10T01:30:00Z", env=env)  # the same instant in UTC
    assert at_ten.returncode == 0, at_ten.stderr
    assert json.loads(at_ten.stdout)["accounts"] == trial["accounts"]


def test_publish_names_a_missing_file() -> None:
    result = cli("publish", "/nonexistent/feed.jsonl", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 2
    assert "/nonexistent/feed.jsonl: no such file" in result.stderr


def test_balances_refuses_an_as_of_without_offset(database_url: str) -> None:
    result = cli("balances", "--as-of", "2025-03-01T00:00:00", env={"DATABASE_URL": database_url})
    assert result.returncode == 2
    assert "--as-of needs an offset" in result.stderr


@pytest.mark.integration
def test_demo_runs_the_simulated_province_through_every_rule_it_shows(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    result = cli("demo", "--json", "--events-per-city", "30", "--seed", "11", env=service_env(database_url, kafka_bootstrap, topics))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["trial_balance"]["total_fen"] == 0
    assert report["outcomes"]["duplicate"] == 3
    assert report["rejections_by_reason"] == {
        "invalid_json": 1, "invalid_schema": 1, "unknown_city": 1, "earmark_violation": 1,
        "event_id_conflict": 1, "over_budget": 2, "period_closed": 1,
    }
    resident, = (f for f in report["adjustment_funds"] if f["scheme"] == "resident")
    extracted = sum(resident["extracted_fen"].values())
    allocated = sum(resident["allocated_fen"].values())
    assert allocated == 5_000_000  # half of the simulated 10,000,000 fen gap (X5)
    assert resident["balance_fen"] == extracted - allocated
    assert sum(c.get("resident_extracted_fen", 0) for c in report["cities"]) == extracted
    assert set(resident["closed_income_fen"]) == {"2025"}
    accounts = {a["account"]: a["balance_fen"] for a in report["trial_balance"]["accounts"]}
    for city in report["cities"]:
        assert accounts[f"city:{city['city']}:resident:pooling"] == city["resident_balance_fen"]


@pytest.mark.integration
def test_export_journal_and_events_give_the_whole_history(tmp_path: Path, database_url: str) -> None:
    import csv
    from collections import defaultdict

    import psycopg

    from consumers.booking import record_batch
    from consumers.inbound import Inbound, SourcePosition
    from storage import open_ledger

    events = [contribution("340100", "resident", 90_000), claim("340100", "resident", 30_000),
              contribution("340200", "employee", 5_000, "employer"), claim("340200", "employee", 9_999)]
    ledger = open_ledger(database_url)
    record_batch(ledger, [Inbound.parse(json.dumps(e).encode(), SourcePosition("t", 0, i)) for i, e in enumerate(events)])
    ledger.close()

    journal = tmp_path / "journal.csv"
    result = cli("export", "journal", "-o", str(journal), env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(journal.open()))
    assert [r["event_id"] for r in rows] == [e["event_id"] for e in events[:3]]  # the overdraft was refused
    balances: dict[str, int] = defaultdict(int)
    for r in rows:
        balances[r["debit_account"]] -= int(r["amount_fen"])
        balances[r["credit_account"]] += int(r["amount_fen"])
    assert balances["city:340100:resident:pooling"] == 60_000
    assert balances["city:340200:employee:pooling"] == 5_000
    assert sum(balances.values()) == 0

    stored = tmp_path / "events.jsonl"
    result = cli("export", "events", "-o", str(stored), env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in stored.read_text().splitlines()]
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*) FROM ledger_events").fetchone()
    assert count is not None and len(lines) == count[0]
    assert [line["notification_id"] for line in lines] == sorted(line["notification_id"] for line in lines)
    assert cli("export", "nonsense", env={"DATABASE_URL": database_url}).returncode == 2
