"""Issue 10's must-show 1 and 2 through Kafka and PostgreSQL: a simulated 2024-2026 province
(`pooling_ledger/province.py`, 15,000 messages with a 2 % bad share) published to the events
topic of the embedded broker (4 partitions), consumed into the PostgreSQL ledger by the consumer
of `pooling-ledger consume` (Ingestor, Relay and the `consume` loop, as `run_pipeline` wires
them), then projected and read back as the annual fund statements.

(1) Every line of every statement of 2024, 2025 and 2026 (each city's pooling fund and personal
accounts, the adjustment funds, the consolidated province) is the sum of the journal's transfers
of its categories (`pooling-ledger export journal`), computed here; each closing balance is the
next year's opening line; the consolidated statements' extractions and allocations cancel (X6).

(2) Every message meets the fate the simulator expects, as the pipeline decided it and as the
event store's receipts record it (by Kafka position; `Ledger.receipt(event_id)`, the semantics
of `GET /v1/events/{id}`, for every bad message); the trial balance is zero; and X2 and X4 hold
in every year, computed here from the messages the ledger accepted, in the order it decided them.

How the stream is published. Kafka orders a partition, not a topic: the key is the city, so every
event of a city fund is decided in the simulator's order (docs/scaling.md, "What ordering and
exactly-once rely on"). Two things are not keyed by one city:

- the provincial adjustment funds, which every city's extractions and allocations move and whose
  year close fixes the province's income (X4). As docs/scaling.md says upstream does, the stream
  is published in phases: each extraction instalment, each December's allocations and each
  province close is a phase of its own, published once everything before it is decided, and the
  next phase once it is;
- `EventReversed`, which names no city: the simulator keys it by the city of the event it
  reverses (its original's key), so a reversal is decided after its original and in its fund's
  order, as any producer of a city's events would send it (`keyed` checks it).

Both are needed (measured on 12,000 messages, seed 10): with reversals keyed by the province, as
the simulator first did, 41 messages met another fate
(reversals decided before their original, `unknown_original`, or after their fund's year close,
`period_closed`, and claims and rule-breakers whose fund they changed); in one phase, 49
(extractions after the adjustment fund's close, allocations before the extractions funding them).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from kafka import KafkaProducer

from consumers.ingest import Ingestor
from consumers.relay import RECEIPT_TOPICS, Relay
from consumers.runner import consume
from consumers.topics import read_topic
from ledger.aggregates import Receipt
from ledger.application import Outcome
from ledger.audit import FUND_EVENT_TOPICS, TrialBalance, fold
from ledger.policy import load_packaged_policy
from pooling_ledger.embedded import create_database, ensure_topics
from pooling_ledger.province import BadShare, ProvinceSimulation, Simulated
from projections.projector import Projector
from projections.statement import read_statement
from storage import open_ledger
from tests.statement_model import effects, expected_lines

pytestmark = pytest.mark.integration

POLICY = load_packaged_policy()
CITIES = list(POLICY.cities)
SCHEMES = ("employee", "resident")
YEARS = (2024, 2025, 2026)
CST = timezone(timedelta(hours=8))
EVENTS, SEED = 15_000, 10
#: 0.7 % re-delivered duplicates, 0.3 % invalid, 0.7 % rule-breaking, 0.3 % late.
SHARES = BadShare.parse("0.02")
PARTITIONS = 4  # as the `topics` fixture makes them
BATCH_SIZE_MAX = 500
POLL_TIMEOUT_MS = 200
PHASE_TIMEOUT_S = 120
#: The phases of the adjustment funds (Anhui: residents from 2025, employees from 2026; X1).
EXTRACTING = {("resident", 2025), ("resident", 2026), ("employee", 2026)}
MONEY_FIELD = {
    "OpeningBalanceRecorded": "balance_fen", "ContributionReceived": "amount_fen", "SubsidyDisbursed": "amount_fen",
    "InterestCredited": "amount_fen", "ClaimPaid": "amount_fen", "CriticalIllnessPremiumPaid": "amount_fen",
    "RecoveryReceived": "amount_fen", "AdjustmentFundExtracted": "amount_fen", "AdjustmentFundAllocated": "amount_fen",
}

Position = tuple[int, int]  # (partition, offset) on the events topic
Fate = tuple[str, str | None]  # (status, reason)


# -- the stream, keyed and in phases ----------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One simulated message as published: its Kafka key, and its JSON object (None when the
    message is not JSON)."""

    message: Simulated
    key: bytes
    event: dict[str, Any] | None

    @property
    def type(self) -> str | None:
        return None if self.event is None else self.event.get("type")


def parsed(value: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(value)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def keyed(messages: Iterable[Simulated]) -> list[Sent]:
    """The simulator's messages with their keys; a reversal's must be its original's (see above)."""
    key_of: dict[str, bytes] = {}
    out = []
    for m in messages:
        event = parsed(m.value)
        key = m.key
        if event is not None and event.get("type") == "EventReversed":
            original = str(event.get("original_event_id"))
            assert original not in key_of or key_of[original] == key, (m.event_id, "keyed as its original")
        if m.event_id is not None:
            key_of.setdefault(m.event_id, key)
        out.append(Sent(m, key, event))
    return out


def moves_adjustment_fund(sent: Sent) -> bool:
    """A valid message decided on a provincial adjustment fund that other partitions' messages
    also move or read: an extraction (X4), an allocation (E1), the province's year close (the
    income X4 reads next year). A rule-breaking extraction or allocation is refused on its city's
    own figures (X1, P1, X2, X5 come before X4 and E1) and stays in its city's order."""
    if sent.event is None or sent.message.expected.kind != "valid":
        return False
    if sent.type in ("AdjustmentFundExtracted", "AdjustmentFundAllocated"):
        return True
    return sent.type == "FiscalYearClosed" and not sent.event.get("city")


def phases(stream: list[Sent]) -> list[list[Sent]]:
    """Runs of messages that move the adjustment funds, and the runs between them."""
    out: list[list[Sent]] = []
    for sent in stream:
        shared = moves_adjustment_fund(sent)
        if not out or moves_adjustment_fund(out[-1][-1]) != shared:
            out.append([])
        out[-1].append(sent)
    return out


# -- the pipeline ---------------------------------------------------------------------------------


class Pipeline:
    """The consumer `pooling-ledger consume` runs (an Ingestor over every partition, the Relay, the
    `consume` loop), kept across phases: each phase is consumed until every message published so
    far is decided. Every outcome is kept, in the order the ledger decided them."""

    def __init__(self, database_url: str, bootstrap: str, topics: dict[str, str]) -> None:
        self.ledger = open_ledger(database_url)
        self.ingestor = Ingestor(self.ledger, bootstrap, topics["events"], "test-consumer", BATCH_SIZE_MAX,
                                 POLL_TIMEOUT_MS)
        self.relay = Relay(self.ledger, bootstrap, topics["ledger"], topics["rejections"])
        self.outcomes: list[Outcome] = []
        self.batches = 0
        poll_once = self.ingestor.poll_once

        def recorded() -> list[Outcome]:
            outcomes = poll_once()
            self.outcomes += outcomes
            return outcomes

        self.ingestor.poll_once = recorded  # type: ignore[method-assign]

    def consume_until(self, decided: int) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        stats = consume(
            self.ingestor, self.relay,
            should_stop=lambda: len(self.outcomes) >= decided or time.monotonic() > deadline,
        )
        self.batches += stats.batches
        assert len(self.outcomes) == decided, (len(self.outcomes), decided)

    def close(self) -> None:
        self.ingestor.close()
        self.relay.close()


def publish(producer: KafkaProducer, topic: str, phase: list[Sent]) -> list[Position]:
    futures = [producer.send(topic, key=sent.key, value=sent.message.value) for sent in phase]
    producer.flush()
    return [(meta.partition, meta.offset) for meta in (future.get(timeout=30) for future in futures)]


@dataclass
class Run:
    database_url: str
    bootstrap: str
    topics: dict[str, str]
    stream: list[Sent]
    phases: int
    #: the Kafka position of every message, in the stream's order
    positions: list[Position]
    #: the pipeline's outcomes, in the order the ledger decided them
    outcomes: list[Outcome]
    #: the event store's receipts (accepted, rejected, conflicting deliveries) by source position
    receipts: dict[Position, Fate]
    #: `Ledger.receipt(event_id)` of every message that is not a plain valid one
    receipt_of: dict[str, Fate | None]
    trial: TrialBalance
    statements: dict[int, dict[str, Any]]
    #: `pooling-ledger export journal` as CSV rows
    journal: list[dict[str, str]]
    seconds: dict[str, float]

    def index(self) -> dict[Position, int]:
        return {position: i for i, position in enumerate(self.positions)}

    def decided(self) -> list[tuple[Sent, Outcome]]:
        """Every message with its outcome, in the order the ledger decided them."""
        index = self.index()
        return [(self.stream[index[position(o)]], o) for o in self.outcomes]


def position(outcome: Outcome) -> Position:
    assert outcome.source is not None
    return outcome.source["partition"], outcome.source["offset"]


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", *args],
        env={**os.environ, "POOLING_LOG_LEVEL": "error", "DATABASE_URL": database_url},
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-4000:])
    return result


@pytest.fixture(scope="module")
def run(pg_server_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    seconds: dict[str, float] = {}
    started = time.monotonic()
    database_url = create_database(pg_server_url, f"test_{uuid.uuid4().hex[:12]}")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topics = {name: f"{prefix}.pooling.{name}.v1" for name in ("events", "ledger", "rejections")}
    ensure_topics(kafka_bootstrap, {topic: PARTITIONS for topic in topics.values()})
    stream = keyed(ProvinceSimulation(POLICY, events=EVENTS, seed=SEED, bad_share=SHARES))
    steps = phases(stream)
    seconds["simulate"] = time.monotonic() - started

    pipeline = Pipeline(database_url, kafka_bootstrap, topics)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    positions: list[Position] = []
    try:
        for step in steps:
            positions += publish(producer, topics["events"], step)
            pipeline.consume_until(len(positions))
    finally:
        producer.close()
        pipeline.close()
    seconds["publish_and_consume"] = time.monotonic() - started - sum(seconds.values())

    ledger = pipeline.ledger
    try:
        receipts: dict[Position, Fate] = {}
        for _, e in ledger.notifications(RECEIPT_TOPICS):
            assert isinstance(e, Receipt.Accepted | Receipt.Rejected | Receipt.ConflictingDeliveryRejected), e
            assert e.source is not None and e.source["topic"] == topics["events"], e.source
            at = (e.source["partition"], e.source["offset"])
            assert at not in receipts, at  # one fate per delivery
            receipts[at] = ("accepted", None) if isinstance(e, Receipt.Accepted) else ("rejected", e.reason)
        receipt_of: dict[str, Fate | None] = {}
        for sent in stream:
            event_id = sent.message.event_id
            if event_id is not None and sent.message.expected.kind != "valid" and event_id not in receipt_of:
                found = ledger.receipt(event_id)
                receipt_of[event_id] = None if found is None else (found.status, found.reason)
        trial = fold(e for _, e in ledger.notifications(FUND_EVENT_TOPICS))
        with Projector(ledger, database_url, page_size=5000, rebuild=True) as projector:
            projector.run_until_caught_up()
    finally:
        ledger.close()
    with psycopg.connect(database_url) as conn:
        statements = {year: read_statement(conn, year) for year in YEARS}
    seconds["receipts_and_statements"] = time.monotonic() - started - sum(seconds.values())

    journal_file = tmp_path_factory.mktemp("province-journal") / "journal.csv"
    cli(database_url, "export", "journal", "-o", str(journal_file))
    with journal_file.open(encoding="utf-8") as f:
        journal = list(csv.DictReader(f))
    seconds["export_journal"] = time.monotonic() - started - sum(seconds.values())
    yield Run(database_url, kafka_bootstrap, topics, stream, len(steps), positions, pipeline.outcomes, receipts, receipt_of, trial,
              statements, journal, seconds)


# -- (2) fates -----------------------------------------------------------------------------------------


def test_every_message_meets_its_expected_fate_through_kafka_and_the_receipts(run: Run) -> None:
    assert len(run.stream) == len(run.positions) == len(run.outcomes) == EVENTS
    assert len(set(run.positions)) == EVENTS  # every message has its own place on the topic
    assert run.phases >= 2 * len(YEARS)  # the province's closes, instalments, allocations split it
    decided = run.decided()
    assert len({id(sent) for sent, _ in decided}) == EVENTS  # each message decided exactly once

    # the pipeline's own outcome of every message
    wrong = [
        (sent.message.expected.fate, o.status, o.reason, o.detail, sent.message.value[:200])
        for sent, o in decided
        if (o.status, o.reason) != (sent.message.expected.status, sent.message.expected.reason)
    ]
    assert not wrong, (len(wrong), wrong[:5])

    # what the event store recorded: a receipt at each delivery's position, none for a duplicate
    duplicates = 0
    for sent, at in zip(run.stream, run.positions, strict=True):
        expected = sent.message.expected
        if expected.status == "duplicate":
            duplicates += 1
            assert at not in run.receipts, at
            assert run.receipt_of[sent.message.event_id or ""] == ("accepted", None)  # the first delivery's
        else:
            assert run.receipts.get(at) == (expected.status, expected.reason), (at, expected, sent.message.value[:200])
    assert len(run.receipts) == EVENTS - duplicates

    # GET /v1/events/{id}: a refused event is rejected with its reason; a reused id keeps its first fate
    for sent in run.stream:
        m = sent.message
        if m.event_id is None or m.expected.kind not in ("invalid", "rule"):
            continue
        if m.expected.reason == "event_id_conflict":
            assert run.receipt_of[m.event_id] == ("accepted", None), m.value[:200]
        else:
            assert run.receipt_of[m.event_id] == ("rejected", m.expected.reason), m.value[:200]

    # what the stream holds: every kind of message, and many of the rules broken
    kinds = Counter(sent.message.expected.kind for sent in run.stream)
    assert set(kinds) == {"valid", "late", "duplicate", "invalid", "rule"}, kinds
    reasons = Counter(sent.message.expected.reason for sent in run.stream if sent.message.expected.reason)
    assert {"invalid_json", "invalid_schema"} <= set(reasons) and len(reasons) >= 10, reasons
    assert kinds["valid"] > 0.95 * EVENTS

    # a city's messages, its reversals included, were on one partition, so decided in its order
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for sent, (partition, _) in zip(run.stream, run.positions, strict=True):
        partitions[sent.key].add(partition)
    assert all(len(p) == 1 for p in partitions.values()), partitions
    order: dict[bytes, list[int]] = defaultdict(list)
    index = run.index()
    for o in run.outcomes:
        order[run.stream[index[position(o)]].key].append(index[position(o)])
    assert all(indexes == sorted(indexes) for indexes in order.values())

    # the relay published every refusal once, with its reason
    refused = Counter((o.event_id, o.reason) for o in run.outcomes if o.status == "rejected")
    relayed = Counter((m.value["event_id"], m.value["reason"]) for m in read_topic(run.bootstrap, run.topics["rejections"]))
    assert relayed == refused


# -- (2) the trial balance, X2 and X4 --------------------------------------------------------------------


def fiscal_year(event: dict[str, Any]) -> int:
    return datetime.fromisoformat(event["occurred_at"]).astimezone(CST).year


@dataclass
class Bounds:
    """X2 and X4's figures, folded here from the accepted messages in the order they were decided."""

    collected: Counter[tuple[str, str, int]]  # pooling contributions by city, scheme, fiscal year
    extracted: Counter[tuple[str, str, int]]  # extractions by city, scheme, the fiscal year they name
    opening_income: dict[tuple[str, str], int]  # the openings' previous_year_income_fen
    after_extraction: list[tuple[str, int, int]]  # (scheme, fiscal year, adjustment fund's balance after)
    province: Counter[str]  # the adjustment funds' balances at the end

    def base(self, city: str, scheme: str, year: int) -> int:
        """The city's collected income of the year before `year` (the opening's for the first year)."""
        return self.opening_income[(city, scheme)] if year == YEARS[0] else self.collected[(city, scheme, year - 1)]


def bounds(accepted: Iterable[dict[str, Any]]) -> Bounds:
    share_bp = POLICY.personal_account_share_bp
    b = Bounds(Counter(), Counter(), {}, [], Counter())
    contribution: dict[str, tuple[tuple[str, str, int], int]] = {}
    extraction: dict[str, tuple[tuple[str, str, int], int]] = {}
    province_move: dict[str, tuple[str, int]] = {}
    for e in accepted:
        kind, city, scheme, fen = e["type"], e.get("city"), e.get("scheme"), e.get("amount_fen", 0)
        year = fiscal_year(e)
        if kind == "OpeningBalanceRecorded":
            if city:
                b.opening_income[(city, scheme)] = e["previous_year_income_fen"]
            else:
                b.province[scheme] += e["balance_fen"]
                province_move[e["event_id"]] = (scheme, e["balance_fen"])
        elif kind == "ContributionReceived":
            # E6: an employee's own contribution goes to the personal accounts (the policy's share of
            # it, all by default): not pooling income, so not an extraction base
            own = fen * share_bp // 10_000 if (scheme, e["payer_kind"]) == ("employee", "individual") else 0
            b.collected[(city, scheme, year)] += fen - own
            contribution[e["event_id"]] = ((city, scheme, year), fen - own)
        elif kind == "InterestCredited" and not city:
            b.province[scheme] += fen
            province_move[e["event_id"]] = (scheme, fen)
        elif kind == "AdjustmentFundExtracted":
            b.extracted[(city, scheme, e["fiscal_year"])] += fen
            extraction[e["event_id"]] = ((city, scheme, e["fiscal_year"]), fen)
            b.province[scheme] += fen
            province_move[e["event_id"]] = (scheme, fen)
            b.after_extraction.append((scheme, e["fiscal_year"], b.province[scheme]))
        elif kind == "AdjustmentFundAllocated":
            b.province[scheme] -= fen
            province_move[e["event_id"]] = (scheme, -fen)
        elif kind == "EventReversed":
            original = e["original_event_id"]
            if original in contribution and contribution[original][0][2] == year:  # a closed year's stays fixed
                key, pooling = contribution[original]
                b.collected[key] -= pooling
            if original in extraction:
                key, extracted = extraction[original]
                b.extracted[key] -= extracted
            if original in province_move:
                scheme_moved, change = province_move[original]
                b.province[scheme_moved] -= change
    return b


def test_the_trial_balance_is_zero_and_x2_and_x4_hold_in_every_year(run: Run) -> None:
    assert run.trial.total_fen == 0
    assert run.trial.transfer_count > 0
    accepted = [sent.event for sent, o in run.decided() if o.status == "accepted"]
    assert all(e is not None for e in accepted)
    b = bounds(e for e in accepted if e is not None)
    assert str(POLICY.extraction_base.value) == "contributions"  # what `bounds` counts as collected
    for scheme in SCHEMES:  # the fold saw every movement of the adjustment funds
        assert b.province[scheme] == run.trial.balances_fen.get(f"province:{scheme}:adjustment", 0), scheme

    rate_bp, pause_bp = POLICY.extraction_rate_bp, POLICY.pause_ratio_bp
    assert {(s, y) for (_, s, y), fen in b.extracted.items() if fen} == EXTRACTING
    for city in CITIES:
        for scheme in SCHEMES:
            for year in YEARS:  # X2
                cap = b.base(city, scheme, year) * rate_bp // 10_000
                assert 0 <= b.extracted[(city, scheme, year)] <= cap, (city, scheme, year, cap)
    checked: Counter[tuple[str, int]] = Counter()
    for scheme, year, balance in b.after_extraction:  # X4, after every extraction, as decided
        ceiling = sum(b.base(city, scheme, year) for city in CITIES) * pause_bp // 10_000
        assert 0 < balance <= ceiling, (scheme, year, balance, ceiling)
        checked[(scheme, year)] += 1
    assert set(checked) == EXTRACTING, checked


# -- (1) the statements, from the journal ------------------------------------------------------------------

def funds_of(statement: dict[str, Any]) -> set[str]:
    """The accounts a statement is about, named here from what it says it is."""
    city, scheme, fund = statement["city"], statement["scheme"], statement["fund"]
    if fund == "pooling":
        return {f"city:{city}:{scheme}:pooling"}
    if fund == "personal_accounts":
        return {f"city:{c}:employee:personal" for c in ([city] if city else CITIES)}
    if fund == "adjustment":
        return {f"province:{scheme}:adjustment"}
    assert fund == "consolidated" and city is None, statement["title"]
    return {f"city:{c}:{scheme}:pooling" for c in CITIES} | {f"province:{scheme}:adjustment"}


def figures(statement: dict[str, Any]) -> dict[str, int]:
    return {line["code"]: line["amount_fen"] for line in statement["lines"]}


def key(statement: dict[str, Any]) -> tuple[str, str | None, str, str]:
    return statement["scope"], statement["city"], statement["scheme"], statement["fund"]


def test_the_journal_holds_every_accepted_movement_and_nothing_else(run: Run) -> None:
    by_event: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in run.journal:
        by_event[row["event_id"]].append(row)
        assert int(row["amount_fen"]) >= 0 and int(row["fiscal_year"]) in YEARS, row
    accepted = {sent.message.event_id: sent.event for sent, o in run.decided() if o.status == "accepted"}
    assert set(by_event) <= set(accepted)
    for event_id, e in accepted.items():
        assert e is not None
        field = MONEY_FIELD.get(e["type"])
        rows = by_event.get(str(event_id), [])
        if field is not None:  # an employee's own contribution is split (E6): its transfers add up
            assert sum(int(r["amount_fen"]) for r in rows) == e[field], e
            assert all(r["type"] == e["type"] and r["reversal_of"] == "" for r in rows), e
        elif e["type"] == "EventReversed":
            original = by_event[e["original_event_id"]]
            assert [r["reversal_of"] for r in rows] == [e["original_event_id"]] * len(original) != [], e
            assert sum(int(r["amount_fen"]) for r in rows) == sum(int(r["amount_fen"]) for r in original)
        else:
            assert rows == [], e  # budgets and closes book nothing


def test_every_statement_line_is_the_journals_sum_and_each_closing_is_the_next_opening(run: Run) -> None:
    moved = effects(run.journal)
    for year, body in run.statements.items():
        assert (body["statement"], body["fiscal_year"], body["unit"]) == ("annual_fund_statement", year, "fen")
        assert body["projection_position"] is not None
        kinds = Counter(s["fund"] for s in body["statements"])
        assert kinds == {"pooling": 2 * len(CITIES), "personal_accounts": len(CITIES) + 1, "adjustment": 2,
                         "consolidated": 2}, kinds
        for statement in body["statements"]:
            funds = funds_of(statement)
            assert set(statement["accounts"]) == funds, key(statement)
            expected = expected_lines(moved, year, funds, statement["fund"] == "consolidated")
            got = figures(statement)
            assert {code: got.get(code) for code in expected} == expected, (year, key(statement))
            assert {code: fen for code, fen in got.items() if fen and code not in expected} == {}, key(statement)
            assert statement["checks"] and all(statement["checks"].values()), (year, key(statement))

    # each closing balance is the next year's opening line (nothing is recorded as an opening after 2024)
    for year in YEARS[:-1]:
        closing = {key(s): figures(s)["closing_balance"] for s in run.statements[year]["statements"]}
        opening = {key(s): figures(s)["opening_balance"] for s in run.statements[year + 1]["statements"]}
        assert closing == opening, year
        assert all(figures(s)["opening_balance.recorded"] == 0 for s in run.statements[year + 1]["statements"])
    # ... and the last closing is each fund's balance in the trial balance
    last = run.statements[YEARS[-1]]["statements"]
    for statement in last:
        if statement["scope"] == "city" or statement["fund"] == "adjustment":  # one account each
            (account,) = funds_of(statement)
            assert figures(statement)["closing_balance"] == run.trial.balances_fen.get(account, 0), account
    # a province that moves: income, claims, interest, recoveries, openings in every city's statements
    for year in YEARS:
        for statement in run.statements[year]["statements"]:
            if statement["fund"] == "pooling":
                got = figures(statement)
                assert got["income.contributions"] > 0 and got["expenditure.benefits"] > 0, (year, key(statement))


def test_the_consolidated_province_cancels_extractions_and_allocations(run: Run) -> None:
    """X6: what the cities remit the adjustment fund receives and what it allocates the cities
    receive, both ways in the consolidated statement, netting to zero, out of its totals."""
    transferred: Counter[tuple[str, int, str]] = Counter()
    for row in run.journal:
        if row["category"] in ("extraction", "allocation"):
            adjustment = row["credit_account"] if row["category"] == "extraction" else row["debit_account"]
            assert adjustment.startswith("province:") and adjustment.endswith(":adjustment"), row
            transferred[(adjustment.split(":")[1], int(row["fiscal_year"]), row["category"])] += int(row["amount_fen"])
    assert {(s, y) for (s, y, c), fen in transferred.items() if c == "extraction" and fen} == EXTRACTING
    assert sum(fen for (_, _, c), fen in transferred.items() if c == "allocation") > 0
    for year in YEARS:
        body = run.statements[year]
        for scheme in SCHEMES:
            (consolidated,) = [s for s in body["statements"] if s["fund"] == "consolidated" and s["scheme"] == scheme]
            (adjustment,) = [s for s in body["statements"] if s["fund"] == "adjustment" and s["scheme"] == scheme]
            cities = [figures(s) for s in body["statements"] if s["fund"] == "pooling" and s["scheme"] == scheme]
            got = figures(consolidated)
            extracted, allocated = transferred[(scheme, year, "extraction")], transferred[(scheme, year, "allocation")]
            assert got["extraction.remitted"] == got["extraction.received"] == extracted, (scheme, year)
            assert got["allocation.paid"] == got["allocation.received"] == allocated, (scheme, year)
            assert got["x6.extraction_net"] == got["x6.allocation_net"] == 0
            assert consolidated["checks"]["internal_transfers_cancel"] is True
            assert sum(c["extraction.remitted"] for c in cities) == figures(adjustment)["extraction.received"] == extracted
            assert sum(c["allocation.received"] for c in cities) == figures(adjustment)["allocation.paid"] == allocated
            assert got["surplus"] == sum(c["surplus"] for c in cities) + figures(adjustment)["surplus"]
            assert got["closing_balance"] == sum(c["closing_balance"] for c in cities) + figures(adjustment)[
                "closing_balance"]
            assert not any("personal" in account for account in consolidated["accounts"])
