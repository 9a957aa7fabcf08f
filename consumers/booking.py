"""Booking a batch: the ledger's one-attempt use case, wrapped in what concurrency needs.

`Ledger.record_batch` decides a batch and saves it once. Around it, as a controller
wrapper does (Formance's `ControllerWithTooManyClientHandling` retries around
`CreateTransaction`), `record_batch` here:

- makes writers of the shared aggregates (the adjustment funds, the policy book) take
  turns, with an advisory lock per aggregate where the recorder offers them (PostgreSQL);
- submits the batch again on fresh state when another writer saved one of its
  aggregates first (`IntegrityError`), up to SAVE_ATTEMPTS_MAX times.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, runtime_checkable

import structlog
from eventsourcing.persistence import IntegrityError

from consumers.inbound import Inbound
from ledger import accounts
from ledger.application import Ledger, Message, Outcome
from schemas.events import (
    AdjustmentFundAllocated,
    AdjustmentFundExtracted,
    EventReversed,
    FiscalYearClosed,
    InterestCredited,
    OpeningBalanceRecorded,
    PolicyAdopted,
)
from schemas.policy import Scheme

log = structlog.get_logger("consumers.booking")

#: How often a batch is submitted when another writer saved the same aggregate first.
SAVE_ATTEMPTS_MAX = 20
#: Random wait before a retry, times the attempt number, so colliding writers spread out.
RETRY_BACKOFF_S = 0.02
#: The advisory lock key of the policy book.
POLICY_BOOK_KEY = "policy-book"


@runtime_checkable
class SerialisesWriters(Protocol):
    """A recorder that can make writers of the same named aggregates take turns (PostgreSQL)."""

    def serialised(self, keys: Sequence[str]) -> AbstractContextManager[object]: ...


def record_batch(ledger: Ledger, batch: Sequence[Inbound], **save_kwargs: Any) -> list[Outcome]:
    """Books `batch` in one transaction (with `save_kwargs`, e.g. the Kafka positions), retrying
    on conflict; raises `RuntimeError` if it still conflicts after SAVE_ATTEMPTS_MAX attempts."""
    messages = [inbound.message for inbound in batch]
    with _serialised(ledger, shared_aggregates(messages)):
        for attempt in range(1, SAVE_ATTEMPTS_MAX + 1):
            try:
                return ledger.record_batch(messages, **save_kwargs)
            except IntegrityError:
                # Another writer saved one of our aggregates first: decide again on fresh state.
                log.warning("batch_conflict_retry", attempt=attempt, size=len(batch))
                time.sleep(random.uniform(0, RETRY_BACKOFF_S * attempt))
    raise RuntimeError(f"batch still conflicting after {SAVE_ATTEMPTS_MAX} attempts")


def shared_aggregates(batch: Sequence[Message]) -> set[str]:
    """The aggregates this batch may write that writers of other partitions share."""
    keys: set[str] = set()
    for message in batch:
        e = message.event
        if isinstance(e, AdjustmentFundExtracted | AdjustmentFundAllocated):
            keys.add(accounts.province_adjustment(e.scheme))
        elif isinstance(e, InterestCredited | OpeningBalanceRecorded | FiscalYearClosed):
            if e.city is None:  # the province's own adjustment fund
                keys.add(accounts.province_adjustment(e.scheme))
        elif isinstance(e, EventReversed):  # may undo an extraction or an allocation
            keys.update(accounts.province_adjustment(s) for s in Scheme)
        elif isinstance(e, PolicyAdopted):
            keys.add(POLICY_BOOK_KEY)
    return keys


def _serialised(ledger: Ledger, keys: set[str]) -> AbstractContextManager[object]:
    """Writers of shared aggregates take turns.

    Optimistic concurrency alone keeps them correct, but a writer that keeps losing the
    race to a busy one could starve; a lock per shared aggregate lets each decide on
    fresh state and save without a conflict.
    """
    if keys and isinstance(ledger.recorder, SerialisesWriters):
        return ledger.recorder.serialised(sorted(keys))
    return nullcontext()
