"""No reference cycles per message: what a batch made is freed when the batch is done.

The long-running processes leave Python's full collection to a timer
(`pooling_ledger.processes.collect_garbage_for_throughput`); a cycle made per message would
then hold whole batches in memory until it runs. Two did: a refusal kept on its message and
raised again, whose traceback held the batch's frames, and a parse error kept with the
exception it was raised while handling (`raise ... from None` keeps `__context__`), whose
frames held the list of messages being parsed.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from consumers.booking import record_batch
from consumers.inbound import Inbound, SourcePosition
from tests.upstream import claim, contribution, new_ledger, raw, reversal


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Only reference counting frees anything while the test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _parsed(messages: list[bytes | None]) -> list[Inbound]:
    """As the ingestor parses a poll: into a list held by the parsing frame."""
    inbound: list[Inbound] = []
    for offset, message in enumerate(messages):
        inbound.append(Inbound.parse(message, SourcePosition("events", 0, offset), 2_000))
    return inbound


def _every_kind_of_message() -> list[bytes | None]:
    accepted = contribution(amount_fen=50_000)
    return [
        raw(accepted),
        b"{not json",  # invalid_json, raised while handling the JSON decoder's error
        b"[1, 2]",  # invalid_schema: not an object
        raw(contribution(amount_fen=-1)),  # invalid_schema from pydantic's ValidationError
        raw({**contribution(amount_fen=1), "city": "349900"}),  # unknown_city, a rule's rejection
        raw(claim(amount_fen=10**12)),  # insufficient_funds
        raw(reversal("00000000-0000-4000-8000-000000000000")),  # unknown_original
        None,  # a tombstone
        b"x" * 3_000,  # message_too_large
        raw(accepted),  # a re-delivery: duplicate
    ]


def test_a_batch_of_every_fate_leaves_no_cyclic_garbage(collector_off: None) -> None:
    ledger = new_ledger()
    outcomes = record_batch(ledger, _parsed(_every_kind_of_message()))
    assert [o.status for o in outcomes] == ["accepted", *["rejected"] * 8, "duplicate"]
    del outcomes

    assert gc.collect() == 0


def test_a_parse_error_is_kept_without_traceback_or_chained_exceptions() -> None:
    for message in (b"{not json", b"[1, 2]", raw(contribution(amount_fen=-1))):
        error = Inbound.parse(message).error
        assert error is not None
        assert (error.__traceback__, error.__context__, error.__cause__) == (None, None, None)


def test_the_tuned_collector_leaves_full_collections_to_the_ticker() -> None:
    from pooling_ledger import processes

    before = gc.get_threshold()
    try:
        ticker = processes.collect_garbage_for_throughput()
        assert gc.get_threshold() == (50_000, 20, 1_000_000_000)

        class Node:
            pass

        node = Node()
        node.me = node  # type: ignore[attr-defined]
        kept = weakref.ref(node)
        del node
        ticker.interval_s = 3600.0
        ticker()  # too soon: nothing collected
        assert kept() is not None
        ticker.interval_s = 0.0
        ticker()
        assert kept() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
