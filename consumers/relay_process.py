"""The entry point of the relay's own process: kept free of heavy imports on purpose.

The child must tie its life to its parent's before anything else (PR_SET_PDEATHSIG), and
check that the parent did not die while it was starting: an orphaned relay would hold the
relay's lease and publish behind the back of the consumer that replaced its parent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PR_SET_PDEATHSIG = 1
RELAY_IDLE_WAIT_S = 0.05


def main(
    parent_pid: int, database_url: str, bootstrap_servers: str, ledger_topic: str,
    rejections_topic: str, stopping: Any, db_retry_max_s: float,
) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        sys.exit(0)
    _leave_signals_to_parent()
    from consumers.metrics import count_retry
    from consumers.relay import Relay
    from pooling_ledger.processes import collect_garbage_for_throughput
    from storage import DatabaseRetry, RetryStopped, open_ledger, refresh_connections

    ledger = open_ledger(database_url, create_tables=False)
    # a stop request bounds the relay's waits on the broker, even while the broker is away
    relay = Relay(ledger, bootstrap_servers, ledger_topic, rejections_topic, should_stop=stopping.is_set)
    retry = DatabaseRetry(max_s=db_retry_max_s, on_retry=count_retry)

    def publish() -> int:  # a PostgreSQL restart is waited out, like the consumer does
        return retry.call(
            relay.run_until_caught_up, what="relay", reconnect=lambda: refresh_connections(ledger),
            should_stop=stopping.is_set,
        )

    full_collection = collect_garbage_for_throughput()
    try:
        while not stopping.is_set():
            if not publish():
                stopping.wait(RELAY_IDLE_WAIT_S)
            full_collection()
        publish()
    except RetryStopped:
        pass  # stopped while PostgreSQL was away: the next relay publishes what is left
    finally:
        relay.close()
        ledger.close()


#: Signals sent to the whole process group (systemd's SIGTERM, a terminal's Ctrl-C).
GROUP_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextmanager
def group_signals_held() -> Iterator[None]:
    """Around starting the relay: the child is born with SIGTERM and SIGINT blocked.

    A signal mask survives fork and exec, so a group signal arriving while the child still
    imports cannot kill it; the parent gets its own copy once the mask is restored.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _leave_signals_to_parent() -> None:
    """SIGTERM and SIGINT sent to the whole process group are the parent's to act on.

    The parent stops this process through `stopping` once its last batch is booked; killed
    by the signal instead, the relay could die holding the lock of that shared event and
    leave the parent waiting on it forever. (Blocked since birth: see group_signals_held.)
    """
    for sig in GROUP_STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_STOP_SIGNALS)


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the daemon flag still ends it with a clean exit
        pass
