"""`pooling-ledger replay --policy FILE` and `replay --until T`: history decided again, for auditors.

A hand-made history goes through the PostgreSQL ledger: Anhui's 2025 resident extractions at
exactly 5 % of their base in Hefei (one) and Wuhu (3 % then 2 %), at 4 % in Bengbu and Huainan
(and 1 fen over 5 % in Huainan, refused), an allocation, the employee 2026 extractions (5 % in
Hefei, 4 % in Wuhu), a policy adoption for 2026, and two late deliveries dated in June 2025.
The test's own fold of the movements (accounts written out, not the ledger's code) gives the
figures the command must print; the store's row counts before and after prove it read only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.booking import record_batch
from consumers.inbound import Inbound, SourcePosition
from ledger.policy import load_packaged_policy
from storage import open_ledger
from tests.upstream import allocation, claim, contribution, event, extraction, opening

HEFEI, WUHU, BENGBU, HUAINAN = "340100", "340200", "340300", "340400"


def eid(name: str) -> str:
    """The event_id (a UUID, as the contract wants) of this history's event `name`."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:test-whatif:{name}"))


RESIDENT_BASE = {HEFEI: 20_000_000, WUHU: 10_000_000, BENGBU: 8_000_000, HUAINAN: 6_000_000}
EMPLOYEE_BASE = {HEFEI: 30_000_000, WUHU: 12_000_000}
UNTIL = "2025-06-30T23:59:59+08:00"
#: refused in the record, and by the what-if too (1 fen over 5 % of Huainan's base; over 4 % too)
REFUSED_OVER_CAP = eid("ext-2025-huainan-over")
#: refused in the record (insufficient_funds: a September claim, recorded before it, left 80,000 fen)
LATE_CLAIM = eid("claim-bengbu-late")
#: the extractions above 4 % of their base, accepted under the recorded 5 %
ABOVE_4_PERCENT_2025 = {eid("ext-2025-hefei"), eid("ext-2025-wuhu-b")}
ABOVE_4_PERCENT_2026 = {eid("ext-2026-hefei")}


def _batches() -> list[list[dict[str, Any]]]:
    """The history, batch by batch, in the order the ledger records it."""
    resident_2025 = [
        *(opening(city, "resident", 5_000_000, previous_year_income_fen=base, event_id=eid(f"open-2025-{city}"))
          for city, base in RESIDENT_BASE.items()),
        extraction(1_000_000, city=HEFEI, occurred_at="2025-03-06T10:00:00+08:00", event_id=eid("ext-2025-hefei")),
        extraction(300_000, city=WUHU, occurred_at="2025-03-06T10:00:00+08:00", event_id=eid("ext-2025-wuhu-a")),
        extraction(200_000, city=WUHU, occurred_at="2025-03-06T11:00:00+08:00", event_id=eid("ext-2025-wuhu-b")),
        extraction(320_000, city=BENGBU, occurred_at="2025-03-06T10:00:00+08:00", event_id=eid("ext-2025-bengbu")),
        extraction(240_000, city=HUAINAN, occurred_at="2025-03-06T10:00:00+08:00", event_id=eid("ext-2025-huainan")),
        extraction(60_001, city=HUAINAN, occurred_at="2025-03-07T10:00:00+08:00", event_id=REFUSED_OVER_CAP),
        contribution(HUAINAN, "resident", 100_000, occurred_at="2025-04-01T10:00:00+08:00", event_id=eid("con-huainan")),
        claim(HUAINAN, "resident", 700_000, occurred_at="2025-05-01T10:00:00+08:00", event_id=eid("claim-huainan")),
    ]
    later_2025 = [
        allocation(600_000, 200_000, city=HUAINAN, occurred_at="2025-10-01T10:00:00+08:00", event_id=eid("alloc-huainan")),
        claim(BENGBU, "resident", 4_600_000, occurred_at="2025-09-01T10:00:00+08:00", event_id=eid("claim-bengbu-sep")),
        event("PolicyAdopted", occurred_at="2025-12-02T10:00:00+08:00", event_id=eid("adopt-2026"),
              policy=load_packaged_policy().model_dump(mode="json"), effective_from="2026-01-01"),
    ]
    employee_2026 = [
        *(opening(city, "employee", balance, previous_year_income_fen=EMPLOYEE_BASE[city], fiscal_year=2026,
                  occurred_at="2026-01-01T00:00:00+08:00", event_id=eid(f"open-2026-{city}"))
          for city, balance in ((HEFEI, 4_000_000), (WUHU, 2_000_000))),
        extraction(1_500_000, city=HEFEI, scheme="employee", fiscal_year=2026,
                   occurred_at="2026-01-15T10:00:00+08:00", event_id=eid("ext-2026-hefei")),
        extraction(480_000, city=WUHU, scheme="employee", fiscal_year=2026,
                   occurred_at="2026-01-15T10:00:00+08:00", event_id=eid("ext-2026-wuhu")),
    ]
    late = [  # delivered last, dated in June 2025
        claim(BENGBU, "resident", 100_000, occurred_at="2025-06-15T10:00:00+08:00", event_id=LATE_CLAIM),
        contribution(WUHU, "resident", 50_000, occurred_at="2025-06-01T10:00:00+08:00", event_id=eid("con-wuhu-late")),
    ]
    return [resident_2025, later_2025, employee_2026, late]


def _history() -> list[dict[str, Any]]:
    return [e for batch in _batches() for e in batch]


def book(database_url: str) -> None:
    ledger = open_ledger(database_url)
    offset = 0
    for batch in _batches():
        inbound = []
        for message in batch:
            inbound.append(Inbound.parse(json.dumps(message).encode(), SourcePosition("t", 0, offset)))
            offset += 1
        outcomes = record_batch(ledger, inbound)
        refused = {o.event_id for o in outcomes if o.status != "accepted"}
        assert refused <= {REFUSED_OVER_CAP, LATE_CLAIM}, outcomes
    ledger.close()


# ------------------------------------------------------------- the test's own fold


def _pooling(e: dict[str, Any]) -> str:
    return f"city:{e['city']}:{e['scheme']}:pooling"


def _movements(e: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(debit, credit, fen) of an accepted event of this history."""
    kind = e["type"]
    if kind == "OpeningBalanceRecorded":
        return [("equity:opening", _pooling(e), e["balance_fen"])]
    if kind == "ContributionReceived":  # resident only here: no personal accounts
        return [(f"external:contributors:{e['city']}:{e['scheme']}:{e['payer_kind']}", _pooling(e), e["amount_fen"])]
    if kind == "ClaimPaid":
        return [(_pooling(e), f"external:institutions:{e['city']}", e["amount_fen"])]
    if kind == "AdjustmentFundExtracted":
        return [(_pooling(e), f"province:{e['scheme']}:adjustment", e["amount_fen"])]
    if kind == "AdjustmentFundAllocated":
        return [(f"province:{e['scheme']}:adjustment", _pooling(e), e["amount_fen"])]
    assert kind == "PolicyAdopted", kind
    return []


def _fold(accepted: set[str], until: str | None = None) -> dict[str, int]:
    balances: dict[str, int] = defaultdict(int)
    for e in _history():
        if e["event_id"] not in accepted:
            continue
        if until is not None and datetime.fromisoformat(e["occurred_at"]) > datetime.fromisoformat(until):
            continue
        for debit, credit, fen in _movements(e):
            balances[debit] -= fen
            balances[credit] += fen
    return dict(balances)


def _extracted(accepted: set[str], scheme: str) -> int:
    return sum(e["amount_fen"] for e in _history()
               if e["event_id"] in accepted and e["type"] == "AdjustmentFundExtracted" and e["scheme"] == scheme)


def _allocated(accepted: set[str], scheme: str) -> int:
    return sum(e["amount_fen"] for e in _history()
               if e["event_id"] in accepted and e["type"] == "AdjustmentFundAllocated" and e["scheme"] == scheme)


RECORDED_ACCEPTED = {e["event_id"] for e in _history()} - {REFUSED_OVER_CAP, LATE_CLAIM}


# ------------------------------------------------------------- running it


def row_counts(database_url: str) -> dict[str, int]:
    """Rows of every table in the database (the ledger's events, snapshots, positions, marks...)."""
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for (t,) in tables}  # type: ignore[index]


def chain_link(database_url: str) -> dict[str, Any] | None:
    from storage.chain import latest_link

    with psycopg.connect(database_url) as conn:
        return latest_link(conn)


def replay(database_url: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", "replay", *args],
        env={**os.environ, "DATABASE_URL": database_url, "POOLING_LOG_LEVEL": "error",
             "POOLING_DATA_DIR": str(tmp_path / "var"), **(env or {})},
        capture_output=True, text=True, timeout=300, check=False,
    )


def policy_at_400_bp(tmp_path: Path) -> Path:
    """The packaged Anhui policy file with extraction_rate_bp 400."""
    packaged = Path(__file__).parents[1] / "ledger" / "policies" / "anhui.json"
    policy = json.loads(packaged.read_text("utf-8"))
    assert policy["extraction_rate_bp"] == 500
    policy["extraction_rate_bp"] = 400
    path = tmp_path / "anhui-400.json"
    path.write_text(json.dumps(policy, ensure_ascii=False), "utf-8")
    return path


def _assert_what_if(result: dict[str, Any], changed: set[str]) -> None:
    """The fates that change are exactly `changed`, and the figures are the test's own fold's."""
    assert {c["event_id"] for c in result["decided_differently"]} == changed, result["decided_differently"]
    for c in result["decided_differently"]:
        assert c["event_type"] == "AdjustmentFundExtracted"
        assert c["change"] == "accepted_now_rejected"
        assert c["recorded"]["status"] == "accepted"
        assert c["what_if"]["status"] == "rejected"
        assert c["what_if"]["reason"] == "extraction_cap_exceeded"
        assert "400 bp" in c["what_if"]["detail"]
    groups = {(c["city"], c["scheme"], c["event_id"]) for c in result["decided_differently"]}
    assert groups == {(e["city"], e["scheme"], e["event_id"]) for e in _history() if e["event_id"] in changed}
    by_group: dict[tuple[str, str], int] = defaultdict(int)
    for c in result["decided_differently"]:
        by_group[(c["city"], c["scheme"])] += 1
    assert {(r["city"], r["scheme"]): r["accepted_now_rejected"] for r in result["by_city_scheme"]} == by_group

    what_if_accepted = RECORDED_ACCEPTED - changed
    recorded, what_if = _fold(RECORDED_ACCEPTED), _fold(what_if_accepted)
    assert {r["account"]: (r["recorded_fen"], r["what_if_fen"]) for r in result["balances"]} == {
        a: (recorded.get(a, 0), what_if.get(a, 0)) for a in recorded.keys() | what_if.keys()
    }
    assert all(r["difference_fen"] == r["what_if_fen"] - r["recorded_fen"] for r in result["balances"])
    funds = {r["scheme"]: r for r in result["adjustment_funds"]}
    for scheme in ("resident", "employee"):
        assert funds[scheme]["extractions_fen"] == {
            "recorded": _extracted(RECORDED_ACCEPTED, scheme), "what_if": _extracted(what_if_accepted, scheme)}
        assert funds[scheme]["allocations_fen"] == {
            "recorded": _allocated(RECORDED_ACCEPTED, scheme), "what_if": _allocated(what_if_accepted, scheme)}
        account = f"province:{scheme}:adjustment"
        assert funds[scheme]["balance_fen"] == {"recorded": recorded[account], "what_if": what_if[account]}
    assert result["total_fen"] == {"recorded": 0, "what_if": 0}


@pytest.mark.integration
def test_what_if_at_4_percent_refuses_exactly_the_extractions_above_it_and_writes_nothing(
    database_url: str, tmp_path: Path
) -> None:
    book(database_url)
    before = row_counts(database_url)
    assert before["public.ledger_events"] > 0
    link_before = chain_link(database_url)
    assert link_before is not None and link_before["events"] > 0

    run = replay(database_url, tmp_path, "--policy", str(policy_at_400_bp(tmp_path)), "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)

    assert row_counts(database_url) == before  # every table, rows and all
    assert chain_link(database_url) == link_before  # the hash chain's latest link too
    assert result["policy"]["name"] == load_packaged_policy().name
    assert result["keep_adoptions"] is False
    assert [a["event_id"] for a in result["adoptions_skipped"]] == [eid("adopt-2026")]  # 400 bp throughout
    assert result["decisions"] == len(_history()) - 1 and result["unprocessable"] == 0
    _assert_what_if(result, ABOVE_4_PERCENT_2025 | ABOVE_4_PERCENT_2026)
    # the figures side by side, written out once: the resident adjustment fund took 2,060,000 fen
    # and now 860,000 (Wuhu's first 300,000, Bengbu's and Huainan's 4 %), less the 200,000 allocated
    funds = {r["scheme"]: r for r in result["adjustment_funds"]}
    assert funds["resident"]["balance_fen"] == {"recorded": 1_860_000, "what_if": 660_000}
    assert funds["employee"]["balance_fen"] == {"recorded": 1_980_000, "what_if": 480_000}


@pytest.mark.integration
def test_what_if_keeping_the_recorded_adoptions_changes_only_what_its_policy_governed(
    database_url: str, tmp_path: Path
) -> None:
    """The recorded adoption brings 500 bp back from 2026: only the 2025 extractions change."""
    book(database_url)
    before = row_counts(database_url)
    run = replay(database_url, tmp_path, "--policy", str(policy_at_400_bp(tmp_path)), "--keep-adoptions", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert row_counts(database_url) == before
    assert result["keep_adoptions"] is True and result["adoptions_skipped"] == []
    assert result["decisions"] == len(_history())
    _assert_what_if(result, ABOVE_4_PERCENT_2025)


@pytest.mark.integration
def test_until_decides_the_inputs_dated_up_to_then_and_prints_their_trial_balance(
    database_url: str, tmp_path: Path
) -> None:
    book(database_url)
    before = row_counts(database_url)
    run = replay(database_url, tmp_path, "--until", UNTIL, "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert row_counts(database_url) == before

    dated_up_to = {e["event_id"] for e in _history() if datetime.fromisoformat(e["occurred_at"])
                   <= datetime.fromisoformat(UNTIL)}
    # decided: those dated up to then (the late claim now accepted: the September claim that
    # emptied Bengbu's fund is dated later) and the adoption (whatever its date)
    assert result["decisions"] == len(dated_up_to) + 1
    assert result["left_out"] == len(_history()) - len(dated_up_to) - 1
    accepted = (RECORDED_ACCEPTED | {LATE_CLAIM}) & dated_up_to
    expected = _fold(accepted, until=UNTIL)
    assert {r["account"]: r["balance_fen"] for r in result["accounts"]} == expected
    assert result["total_fen"] == 0 and sum(expected.values()) == 0
    assert result["as_of"] == datetime.fromisoformat(UNTIL).isoformat()

    [late] = result["decided_differently"]
    assert late["event_id"] == LATE_CLAIM and late["change"] == "rejected_now_accepted"
    assert late["recorded"]["reason"] == "insufficient_funds" and late["replayed"]["status"] == "accepted"
    recorded_as_of = _fold(RECORDED_ACCEPTED, until=UNTIL)  # what `balances --as-of` folds
    assert {r["account"]: (r["balance_fen"], r["recorded_fen"]) for r in result["recorded_differs"]} == {
        a: (expected.get(a, 0), recorded_as_of.get(a, 0))
        for a in expected.keys() | recorded_as_of.keys() if expected.get(a, 0) != recorded_as_of.get(a, 0)
    } == {"city:340300:resident:pooling": (4_580_000, 4_680_000), "external:institutions:340300": (100_000, 0)}


@pytest.mark.integration
def test_until_and_what_if_show_tables_and_a_progress_bar_on_a_terminal_and_stay_quiet_under_json(
    database_url: str, tmp_path: Path
) -> None:
    book(database_url)
    terminal = {"TTY_COMPATIBLE": "1", "TERM": "xterm", "COLUMNS": "250", "NO_COLOR": "1"}
    what_if = replay(database_url, tmp_path, "--policy", str(policy_at_400_bp(tmp_path)), env=terminal)
    assert what_if.returncode == 0, what_if.stderr
    assert "events/s" in what_if.stderr
    for text in (*map(eid, ("ext-2025-hefei", "ext-2025-wuhu-b", "ext-2026-hefei", "adopt-2026")),
                 "extraction_cap_exceeded", "340100 Hefei", "province:resident:adjustment", "1,860,000", "660,000"):
        assert text in what_if.stdout, (text, what_if.stdout)
    assert eid("ext-2025-bengbu") not in what_if.stdout  # exactly 4 %: unchanged

    until = replay(database_url, tmp_path, "--until", UNTIL, env=terminal)
    assert until.returncode == 0, until.stderr
    assert "events/s" in until.stderr
    assert "city:340300:resident:pooling" in until.stdout and "4,580,000" in until.stdout
    assert "total (must be 0)" in until.stdout and LATE_CLAIM in until.stdout

    quiet = replay(database_url, tmp_path, "--until", UNTIL, "--json", env=terminal)
    assert quiet.returncode == 0 and "events/s" not in quiet.stderr
    json.loads(quiet.stdout)

    plain = replay(database_url, tmp_path, env=terminal)  # the check itself, unchanged, with the bar
    assert plain.returncode == 0, plain.stdout
    assert "the same" in plain.stdout and "events/s" in plain.stderr


def test_replay_refuses_an_until_without_offset_a_bad_policy_and_adoptions_without_policy(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}  # refused before connecting
    naive = replay("unused", tmp_path, "--until", "2025-06-30T23:59:59", env=env)
    assert naive.returncode == 2 and "--until needs an offset" in naive.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(load_packaged_policy().model_dump_json()), "extraction_rate_bp": 600}))
    refused = replay("unused", tmp_path, "--policy", str(bad), env=env)
    assert refused.returncode == 2 and "not a valid policy" in refused.stderr
    missing = replay("unused", tmp_path, "--policy", str(tmp_path / "none.json"), env=env)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    alone = replay("unused", tmp_path, "--keep-adoptions", env=env)
    assert alone.returncode == 2 and "--keep-adoptions goes with --policy" in alone.stderr
