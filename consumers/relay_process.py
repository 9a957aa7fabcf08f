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
from typing import Any

PR_SET_PDEATHSIG = 1
RELAY_IDLE_WAIT_S = 0.05


def main(
    parent_pid: int, database_url: str, bootstrap_servers: str, ledger_topic: str,
    rejections_topic: str, stopping: Any,
) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        sys.exit(0)
    from consumers.relay import Relay
    from consumers.store import open_ledger

    ledger = open_ledger(database_url, create_tables=False)
    relay = Relay(ledger, bootstrap_servers, ledger_topic, rejections_topic)
    try:
        while not stopping.is_set():
            if not relay.run_until_caught_up():
                stopping.wait(RELAY_IDLE_WAIT_S)
        relay.run_until_caught_up()
    finally:
        relay.close()
        ledger.close()


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the daemon flag still ends it with a clean exit
        pass
