"""`pooling-ledger replay`: every recorded decision follows again from its stored input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from consumers.booking import record_batch
from consumers.inbound import Inbound, SourcePosition
from ledger.policy import load_packaged_policy
from pooling_ledger.simulate import Simulation, encode, pooling_year, with_faults
from storage import open_ledger
from tests.upstream import contribution, event, extraction, opening, reversal

pytestmark = pytest.mark.integration


def run_replay(database_url: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", "replay", "--json"],
        env={**os.environ, "DATABASE_URL": database_url, "POOLING_LOG_LEVEL": "error"},
        capture_output=True, text=True, timeout=300, check=False,
    )
    return result.returncode, json.loads(result.stdout)


def book_a_year(database_url: str) -> int:
    """A simulated December with its faults, a mid-year policy change and a reversal."""
    ledger = open_ledger(database_url)
    sim = Simulation(load_packaged_policy(), month=12, seed=21)
    phases = pooling_year(sim, events_per_city=15)
    messages = with_faults(sim, phases[0][1])
    offset = 0
    decided = 0
    lower_rate = load_packaged_policy().model_copy(update={"extraction_rate_bp": 300})
    extra = [
        event("PolicyAdopted", occurred_at="2025-12-02T10:00:00+08:00",
              policy=lower_rate.model_dump(mode="json"), effective_from="2026-01-01"),
        opening("341800", "employee", 1_000_000, previous_year_income_fen=10_000_000,
                fiscal_year=2026, occurred_at="2026-01-01T09:00:00+08:00"),
    ]
    fix = contribution("341800", "employee", 4_000, payer_kind="employer",
                       occurred_at="2026-01-02T09:00:00+08:00")
    later = [fix, reversal(fix, occurred_at="2026-01-03T09:00:00+08:00"),
             extraction(300_000, city="341800", scheme="employee", fiscal_year=2026,
                        occurred_at="2026-01-11T09:00:00+08:00"),  # 3 % of 10,000,000: allowed
             extraction(1, city="341800", scheme="employee", fiscal_year=2026,
                        occurred_at="2026-01-11T10:00:00+08:00")]  # above the new 3 %
    batches = [messages, [encode(e) for e in extra], *[[encode(e) for e in p] for _, p in phases[1:]],
               [encode(e) for e in later]]
    for batch in batches:
        inbound = []
        for _, value in batch:
            inbound.append(Inbound.parse(value, SourcePosition("t", 0, offset)))
            offset += 1
        decided += len(record_batch(ledger, inbound))
    ledger.close()
    return decided


def test_replaying_every_recorded_decision_gives_the_same_fates_and_balances(database_url: str) -> None:
    decided = book_a_year(database_url)
    code, result = run_replay(database_url)
    assert code == 0, result
    assert result["ok"] is True
    duplicates = 3  # re-deliveries leave no new decision to replay
    assert result["decisions"] == decided - duplicates
    assert result["funds_compared"] >= 34


def test_replay_finds_a_stored_input_that_no_longer_gives_its_recorded_decision(database_url: str) -> None:
    book_a_year(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:  # a superuser rewrites an input
        conn.execute("ALTER TABLE ledger_events DISABLE TRIGGER ledger_events_append_only")
        changed = conn.execute(
            "UPDATE ledger_events SET state = convert_to(replace(convert_from(state, 'UTF8'),"
            " '\"amount_fen\":4000,', '\"amount_fen\":4400,'), 'UTF8')"
            " WHERE topic = 'ledger.aggregates:Receipt.Accepted'"
            " AND convert_from(state, 'UTF8') LIKE '%\"payer_kind\":\"employer\",\"amount_fen\":4000,%'"
        ).rowcount
        conn.execute("ALTER TABLE ledger_events ENABLE TRIGGER ledger_events_append_only")
    assert changed == 1
    code, result = run_replay(database_url)
    assert code == 1
    assert any("recorded transfer" in d for d in result["differences"]), result


def test_replay_decides_again_rejected_payloads_that_orjson_cannot_write(database_url: str) -> None:
    """The chaos campaign's hostile input: integers past 64 bits (and a lone surrogate) in a
    rejected payload are kept as JSON, and replay must write them again to decide them."""
    ledger = open_ledger(database_url)
    hostile = []
    for amount in (2**63, 10**30, -(2**63) - 1):
        message = contribution(amount_fen=1)
        message["amount_fen"] = amount
        hostile.append(json.dumps(message).encode())
    hostile.append(json.dumps({**contribution(amount_fen=1), "source": "\ud800"}).encode())
    outcomes = record_batch(ledger, [Inbound.parse(m, SourcePosition("t", 0, n)) for n, m in enumerate(hostile)])
    assert [(o.status, o.reason) for o in outcomes] == [("rejected", "invalid_schema")] * 3 + [("rejected", "invalid_json")]
    ledger.close()

    returncode, report = run_replay(database_url)
    assert returncode == 0, report
    assert report["ok"] is True and report["decisions"] == 4


def test_replay_and_verify_pass_on_a_history_of_every_event_type(database_url: str) -> None:
    """RULES revision 2 included: every one of the 14 event types, accepted and refused."""
    from schemas.events import EVENT_TYPES
    from tests.test_verify import book, run_verify
    from tests.upstream import allocation, budget, claim, close, interest, subsidy

    province_opening = opening(None, balance_fen=0)
    paid = claim(amount_fen=40_000, occurred_at="2025-03-02T10:00:00+08:00")
    history = [
        province_opening,
        opening("340100", balance_fen=5_000_000, previous_year_income_fen=20_000_000),
        budget(30_000_000, 20_000_000),
        contribution(amount_fen=2_000_000, occurred_at="2025-03-01T10:00:00+08:00"),
        contribution(amount_fen=35_000, payer_kind="medical_assistance", occurred_at="2025-03-01T11:00:00+08:00"),
        subsidy(amount_fen=900_000, occurred_at="2025-03-01T12:00:00+08:00"),
        interest(amount_fen=1_234, city="340100", occurred_at="2025-03-01T13:00:00+08:00"),
        paid,
        {**claim(amount_fen=6_000, occurred_at="2025-03-02T11:00:00+08:00"), "institution_city": "340200"},
        event("RecoveryReceived", city="340100", scheme="resident", institution_id="H1", reason="fraud",
              claim_event_id=paid["event_id"], amount_fen=40_001, occurred_at="2025-03-03T10:00:00+08:00"),
        recovered := event("RecoveryReceived", city="340100", scheme="resident", institution_id="H1",
                           reason="fraud", claim_event_id=paid["event_id"], amount_fen=40_000,
                           occurred_at="2025-03-03T10:00:00+08:00"),
        reversal(recovered, occurred_at="2025-03-03T11:00:00+08:00"),  # gives 40,000 back to recover
        event("RecoveryReceived", city="340100", scheme="resident", institution_id="H1", reason="overpayment",
              claim_event_id=paid["event_id"], amount_fen=40_000, occurred_at="2025-03-03T12:00:00+08:00"),
        contribution("340100", "employee", 8_000, payer_kind="individual",  # E6: personal accounts
                     occurred_at="2025-03-03T13:00:00+08:00"),
        {**claim("340100", "employee", 8_001, occurred_at="2025-03-03T14:00:00+08:00"), "paid_from": "personal_account"},
        {**claim("340100", "employee", 8_000, occurred_at="2025-03-03T14:00:00+08:00"), "paid_from": "personal_account"},
        event("CriticalIllnessPremiumPaid", city="340100", scheme="resident", insurer_id="PICC-AH",
              fiscal_year=2025, amount_fen=300_000, occurred_at="2025-03-04T10:00:00+08:00"),
        budget(30_000_000, 25_000_000, type_="BudgetAdjusted", occurred_at="2025-03-05T10:00:00+08:00"),
        extraction(100_000, occurred_at="2025-03-06T10:00:00+08:00"),
        allocation(50_000, 10_000, occurred_at="2025-10-01T10:00:00+08:00"),
        reversal(paid, occurred_at="2025-10-02T10:00:00+08:00"),
        close("340100", 2025, occurred_at="2025-12-31T10:00:00+08:00"),  # period_not_ended
        close("340100", 2025, occurred_at="2026-01-05T10:00:00+08:00"),
        event("PolicyAdopted", occurred_at="2026-01-06T10:00:00+08:00",
              policy=load_packaged_policy().model_dump(mode="json"), effective_from="2026-02-01"),
    ]
    assert {m["type"] for m in history} == set(EVENT_TYPES)
    book(database_url, *history)

    code, replayed = run_replay(database_url)
    assert code == 0, replayed
    assert replayed["ok"] is True and replayed["decisions"] == len(history)
    code, verified = run_verify(database_url)
    assert code == 0, verified
    assert verified["ok"] is True
