"""Transient PostgreSQL errors, retried with bounded exponential back-off around a use case.

A server that restarts (a crash, a failover, the embedded server's supervisor bringing it
back) ends every connection. The work in flight is then done again, from the start, once
a new connection works: a batch is decided again on the state stored by then. A COMMIT
whose fate is unknown is safe to repeat, because the receipts make a re-decided event a
duplicate. The domain (``ledger/``) knows nothing of this: its callers wrap its use cases,
as Formance's controller wrappers retry around ``CreateTransaction``. A caller that counts
retries (the consumer's metrics) passes ``on_retry``: storage knows nothing of metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg
import structlog
from eventsourcing.persistence import InterfaceError, OperationalError

from ledger.application import Ledger
from storage.recorder import ledger_recorder

log = structlog.get_logger("storage.retry")

#: Errors of a lost or refused connection (psycopg's, and eventsourcing's wrappers of them;
#: psycopg_pool's PoolTimeout is an OperationalError). Errors in the data are not retried.
TRANSIENT_DATABASE_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OperationalError,
    InterfaceError,
)
#: Default of POOLING_DB_RETRY_MAX_S: how long PostgreSQL may stay unreachable before giving up.
DB_RETRY_MAX_S = 300.0
RETRY_WAIT_FIRST_S = 0.25
RETRY_WAIT_MAX_S = 15.0
#: A stop asked for while waiting to retry is noticed within this.
STOP_CHECK_INTERVAL_S = 0.1
ERROR_DETAIL_CHARS_MAX = 300

T = TypeVar("T")


class RetryStopped(Exception):
    """A stop was asked for while PostgreSQL was unreachable: the work was not done."""


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


def _uncounted(what: str) -> None:
    return None


@dataclass(frozen=True)
class DatabaseRetry:
    """Calls an operation until it gets through, for at most ``max_s`` of failures in a row.

    ``on_retry(what)`` is called before each wait, e.g. to count retries in a metric.
    """

    max_s: float = DB_RETRY_MAX_S
    wait_first_s: float = RETRY_WAIT_FIRST_S
    wait_max_s: float = RETRY_WAIT_MAX_S
    on_retry: Callable[[str], None] = _uncounted

    def call(
        self,
        operation: Callable[[], T],
        *,
        what: str,
        reconnect: Callable[[], None] = _nothing,
        should_stop: Callable[[], bool] = _never,
    ) -> T:
        """``operation()``; after a transient error: wait, ``reconnect()``, and call it again.

        Raises the last error once failures lasted ``max_s``, and ``RetryStopped`` when
        ``should_stop()`` turns true while waiting.
        """
        failing_since: float | None = None
        attempt = 0
        while True:
            try:
                result = operation()
            except TRANSIENT_DATABASE_ERRORS as error:
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                attempt += 1
                failing_s = now - failing_since
                if failing_s >= self.max_s:
                    log.error(
                        "database_retries_exhausted", what=what, attempts=attempt,
                        failing_s=round(failing_s, 1), error=_detail(error),
                    )
                    raise
                wait_s = min(self.wait_first_s * 2 ** (attempt - 1), self.wait_max_s, self.max_s - failing_s)
                self.on_retry(what)
                log.warning(
                    "database_retry", what=what, attempt=attempt, wait_s=round(wait_s, 2),
                    error_type=type(error).__name__, error=_detail(error),
                )
                if _wait_unless_stopped(wait_s, should_stop):
                    raise RetryStopped(what) from error
                _quietly(reconnect)
                continue
            if failing_since is not None:
                log.info(
                    "database_recovered", what=what, attempts=attempt,
                    failing_s=round(time.monotonic() - failing_since, 1),
                )
            return result


def refresh_connections(ledger: Ledger) -> None:
    """Replaces the ledger's pooled connections that a restart broke, before they are used.

    The aggregates the ledger keeps between batches need no forgetting: its cache is only
    filled after a save succeeded, and a batch brings every aggregate it reads up to date
    with the events stored since, so the batch is decided again on what is stored.
    """
    ledger_recorder(ledger).datastore.pool.check()


def _wait_unless_stopped(wait_s: float, should_stop: Callable[[], bool]) -> bool:
    """Sleeps ``wait_s``; True as soon as ``should_stop()`` (checked every 0.1 s)."""
    deadline = time.monotonic() + wait_s
    while True:
        if should_stop():
            return True
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            return False
        time.sleep(min(STOP_CHECK_INTERVAL_S, left_s))


def _quietly(reconnect: Callable[[], None]) -> None:
    """Reconnecting may fail while the server is still down: the next attempt says so."""
    try:
        reconnect()
    except TRANSIENT_DATABASE_ERRORS as error:
        log.info("database_reconnect_failed", error=_detail(error))


def _detail(error: BaseException) -> str:
    return " ".join(str(error).split())[:ERROR_DETAIL_CHARS_MAX]
