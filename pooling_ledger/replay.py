"""`pooling-ledger replay`: decide every recorded event again, from its stored payload, and compare.

The ledger keeps, in each receipt, the payload it decided on. Replaying them in the
order they were recorded through a fresh in-memory ledger, seeded with the same
policy, must give the same fate for every event (accepted with the same transfer, or
rejected with the same reason) and the same balance for every fund: the auditor's
proof that the numbers follow from the inputs and the rules, and nothing else.

Every kind of input is decided again: an empty message from its empty bytes, a tombstone
as a message without a value, a message above the size limit from the size its receipt
recorded (against `message_size_max_bytes`, POOLING_MESSAGE_SIZE_MAX). Only `unprocessable`
fates are not: they record a failure of the ledger, not a decision, and are counted.

`replay --until T` and `replay --policy FILE` decide a chosen part of the same inputs, or under
another policy, and report instead of checking: `pooling_ledger/whatif.py`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from eventsourcing.utils import get_topic

from consumers.booking import record_batch
from consumers.inbound import MESSAGE_SIZE_MAX_BYTES, Inbound, SourcePosition
from ledger.aggregates import Fund, PolicyBook, Receipt
from ledger.application import InMemoryLedger, Ledger, Outcome
from ledger.errors import Reason
from schemas.policy import Policy

REPLAY_BATCH_SIZE_MAX = 1000
DIFFERENCES_SHOWN_MAX = 20
_DECISIONS = (Receipt.Accepted, Receipt.Rejected, Receipt.ConflictingDeliveryRejected)
TOPICS = tuple(get_topic(cls) for cls in _DECISIONS)

#: Told after each batch: decisions taken so far, the notification id reached, the last one.
Progress = Callable[[int, int, int], None]
_Input = TypeVar("_Input")


@dataclass
class Replay:
    decisions: int = 0
    differences: list[str] = field(default_factory=list)
    funds_compared: int = 0
    unprocessable: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences

    def differ(self, text: str) -> None:
        if len(self.differences) < DIFFERENCES_SHOWN_MAX:
            self.differences.append(text)
        elif len(self.differences) == DIFFERENCES_SHOWN_MAX:
            self.differences.append("... (more differences not shown)")

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "decisions": self.decisions, "funds_compared": self.funds_compared,
                "unprocessable": self.unprocessable, "differences": self.differences}


def seed_policy_of(ledger: Ledger) -> Policy | None:
    """The policy the ledger was seeded with: the first adoption in its policy book."""
    for _, event in ledger.notifications((get_topic(PolicyBook.PolicyAdopted),)):
        return Policy.model_validate(event.policy)
    return None


_ACCEPTED = get_topic(Receipt.Accepted)
_REJECTED = get_topic(Receipt.Rejected)


@dataclass(frozen=True)
class Recorded:
    """A recorded fate, as stored: the receipt event's topic and fields (not decoded into an
    event object, which replay has no use for)."""

    topic: str
    fields: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.fields.get("event_id") or f"message at {self.fields.get('source')}")


def replay(
    recorded: Ledger,
    message_size_max_bytes: int = MESSAGE_SIZE_MAX_BYTES,
    progress: Progress | None = None,
) -> Replay:
    result = Replay()
    fresh = InMemoryLedger(seed_policy=seed_policy_of(recorded))
    decode = recorded.mapper.transcoder.decode

    def inputs() -> Iterator[tuple[int, tuple[Inbound, Recorded]]]:
        for notification in recorded.stored_notifications(TOPICS):
            fate = Recorded(notification.topic, decode(notification.state))
            if fate.fields.get("reason") == Reason.unprocessable.value:
                result.unprocessable += 1  # nothing was booked; a re-submission has its own receipt
                continue
            yield notification.id, (inbound_of(fate, message_size_max_bytes), fate)

    for batch in in_batches(inputs(), recorded.recorder.max_notification_id() or 0, progress):
        _decide_and_compare(fresh, batch, result)
    _compare_funds(recorded, fresh, result)
    return result


def in_batches(inputs: Iterable[tuple[int, _Input]], last: int, progress: Progress | None = None) -> Iterator[list[_Input]]:
    """`inputs` (each after its notification id) in lists of REPLAY_BATCH_SIZE_MAX, to decide
    one by one; once each is decided, `progress` is told how many were and where they reached
    (of `last`)."""
    batch: list[_Input] = []
    decided = 0
    for notification_id, item in inputs:
        batch.append(item)
        if len(batch) >= REPLAY_BATCH_SIZE_MAX:
            yield batch
            decided += len(batch)
            batch = []
            if progress is not None:
                progress(decided, notification_id, last)
    if batch:
        yield batch
        decided += len(batch)
    if progress is not None:
        progress(decided, last, last)


def inbound_of(fate: Recorded, message_size_max_bytes: int) -> Inbound:
    """The message as the ledger received it, rebuilt from what the receipt kept.

    A rejection without a JSON payload kept the bytes (`raw_base64`, maybe empty), only the
    first ones of a message above the size limit (`raw_size_bytes` tells the size), or,
    for a tombstone, nothing at all.
    """
    fields = fate.fields
    raw_base64 = fields.get("raw_base64")
    payload = fields.get("payload")
    raw: bytes | None
    if raw_base64 is not None:
        raw = base64.b64decode(raw_base64)
    elif payload is None and fate.topic == _REJECTED:
        raw = None  # a tombstone
    else:
        raw = _json_bytes(payload)
    source = fields.get("source")
    position = SourcePosition(source["topic"], source["partition"], source["offset"]) if source else None
    size_bytes = fields.get("raw_size_bytes") if raw_base64 is not None else None
    return Inbound.parse(raw, position, message_size_max_bytes, size_bytes=size_bytes)


def _json_bytes(payload: Any) -> bytes:
    """A kept payload as JSON again: orjson, or Python's json for what orjson refuses to write (a
    rejected payload may hold an integer past 64 bits, or a lone surrogate, escaped as JSON wrote it)."""
    try:
        return orjson.dumps(payload)
    except TypeError:
        return json.dumps(payload).encode()


def _decide_and_compare(fresh: InMemoryLedger, batch: list[tuple[Inbound, Recorded]], result: Replay) -> None:
    outcomes = record_batch(fresh, [inbound for inbound, _ in batch])
    for (_, fate), outcome in zip(batch, outcomes, strict=True):
        result.decisions += 1
        _compare(fresh, fate, outcome, result)


def _compare(fresh: InMemoryLedger, fate: Recorded, outcome: Outcome, result: Replay) -> None:
    fields = fate.fields
    if fate.topic == _ACCEPTED:
        if outcome.status != "accepted":
            result.differ(f"{fate.name}: recorded accepted, replayed {outcome.status} ({outcome.reason})")
            return
        replayed = fresh.transfer_of(str(fields["event_id"]))
        if replayed != fields["transfer"]:
            result.differ(f"{fate.name}: recorded transfer {fields['transfer']}, replayed {replayed}")
    elif outcome.status != "rejected" or outcome.reason != fields["reason"]:
        result.differ(f"{fate.name}: recorded rejected ({fields['reason']}), replayed "
                      f"{outcome.status} ({outcome.reason})")


def _compare_funds(recorded: Ledger, fresh: Ledger, result: Replay) -> None:
    for _, opened in recorded.notifications((get_topic(Fund.Opened),)):
        kept, again = recorded.fund(opened.account), fresh.fund(opened.account)
        result.funds_compared += 1
        if kept is None or again is None or kept.balance_fen != again.balance_fen:
            result.differ(
                f"{opened.account}: recorded balance {kept.balance_fen if kept else None} fen, "
                f"replayed {again.balance_fen if again else None} fen"
            )
        elif kept.totals_fen != again.totals_fen:
            result.differ(f"{opened.account}: yearly totals differ after replay")
