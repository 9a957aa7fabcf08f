"""From a Kafka message's bytes to what the ledger decides on (`ledger.application.Message`).

The adapter's business, not the ledger's: the size limit, parsing, the sha256 digest that
tells a re-delivery from a conflicting reuse of an event_id (I1), where the message came
from (topic, partition, offset), and the base64 excerpt a rejection keeps of a message
that is not a JSON object.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel

from ledger.application import Message, error_text
from ledger.errors import Reason, Rejected
from schemas.events import (
    InvalidJson,
    InvalidSchema,
    MessageTooLarge,
    UpstreamEvent,
    json_object_or_none,
    parse_event,
)

#: Messages above this many bytes are refused unparsed (`message_too_large`); the default of
#: POOLING_MESSAGE_SIZE_MAX. Kafka's own limit is 1 MiB, and outcomes must stay below it.
MESSAGE_SIZE_MAX_BYTES = 256 * 1024
#: Of a message refused as too large, its receipt keeps this many first bytes (and its sha256).
RAW_EXCERPT_BYTES = 1024


@dataclass(frozen=True)
class SourcePosition:
    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


class ParseFailed(Exception):
    """Parsing raised what it never should (a bug): the message is `unprocessable`."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


InputError = InvalidJson | InvalidSchema | MessageTooLarge | ParseFailed

_INPUT_REASONS: dict[type[Exception], Reason] = {
    InvalidJson: Reason.invalid_json,
    InvalidSchema: Reason.invalid_schema,
    MessageTooLarge: Reason.message_too_large,
    ParseFailed: Reason.unprocessable,
}


def _as_data(error: InputError) -> InputError:
    """A parse error kept on its message: without its traceback and the exceptions it was raised
    while handling (`raise ... from None` keeps `__context__`), whose frames would hold the batch
    being parsed in a reference cycle that only Python's full collection frees."""
    error.__traceback__ = error.__context__ = error.__cause__ = None
    return error


@dataclass(frozen=True)
class Inbound:
    """One upstream message: parsed, or with the reason it could not be.

    `raw` is the message's value (empty for a tombstone, a message without one); of a
    message refused as too large, replay has only the first bytes, and `size_bytes` the size.
    """

    raw: bytes
    position: SourcePosition | None = None
    event: UpstreamEvent | None = None
    error: InputError | None = None
    tombstone: bool = False
    size_bytes: int | None = None

    @property
    def size(self) -> int:
        return len(self.raw) if self.size_bytes is None else self.size_bytes

    @classmethod
    def parse(
        cls,
        raw: bytes | None,
        position: SourcePosition | None = None,
        size_max_bytes: int = MESSAGE_SIZE_MAX_BYTES,
        *,
        size_bytes: int | None = None,
    ) -> Inbound:
        """Never raises: whatever `raw` holds, the result is an event or the reason why not."""
        if raw is None:
            detail = "the message has no value (a Kafka tombstone); expected one JSON object"
            return cls(b"", position, error=InvalidJson(detail), tombstone=True)
        size = len(raw) if size_bytes is None else size_bytes
        if size > size_max_bytes:
            return cls(raw, position, error=MessageTooLarge(size, size_max_bytes), size_bytes=size_bytes)
        try:
            return cls(raw, position, event=parse_event(raw))
        except (InvalidJson, InvalidSchema) as error:
            return cls(raw, position, error=_as_data(error))
        except Exception as error:  # noqa: BLE001 - parsing is total: a bug becomes a fate
            return cls(raw, position, error=ParseFailed(f"parsing failed: {error_text(error)}"))

    @property
    def message(self) -> Message:
        """What the ledger decides on. Never raises: a bug describing it becomes a fate too."""
        try:
            return self._message()
        except Exception as error:  # noqa: BLE001 - the message is recorded by its bytes alone
            return self._message_of_bytes(ParseFailed(f"parsing failed: {error_text(error)}"))

    def _message(self) -> Message:
        if self.event is None:
            assert self.error is not None
            return self._message_of_bytes(self.error)
        payload = orjson.loads(self.event.model_dump_json())  # = model_dump(mode="json"), faster
        return Message(
            event=self.event,
            refusal=None,
            event_id=str(self.event.event_id),
            event_type=self.event.type,
            payload=payload,
            payload_digest=meaning_digest(payload, self.event.occurred_at, _defaults_of(type(self.event))),
            delivery_key=self._delivery_key(),
            source=self._source(),
        )

    def _message_of_bytes(self, error: InputError) -> Message:
        """A message the ledger cannot decide on: rejected with the reason parsing gave."""
        too_large = isinstance(error, MessageTooLarge)
        payload = None if too_large or self.tombstone else json_object_or_none(self.raw)
        raw_excerpt, raw_size_bytes = self._kept_raw(payload, too_large)
        return Message(
            event=None,
            refusal=Rejected(_INPUT_REASONS[type(error)], "I2", error.detail),
            event_id=_event_id_of(error),
            event_type=getattr(error, "event_type", None),
            payload=payload,
            payload_digest=self._raw_digest(),
            delivery_key=self._delivery_key(),
            source=self._source(),
            raw_excerpt=raw_excerpt,
            raw_size_bytes=raw_size_bytes,
        )

    def _kept_raw(self, payload: dict[str, Any] | None, too_large: bool) -> tuple[str | None, int | None]:
        """What a rejection keeps of a message it has no JSON object of: its bytes, or their start.

        None for a tombstone (size 0); of a message above the size limit only the first
        RAW_EXCERPT_BYTES, with the size, so replay decides it again.
        """
        if payload is not None:
            return None, None
        if self.tombstone:
            return None, 0
        kept = self.raw[:RAW_EXCERPT_BYTES] if too_large else self.raw
        return base64.b64encode(kept).decode(), self.size

    def _raw_digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def _delivery_key(self) -> str:
        """Names a message without an event_id: its position, or, not from Kafka, its bytes."""
        p = self.position
        if p is None:
            return "raw:" + self._raw_digest()
        return f"position:{p.topic}/{p.partition}/{p.offset}"

    def _source(self) -> dict[str, Any] | None:
        return self.position.as_dict() if self.position is not None else None


def meaning_digest(payload: dict[str, Any], occurred_at: datetime, defaults: dict[str, Any] | None = None) -> str:
    """I1: what tells a re-delivery from a new fact, judged on the event's meaning, not its bytes.

    The parsed event with its instant written in UTC, keys sorted, and without the optional
    fields that hold their default (`defaults`): the same instant written with another offset,
    keys in another order, or a default written out or left out, is the same payload; any
    other difference is another. Leaving defaults out also keeps a stored event's digest the
    same when the contract grows a new optional field.
    """
    meaning = dict(payload)
    for name, default in (defaults or {}).items():  # a few optional fields per event type
        if name in meaning and meaning[name] == default:
            del meaning[name]
    meaning["occurred_at"] = occurred_at.astimezone(UTC).isoformat()
    return hashlib.sha256(orjson.dumps(meaning, option=orjson.OPT_SORT_KEYS)).hexdigest()


@functools.cache
def _defaults_of(model: type[BaseModel]) -> dict[str, Any]:
    """The optional fields of an event type and their defaults, as JSON writes them."""
    return {
        name: orjson.loads(orjson.dumps(field.default, default=str))
        for name, field in model.model_fields.items()
        if not field.is_required() and field.default_factory is None
    }


def _event_id_of(error: InputError) -> str | None:
    """The event_id of a message that failed its schema, spelled as a valid one's would be,
    so that a later reuse of it is a conflict (I1)."""
    if isinstance(error, InvalidSchema) and error.event_id:
        try:
            return str(UUID(error.event_id))
        except ValueError:
            return error.event_id
    return None
