"""The province simulator (`pooling_ledger/province.py`, issue 10) and `pooling-ledger simulate`.

A 2024-2026 stream of Anhui's provincial pooling is deterministic (the same seed gives the same
bytes), keeps its memory bounded however many events it yields, and runs through the in-memory
ledger with every message getting the fate the simulator expects. What the test checks the
ledger against is computed here from the stream itself (the accepted messages, folded as
credits and debits, collected income and extractions by city and year), never by ledger code.
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from functools import cache
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from consumers.topics import read_topic
from ledger.policy import load_packaged_policy
from pooling_ledger.cli import app
from pooling_ledger.province import BadShare, ProvinceSimulation, Simulated
from tests.upstream import feed, new_ledger, trial_balance

POLICY = load_packaged_policy()
CITIES = list(POLICY.cities)
SCHEMES = ("employee", "resident")
CST = timezone(timedelta(hours=8))
#: The ledger test's stream: fiscal 2024-2026, 20,000 messages, with more faults than the default
#: (1 % duplicates, 0.5 % invalid, 2 % rule-breaking, 0.5 % late) so every kind is in it.
EVENTS, SEED = 20_000, 7
SHARES = BadShare(duplicate=0.01, invalid=0.005, rule=0.02, late=0.005)
#: tracemalloc's peak while 200,000 messages are generated and dropped: the simulator's own
#: state (per fund and year, and bounded pools of recent events), about 2 MiB when measured.
PEAK_BYTES_MAX = 6 * 2**20
#: ... and no more than this above the peak of 20,000 messages: nothing grows with the count.
PEAK_GROWTH_BYTES_MAX = 2**20


@cache
def stream() -> tuple[Simulated, ...]:
    return tuple(ProvinceSimulation(POLICY, events=EVENTS, seed=SEED, bad_share=SHARES))


def jsonl(messages: Iterable[Simulated]) -> bytes:
    """The stream as `pooling-ledger simulate -o` writes it."""
    return b"".join(m.value + b"\n" for m in messages)


def fates(messages: Iterable[Simulated]) -> bytes:
    return json.dumps([[m.event_id, m.expected.as_json()] for m in messages]).encode()


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


def fiscal_year(event: dict[str, Any]) -> int:
    return at(event).astimezone(CST).year


# ------------------------------------------------------------------------- (1) determinism


def test_the_same_seed_gives_the_same_bytes_and_another_seed_others() -> None:
    first = stream()
    assert len(first) == EVENTS
    sim = ProvinceSimulation(POLICY, events=EVENTS, seed=SEED, bad_share=SHARES)
    again = list(sim)
    assert hashlib.sha256(jsonl(again)).digest() == hashlib.sha256(jsonl(first)).digest()
    assert fates(again) == fates(first)
    assert jsonl(sim.messages()) == jsonl(first)  # the same object, run again from the start
    other = ProvinceSimulation(POLICY, events=EVENTS, seed=SEED + 1, bad_share=SHARES)
    assert jsonl(other) != jsonl(first)
    assert sim.totals.messages == EVENTS
    assert sum(sim.totals.by_fate.values()) == EVENTS
    assert sim.totals.by_fate == Counter(m.expected.fate for m in first)


def test_openings_come_first_and_only_the_marked_messages_are_out_of_business_time_order() -> None:
    messages = stream()
    funds = 2 * len(CITIES) + 2
    openings = [json.loads(m.value) for m in messages[:funds]]
    assert {e["type"] for e in openings} == {"OpeningBalanceRecorded"}
    assert {(e.get("city"), e["scheme"]) for e in openings} == {(c, s) for c in [*CITIES, None] for s in SCHEMES}
    assert {(e["fiscal_year"], fiscal_year(e)) for e in openings} == {(2024, 2024)}
    assert all(json.loads(m.value)["type"] != "OpeningBalanceRecorded" for m in messages[funds:] if m.expected.kind != "invalid")

    latest: datetime | None = None
    late = 0
    for m in messages:
        if m.expected.kind == "invalid":
            continue
        when = at(json.loads(m.value))
        if m.expected.late:
            assert latest is not None and when < latest, m
            late += 1
        else:
            assert latest is None or when >= latest, m
            latest = when
    assert late == stream_totals().late > 0
    assert latest == datetime(2027, 1, 6, 10, tzinfo=CST)  # the last close: fiscal 2026


@cache
def stream_totals() -> Any:
    sim = ProvinceSimulation(POLICY, events=EVENTS, seed=SEED, bad_share=SHARES)
    for _ in sim:
        pass
    return sim.totals


# ------------------------------------------------------------------------------ (2) memory


def test_generating_200000_messages_keeps_the_tracemalloc_peak_bounded() -> None:
    def peak(events: int) -> tuple[int, int]:
        tracemalloc.start()
        try:
            count = sum(1 for _ in ProvinceSimulation(POLICY, events=events, seed=3))
            return count, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small_count, small_peak = peak(20_000)
    count, large_peak = peak(200_000)
    assert (small_count, count) == (20_000, 200_000)
    assert large_peak < PEAK_BYTES_MAX, large_peak
    assert large_peak < small_peak + PEAK_GROWTH_BYTES_MAX, (small_peak, large_peak)


# ------------------------------------------------------------------------------ (3) the ledger


def pooling(city: str, scheme: str) -> str:
    return f"city:{city}:{scheme}:pooling"


def personal(city: str) -> str:
    return f"city:{city}:employee:personal"


def adjustment(scheme: str) -> str:
    return f"province:{scheme}:adjustment"


class StreamBook:
    """The accepted messages of a stream, folded here: what each fund holds, by business time,
    and the figures of X2 and X4 (collected income and extractions by city, scheme and year)."""

    def __init__(self, messages: Iterable[Simulated]) -> None:
        self.legs: list[tuple[datetime, str, int]] = []  # (instant, fund, change)
        self.by_event: dict[str, list[tuple[str, int]]] = {}
        self.contributions: dict[str, tuple[tuple[str, str, int], int]] = {}  # event_id -> (fund-year, pooling fen)
        self.collected: Counter[tuple[str, str, int]] = Counter()  # pooling contributions, net (X2/X3 base)
        self.extracted: Counter[tuple[str, str, int]] = Counter()
        self.opening_income: dict[tuple[str, str], int] = {}
        self.province_after_extraction: list[tuple[str, int, int]] = []  # (scheme, year, balance after)
        self.province: Counter[str] = Counter()  # the adjustment funds, in publication order
        self.types: Counter[tuple[str, str | None, int | None]] = Counter()
        self.flows: Counter[str] = Counter()
        share_bp = POLICY.personal_account_share_bp
        for m in messages:
            if m.expected.status != "accepted":
                continue
            e = json.loads(m.value)
            kind, city, scheme, fen = e["type"], e.get("city"), e.get("scheme"), e.get("amount_fen", 0)
            year = fiscal_year(e)
            self.types[(kind, scheme, e.get("fiscal_year", year))] += 1
            fund = (pooling(city, scheme) if city else adjustment(scheme)) if scheme else ""
            moves: list[tuple[str, int]] = []
            if kind == "OpeningBalanceRecorded":
                moves = [(fund, e["balance_fen"])]
                if city:
                    self.opening_income[(city, scheme)] = e["previous_year_income_fen"]
            elif kind == "ContributionReceived":
                own = fen * share_bp // 10_000 if (scheme, e["payer_kind"]) == ("employee", "individual") else 0
                moves = [(personal(city), own), (fund, fen - own)]
                self.collected[(city, scheme, year)] += fen - own
                self.contributions[e["event_id"]] = ((city, scheme, year), fen - own)
                self.flows[e["payer_kind"]] += 1
            elif kind in ("SubsidyDisbursed", "RecoveryReceived", "InterestCredited"):
                moves = [(fund, fen)]
            elif kind == "ClaimPaid":
                from_personal = e.get("paid_from") == "personal_account"
                moves = [(personal(city) if from_personal else fund, -fen)]
                self.flows["personal_account_claim" if from_personal else "pooling_claim"] += 1
                if e.get("institution_city", city) != city:
                    self.flows["out_of_city_claim"] += 1
            elif kind == "CriticalIllnessPremiumPaid":
                moves = [(fund, -fen)]
            elif kind == "AdjustmentFundExtracted":
                moves = [(fund, -fen), (adjustment(scheme), fen)]
                self.extracted[(city, scheme, e["fiscal_year"])] += fen
            elif kind == "AdjustmentFundAllocated":
                moves = [(fund, fen), (adjustment(scheme), -fen)]
            elif kind == "EventReversed":
                original = e["original_event_id"]
                moves = [(account, -change) for account, change in self.by_event[original]]
                if original in self.contributions:
                    key, pooling_fen = self.contributions[original]
                    assert key[2] == year, "a contribution is reversed within its fiscal year"
                    self.collected[key] -= pooling_fen
            moves = [(account, change) for account, change in moves if change]
            self.by_event[e["event_id"]] = moves
            for account, change in moves:
                self.legs.append((at(e), account, change))
                if account.startswith("province:"):
                    self.province[account] += change
            if kind == "AdjustmentFundExtracted":
                self.province_after_extraction.append((scheme, e["fiscal_year"], self.province[adjustment(scheme)]))

    def balances(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for _, account, change in self.legs:
            out[account] += change
        return {a: b for a, b in out.items() if b}

    def lowest(self) -> dict[str, int]:
        """Each fund's lowest balance as of any instant (every movement of an instant counted)."""
        running: Counter[str] = Counter()
        lowest: dict[str, int] = {}
        for _, legs in groupby(sorted(self.legs, key=lambda leg: leg[0]), key=lambda leg: leg[0]):
            moved = set()
            for _, account, change in legs:
                running[account] += change
                moved.add(account)
            for account in moved:
                lowest[account] = min(lowest.get(account, 0), running[account])
        return lowest

    def count(self, kind: str) -> Counter[int]:
        """Accepted messages of a type by the fiscal year they name (or are dated in)."""
        out: Counter[int] = Counter()
        for (k, _, year), n in self.types.items():
            if k == kind and year is not None:
                out[year] += n
        return out

    def base(self, city: str, scheme: str, year: int) -> int:
        """X2/X3: the collected income of the year before `year` (the opening's figure for 2024)."""
        return self.opening_income[(city, scheme)] if year == 2024 else self.collected[(city, scheme, year - 1)]


@cache
def booked() -> tuple[list[tuple[Simulated, Any]], Any]:
    """The stream through the in-memory ledger in batches of 500: (message, outcome) pairs, ledger."""
    messages = stream()
    ledger = new_ledger(POLICY)
    outcomes = []
    for start in range(0, len(messages), 500):
        outcomes += feed(ledger, *(m.value for m in messages[start : start + 500]))
    return list(zip(messages, outcomes, strict=True)), ledger


def test_the_ledger_gives_every_message_the_fate_the_simulator_expects() -> None:
    pairs, ledger = booked()
    wrong = [
        (m.expected, o.status, o.reason, o.detail, m.value[:300])
        for m, o in pairs
        if (o.status, o.reason) != (m.expected.status, m.expected.reason)
    ]
    assert not wrong, wrong[:5]
    expected = Counter(m.expected.fate for m, _ in pairs)
    assert expected["duplicate"] > 0
    for reason in (
        "insufficient_funds", "over_budget", "extraction_cap_exceeded", "period_closed", "unknown_city",
        "invalid_schema", "invalid_json", "earmark_violation", "event_id_conflict", "recovery_exceeds_claim",
        "reversal_before_original", "allocation_exceeds_share", "phase_not_active", "fiscal_year_mismatch",
    ):
        assert expected[f"rejected:{reason}"] > 0, reason
    kinds = Counter(m.expected.kind for m, _ in pairs)
    assert set(kinds) == {"valid", "late", "duplicate", "invalid", "rule"}
    assert kinds["valid"] > 0.95 * EVENTS
    assert trial_balance(ledger).total_fen == 0


def test_every_fund_holds_what_the_stream_says_and_none_is_ever_negative() -> None:
    pairs, ledger = booked()
    book = StreamBook(m for m, _ in pairs)
    funds = {a: b for a, b in trial_balance(ledger).balances_fen.items() if b and a.split(":")[0] in ("city", "province")}
    assert funds == {a: b for a, b in book.balances().items() if a.split(":")[0] in ("city", "province")}
    assert len(funds) == 2 * len(CITIES) + len(CITIES) + 2  # pooling funds, personal accounts, adjustment funds
    # E1 in business time: debits are covered by money dated before them
    assert {a: low for a, low in book.lowest().items() if low < 0} == {}


def test_the_year_shapes_of_provincial_pooling_are_in_the_stream() -> None:
    book = StreamBook(stream())
    assert book.count("FiscalYearClosed") == {2024: 34, 2025: 34, 2026: 34}  # 16 x 2 city funds + 2
    assert book.count("BudgetApproved") == {2024: 32, 2025: 32, 2026: 32}
    assert book.count("BudgetAdjusted").total() >= 1
    # the adjustment funds work from the phase on (Anhui: residents 2025, employees 2026), X1
    extractions = {(s, y) for (kind, s, y), n in book.types.items() if kind == "AdjustmentFundExtracted" and n}
    assert extractions == {("resident", 2025), ("resident", 2026), ("employee", 2026)}
    assert book.count("AdjustmentFundAllocated").total() >= 1
    for flow in ("employer", "individual", "medical_assistance", "personal_account_claim", "out_of_city_claim"):
        assert book.flows[flow] > 0, flow
    for kind in ("RecoveryReceived", "EventReversed", "CriticalIllnessPremiumPaid", "InterestCredited", "SubsidyDisbursed"):
        assert set(book.count(kind)) == {2024, 2025, 2026}, kind


def test_extractions_stay_within_the_cap_of_each_city_and_the_ceiling_of_the_adjustment_fund() -> None:
    book = StreamBook(stream())
    rate_bp, pause_bp = POLICY.extraction_rate_bp, POLICY.pause_ratio_bp
    assert book.extracted
    for (city, scheme, year), extracted in book.extracted.items():
        cap = book.base(city, scheme, year) * rate_bp // 10_000  # X2
        assert 0 < extracted <= cap, (city, scheme, year, extracted, cap)
        assert extracted >= cap // 2, (city, scheme, year)  # the instalments take most of it
    for scheme, year, balance in book.province_after_extraction:  # X4, after every extraction
        ceiling = sum(book.base(city, scheme, year) for city in CITIES) * pause_bp // 10_000
        assert balance <= ceiling, (scheme, year, balance, ceiling)


# ------------------------------------------------------------------------------ (4) the command


def test_simulate_writes_the_stream_and_its_expectations_and_explains_itself(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"POOLING_POLICY_FILE": None, "POOLING_LOG_LEVEL": "error"}
    shown = runner.invoke(app, ["simulate", "--help"], env=env)
    assert shown.exit_code == 0, shown.output
    for option in ("--years", "--events", "--output", "--seed", "--bad-share", "--publish", "--expectations"):
        assert option in shown.output, option

    lines, expectations = tmp_path / "province.jsonl", tmp_path / "expected.jsonl"
    args = ["simulate", "--years", "2024-2026", "--events", "4000", "-o", str(lines), "--seed", "5"]
    result = runner.invoke(app, [*args, "--expectations", str(expectations)], env=env)
    assert result.exit_code == 0, result.output
    sim = ProvinceSimulation(POLICY, events=4000, seed=5)
    assert lines.read_bytes() == jsonl(sim)
    assert [json.loads(line) for line in expectations.read_text().splitlines()] == [
        {"event_id": m.event_id, **m.expected.as_json()} for m in sim
    ]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["written"] == 4000 and summary["by_fate"] == dict(sorted(sim.totals.by_fate.items()))

    clean = runner.invoke(app, [*args, "--bad-share", "0", "--expectations", str(expectations)], env=env)
    assert clean.exit_code == 0, clean.output
    assert {line for line in expectations.read_text().splitlines()} and all(
        json.loads(line)["status"] == "accepted" and not json.loads(line)["late"]
        for line in expectations.read_text().splitlines()
    )

    for bad in (["simulate", "--events", "4000"], [*args, "--publish"], [*args, "--bad-share", "lots"]):
        refused = runner.invoke(app, bad, env=env)
        assert refused.exit_code == 2, (bad, refused.output)


@pytest.mark.integration
def test_simulate_publishes_to_the_events_topic_keyed_by_city(kafka_bootstrap: str, topics: dict[str, str]) -> None:
    env = {
        "POOLING_POLICY_FILE": None, "POOLING_LOG_LEVEL": "error",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "POOLING_EVENTS_TOPIC": topics["events"],
    }
    result = CliRunner().invoke(app, ["simulate", "--events", "3000", "--publish", "--bad-share", "0", "--seed", "9"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["published"] == 3000
    sent = {m.event_id: index for index, m in enumerate(ProvinceSimulation(POLICY, events=3000, seed=9, bad_share=BadShare(0, 0, 0, 0)))}
    received = read_topic(kafka_bootstrap, topics["events"])
    assert sorted(m.value["event_id"] for m in received) == sorted(sent)
    for partition in {m.partition for m in received}:  # a city's messages keep their order
        order = [sent[m.value["event_id"]] for m in received if m.partition == partition]
        assert order == sorted(order)
