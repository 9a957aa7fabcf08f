"""Hostile input: no message can stop a partition, crash the ledger or swell an outcome.

Each poison message of the red-team campaign (issue 7) goes into a partition ahead of 100
valid events, through the real broker and PostgreSQL; it must end as a rejection with its
code, on `pooling.rejections.v1` and in the ledger, and every event behind it booked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any

import psycopg
import pytest
from eventsourcing.utils import get_topic
from kafka import KafkaProducer
from structlog.testing import capture_logs

from consumers.booking import record_batch
from consumers.inbound import Inbound, SourcePosition
from consumers.relay import message_for
from ledger.aggregates import Fund, Receipt
from ledger.application import Ledger
from pooling_ledger.replay import replay
from pooling_ledger.verify import verify
from projections.projector import Projector
from schemas import InvalidJson, InvalidSchema, parse_event
from storage import open_ledger, postgres_env
from tests.pipeline_support import read_all, run_pipeline
from tests.upstream import balance, claim, contribution, new_ledger, statuses, trial_balance

HEFEI = "340100"
FUND = "city:340100:resident:pooling"
VALID_BEHIND = 100
AMOUNT_FEN = 1_234  # each valid event behind a poison: 100 of them make 123,400 fen
MIB = 1024 * 1024


def _text(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()  # escapes NUL and surrogates as \u0000 and \ud800


def _contribution(**fields: Any) -> dict[str, Any]:
    return {**contribution(HEFEI, "resident", AMOUNT_FEN), **fields}


def _duplicate_key() -> bytes:
    text = _text(_contribution()).decode()
    return text.replace('"amount_fen": 1234', '"amount_fen": "x", "amount_fen": 7').encode()


def _one_mib() -> bytes:
    head = b'{"type": "ContributionReceived", "note": "'
    return head + b"a" * (MIB - len(head) - 2) + b'"}'


POISONS: dict[str, tuple[bytes | None, str]] = {
    "nested-10000-deep": (b"[" * 10_000 + b"]" * 10_000, "invalid_json"),
    "tombstone": (None, "invalid_json"),
    "occurred-at-9999": (_text(_contribution(occurred_at="9999-12-31T23:59:59-14:00")), "invalid_schema"),
    "occurred-at-0001": (_text(_contribution(occurred_at="0001-01-01T00:00:00+14:00")), "invalid_schema"),
    "lone-surrogate": (_text(_contribution(source="tax\ud800")), "invalid_json"),
    "nul-in-event-id": (_text(_contribution(event_id="0b9c6f2e-3d1a-4c56-9e7f-1a2b3c4d5e6f\x00")), "invalid_schema"),
    "duplicate-key": (_duplicate_key(), "invalid_json"),
    "amount-2-pow-63": (_text(_contribution(amount_fen=2**63)), "invalid_schema"),
    "amount-10-pow-30": (_text(_contribution(amount_fen=10**30)), "invalid_schema"),
    "one-mib": (_one_mib(), "message_too_large"),
    "empty": (b"", "invalid_json"),
}


# ------------------------------------------------------------------ parsing, pure


@pytest.mark.parametrize("name", sorted(POISONS))
def test_each_poison_parses_to_its_rejection_and_never_raises_anything_else(name: str) -> None:
    value, reason = POISONS[name]
    inbound = Inbound.parse(value, SourcePosition("t", 0, 0))
    assert inbound.event is None
    assert inbound.error is not None
    expected = {"invalid_json": "InvalidJson", "invalid_schema": "InvalidSchema",
                "message_too_large": "MessageTooLarge"}[reason]
    assert type(inbound.error).__name__ == expected
    assert len(inbound.error.detail) <= 4000


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "invalid JSON: nested deeper than 32 levels"),
        (b"[" * 33 + b"]" * 33, "invalid JSON: nested deeper than 32 levels"),
        (b'{"amount_fen":"x","amount_fen":7}', 'invalid JSON: duplicate key "amount_fen" in one object'),
        # flat objects are parsed by orjson first: a key repeated behind spacing is still seen
        (b'{"amount_fen" :"x","amount_fen":7}', 'invalid JSON: duplicate key "amount_fen" in one object'),
        (b'{"amount_fen"\n:"x",\t"amount_fen"\r :7}', 'invalid JSON: duplicate key "amount_fen" in one object'),
        (b'{"a": "\\ud800"}', "invalid JSON: a: not valid Unicode (a lone surrogate such as \\ud800)"),
        (b'{"a": NaN}', "invalid JSON: NaN is not JSON"),
        (b'{"a": 1e400}', "invalid JSON: the number 1e400 is out of range"),
        (b'{"a": ' + b"9" * 101 + b"}", "invalid JSON: a number of 101 characters (at most 100)"),
        (b"", "invalid JSON: the message is empty; expected one JSON object"),
    ],
    ids=["deep", "33-deep", "duplicate", "duplicate-spaced", "duplicate-whitespace", "surrogate", "nan",
         "inf", "long-number", "empty"],
)
def test_json_outside_the_limits_is_invalid_json(raw: bytes, detail: str) -> None:
    with pytest.raises(InvalidJson) as info:
        parse_event(raw)
    assert info.value.detail == detail


def test_nesting_of_32_levels_is_still_json() -> None:
    with pytest.raises(InvalidSchema) as info:  # well-formed, just not an event
        parse_event(b"[" * 32 + b"]" * 32)
    assert info.value.detail == "message is not a JSON object"


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"event_id": "0b9c6f2e-3d1a-4c56-9e7f-1a2b3c4d5e6f\x00"}, "event_id: text must not contain NUL (\\u0000)"),
        ({"source": "tax\x00anhui"}, "source: text must not contain NUL (\\u0000)"),
        ({"source": "x" * 10_001}, "source: a text of 10,001 characters (at most 10,000)"),
    ],
    ids=["nul-event-id", "nul-source", "long-text"],
)
def test_text_the_ledger_cannot_keep_is_invalid_schema(fields: dict[str, Any], detail: str) -> None:
    with pytest.raises(InvalidSchema) as info:
        parse_event(_text(_contribution(**fields)))
    assert info.value.detail == detail
    assert info.value.event_id is None


@pytest.mark.parametrize(
    "occurred_at",
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "1999-12-31T23:59:59+08:00",
     "2101-01-01T00:00:00+08:00"],
)
def test_occurred_at_outside_2000_to_2100_is_invalid_schema(occurred_at: str) -> None:
    with pytest.raises(InvalidSchema) as info:
        parse_event(_text(_contribution(occurred_at=occurred_at)))
    assert info.value.detail.startswith("occurred_at: must lie between 2000-01-01 and 2100-12-31")


@pytest.mark.parametrize("occurred_at", ["2000-01-01T00:00:00+14:00", "2100-12-31T23:59:59-14:00"])
def test_occurred_at_at_the_ends_of_the_range_is_accepted(occurred_at: str) -> None:
    assert parse_event(_text(_contribution(occurred_at=occurred_at))).occurred_at.year in (2000, 2100)


@pytest.mark.parametrize("amount_fen", [10**15 + 1, 2**63, 10**30])
def test_amount_above_max_fen_is_invalid_schema(amount_fen: int) -> None:
    with pytest.raises(InvalidSchema) as info:
        parse_event(_text(_contribution(amount_fen=amount_fen)))
    assert info.value.detail == "amount_fen: Input should be less than or equal to 1000000000000000"


def test_amount_of_exactly_max_fen_is_accepted() -> None:
    assert parse_event(_text(_contribution(amount_fen=10**15))).amount_fen == 10**15  # type: ignore[union-attr]


def test_a_detail_names_at_most_ten_problems() -> None:
    message = {**_contribution(), **{f"unknown_{i}": i for i in range(500)}}
    with pytest.raises(InvalidSchema) as info:
        parse_event(_text(message))
    assert info.value.detail.endswith("; and 490 more")
    assert info.value.detail.count("Extra inputs are not permitted") == 10


def test_message_above_the_size_limit_is_not_parsed() -> None:
    above = Inbound.parse(b"{" + b" " * 2047 + b"}", size_max_bytes=2048)  # 2,049 bytes
    assert type(above.error).__name__ == "MessageTooLarge"
    assert above.error is not None
    assert above.error.detail.startswith("the message is 2,049 bytes, above the limit of 2,048 bytes")
    at_limit = Inbound.parse(b"{" + b" " * 2046 + b"}", size_max_bytes=2048)  # parsed: not an event
    assert type(at_limit.error).__name__ == "InvalidSchema"


# ------------------------------------------------------------- ledger, pure


def test_a_fund_balance_never_passes_max_fen() -> None:
    ledger = new_ledger()
    messages = [contribution(HEFEI, "resident", 10**15), contribution(HEFEI, "resident", 1),
                claim(HEFEI, "resident", 5)]
    outcomes = record_batch(ledger, [Inbound.parse(_text(m)) for m in messages])
    assert statuses(outcomes) == [("accepted", None), ("rejected", "amount_out_of_range"), ("accepted", None)]
    assert outcomes[1].detail == (
        "1 fen would take city:340100:resident:pooling its balance to 1000000000000001 fen, "
        "above the ledger's bound of 1000000000000000 fen"
    )
    assert balance(ledger, FUND) == 999_999_999_999_995


def test_a_yearly_total_never_passes_max_fen_even_when_the_balance_would_not() -> None:
    ledger = new_ledger()
    messages = [contribution(HEFEI, "resident", 10**15), claim(HEFEI, "resident", 10**15),
                contribution(HEFEI, "resident", 1)]
    outcomes = record_batch(ledger, [Inbound.parse(_text(m)) for m in messages])
    assert statuses(outcomes) == [("accepted", None), ("accepted", None), ("rejected", "amount_out_of_range")]
    assert outcomes[2].detail == (
        "1 fen would take city:340100:resident:pooling its contribution.individual total of 2025 "
        "to 1000000000000001 fen, above the ledger's bound of 1000000000000000 fen"
    )


class _BuggyLedger(Ledger):
    """A ledger whose claim decision books, then fails: a bug in the middle of a decision."""

    name = "Ledger"  # the same event store as the ledger's (eventsourcing names it after the class)
    fail = True

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env=env or {"PERSISTENCE_MODULE": "eventsourcing.popo"})
        correct = self.decisions["ClaimPaid"]

        def claim_then_fail(event: Any, terms: Any, state: Any) -> Any:
            transfer = correct(event, terms, state)  # the fund in the working set is debited
            if self.fail:
                raise KeyError("hospital_level of a bug")
            return transfer

        self.decisions["ClaimPaid"] = claim_then_fail


def test_an_exception_while_deciding_is_unprocessable_nothing_half_booked_and_the_next_booked() -> None:
    ledger = _BuggyLedger()
    money, buggy, after = (contribution(HEFEI, "resident", 100_000), claim(HEFEI, "resident", 40_000),
                           contribution(HEFEI, "resident", 5_000))
    with capture_logs() as logs:
        outcomes = record_batch(
            ledger, [Inbound.parse(_text(m), SourcePosition("t", 0, i)) for i, m in enumerate((money, buggy, after))]
        )
    assert statuses(outcomes) == [("accepted", None), ("rejected", "unprocessable"), ("accepted", None)]
    assert outcomes[1].detail == "deciding the message failed: KeyError: 'hospital_level of a bug'"
    assert outcomes[1].event_id == buggy["event_id"]
    assert balance(ledger, FUND) == 105_000  # the claim's half-made debit was not saved
    assert trial_balance(ledger).transfer_count == 2
    assert trial_balance(ledger).total_fen == 0
    errors = [e for e in logs if e["event"] == "event_unprocessable"]
    assert len(errors) == 1
    assert errors[0]["log_level"] == "error"
    assert errors[0]["event_id"] == buggy["event_id"]
    assert errors[0]["reason"] == "unprocessable"

    # The same delivery again (a re-read of the partition) is recognised, not recorded twice.
    again = record_batch(ledger, [Inbound.parse(_text(buggy), SourcePosition("t", 0, 1))])
    assert statuses(again) == [("duplicate", None)]

    # The bug fixed, the operator publishes the same message again: it is decided afresh.
    ledger.fail = False
    fixed = record_batch(ledger, [Inbound.parse(_text(buggy), SourcePosition("t", 0, 3))])
    assert statuses(fixed) == [("accepted", None)]
    assert balance(ledger, FUND) == 65_000
    receipt = ledger.receipt(buggy["event_id"])
    assert receipt is not None and receipt.status == "accepted"


def test_outcome_of_any_rejection_is_bounded() -> None:
    ledger = new_ledger()
    # An operator may raise POOLING_MESSAGE_SIZE_MAX: a JSON payload above 256 KiB is then kept
    # by the receipt, but its outcome still carries only an excerpt.
    big_object = {**_contribution(), **{f"k{i}": "y" * 9_000 for i in range(60)}}
    messages: list[bytes | None] = [_one_mib(), _text(big_object), b"\xff" * 150_000, None]
    record_batch(
        ledger, [Inbound.parse(m, SourcePosition("t", 0, i), size_max_bytes=MIB - 1) for i, m in enumerate(messages)]
    )
    values = [message_for(e, n) for n, e in ledger.notifications([get_topic(Receipt.Rejected)])]
    sizes = [len(json.dumps(v[2]).encode()) for v in values if v is not None]
    assert len(sizes) == 4
    assert max(sizes) < 300 * 1024
    encodings = [v[2]["payload_encoding"] for v in values if v is not None]
    assert encodings == ["base64-excerpt", "base64-excerpt", "base64", "none"]


# ------------------------------------------------------------ Kafka and PostgreSQL

pipeline = pytest.mark.integration


def _publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2 * MIB)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def _rejected_reasons_in_ledger(database_url: str) -> list[str]:
    ledger = open_ledger(database_url)
    try:
        return [e.reason for _, e in ledger.notifications([get_topic(Receipt.Rejected)])]
    finally:
        ledger.close()


@pipeline
@pytest.mark.parametrize("name", list(POISONS))
def test_poison_is_rejected_with_its_code_and_the_100_events_behind_it_are_booked(
    name: str, database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    value, reason = POISONS[name]
    valid = [_contribution() for _ in range(VALID_BEHIND)]
    _publish(kafka_bootstrap, topics["events"], [(b"340100", value)] + [(b"340100", _text(m)) for m in valid])

    ledger, stats = run_pipeline(database_url, kafka_bootstrap, topics)
    try:
        assert balance(ledger, FUND) == 123_400
    finally:
        ledger.close()
    assert stats.outcomes["accepted"] == 100
    assert stats.outcomes["rejected"] == 1

    rejections = [m for _, _, _, m in read_all(kafka_bootstrap, topics["rejections"])]
    assert [r["reason"] for r in rejections] == [reason]
    assert _rejected_reasons_in_ledger(database_url) == [reason]
    assert len(read_all(kafka_bootstrap, topics["ledger"])) == 100
    if name == "one-mib":
        (r,) = rejections
        assert r["payload_encoding"] == "base64-excerpt"
        assert base64.b64decode(r["payload"]) == _one_mib()[:1024]
        assert r["payload_size_bytes"] == 1_048_576
        assert r["payload_sha256"] == hashlib.sha256(_one_mib()).hexdigest()
        assert len(json.dumps(r)) < 4096
    if name == "tombstone":
        assert rejections[0]["payload_encoding"] == "none"


@pipeline
def test_replay_decides_empty_oversized_tombstone_and_unprocessable_messages_again(database_url: str) -> None:
    ledger = open_ledger(database_url)
    messages: list[bytes | None] = [
        _text(contribution(HEFEI, "resident", 100_000)), b"", None, _one_mib(), b"[" * 5_000,
        b"  ", _text(_contribution(amount_fen=2**63)), _text(claim(HEFEI, "resident", 30_000)),
    ]
    outcomes = record_batch(ledger, [Inbound.parse(m, SourcePosition("t", 0, i)) for i, m in enumerate(messages)])
    assert statuses(outcomes) == [
        ("accepted", None), ("rejected", "invalid_json"), ("rejected", "invalid_json"),
        ("rejected", "message_too_large"), ("rejected", "invalid_json"), ("rejected", "invalid_json"),
        ("rejected", "invalid_schema"), ("accepted", None),
    ]
    ledger.close()
    buggy = _BuggyLedger(postgres_env(database_url))  # the same store, a claim handler with a bug
    buggy_claim = claim(HEFEI, "resident", 1_000)
    assert statuses(record_batch(buggy, [Inbound.parse(_text(buggy_claim), SourcePosition("t", 0, 8))])) == [
        ("rejected", "unprocessable")
    ]
    buggy.close()

    recorded = open_ledger(database_url)
    try:
        result = replay(recorded)
        assert result.differences == []
        assert result.ok is True
        assert result.decisions == 8
        assert result.unprocessable == 1
        assert balance(recorded, FUND) == 70_000
    finally:
        recorded.close()


@pipeline
def test_verify_fails_when_the_projection_cannot_catch_up(database_url: str) -> None:
    ledger = open_ledger(database_url)
    record_batch(ledger, [Inbound.parse(_text(contribution(HEFEI, "resident", 100_000)), SourcePosition("t", 0, 0))])
    with Projector(ledger, database_url) as projector:
        projector.run_until_caught_up()
    assert verify(ledger, database_url).ok is True

    with psycopg.connect(database_url, autocommit=True) as conn:  # the read side breaks
        conn.execute(
            "CREATE FUNCTION refuse_posting() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'read table refuses the posting'; END;$$"
        )
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON pl_postings FOR EACH ROW EXECUTE FUNCTION refuse_posting()")
    record_batch(ledger, [Inbound.parse(_text(contribution(HEFEI, "resident", 5_000)), SourcePosition("t", 0, 1))])

    result = verify(ledger, database_url)
    ledger.close()
    assert result.ok is False
    assert result.checks["projection_caught_up"] is False
    assert any(
        p.startswith("projection_caught_up: the projector failed while catching up: RaiseException: "
                     "read table refuses the posting")
        for p in result.problems
    ), result.problems
    assert result.checks["projection_matches_replay"] is False


def test_a_decision_whose_events_cannot_be_saved_is_unprocessable_and_the_rest_saved() -> None:
    ledger = new_ledger()
    correct = ledger.decisions["ContributionReceived"]

    def contribution_with_a_set(event: Any, terms: Any, state: Any) -> Any:
        transfer = correct(event, terms, state)
        if event.amount_fen == 777:  # a bug: a value no JSON encoder can write
            state.fund(FUND).trigger_event(Fund.BudgetSet, account=FUND, fiscal_year=2025,
                                          income_fen={1, 2}, expenditure_fen=0, budget_event_id="x", kind="x")
        return transfer

    ledger.decisions["ContributionReceived"] = contribution_with_a_set
    messages = [contribution(HEFEI, "resident", 1_000), contribution(HEFEI, "resident", 777),
                contribution(HEFEI, "resident", 2_000)]
    outcomes = record_batch(ledger, [Inbound.parse(_text(m), SourcePosition("t", 0, i)) for i, m in enumerate(messages)])
    assert statuses(outcomes) == [("accepted", None), ("rejected", "unprocessable"), ("accepted", None)]
    assert outcomes[1].detail == (
        "deciding the message failed: TranscodingNotRegisteredError: Object of type <class 'set'> is not "
        "serializable. Please define and register a custom transcoding for this type."
    )
    assert balance(ledger, FUND) == 3_000


#: Enough rejected payload in one batch (about 15 MB) to deadlock psycopg's pipeline mode.
LARGE_REJECTIONS = 60
LARGE_REJECTION_BYTES = 250_000
#: A batch of this size saves in well under a second; minutes mean it hangs.
LARGE_BATCH_SAVE_TIMEOUT_S = 120


@pipeline
def test_a_batch_of_megabytes_of_rejected_payloads_is_saved(database_url: str) -> None:
    """Seen with hostile input: eventsourcing's pipelined insert hung in `Pipeline.sync` forever."""
    ledger = open_ledger(database_url)
    junk = b'{"junk": "' + b"x" * LARGE_REJECTION_BYTES  # not JSON: no closing quote or brace
    batch = [Inbound.parse(junk, SourcePosition("t", 0, i)) for i in range(LARGE_REJECTIONS)]
    batch.append(Inbound.parse(_text(contribution(HEFEI, "resident", 100_000)), SourcePosition("t", 0, 60)))
    saved: list[list[Any]] = []
    worker = threading.Thread(target=lambda: saved.append(record_batch(ledger, batch)), daemon=True)
    worker.start()
    worker.join(LARGE_BATCH_SAVE_TIMEOUT_S)
    assert saved, f"the batch was not saved within {LARGE_BATCH_SAVE_TIMEOUT_S} s"
    try:
        assert statuses(saved[0]) == [("rejected", "invalid_json")] * 60 + [("accepted", None)]
        assert balance(ledger, FUND) == 100_000
    finally:
        ledger.close()
