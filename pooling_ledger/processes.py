"""The processes this program starts: tied to its life, and found again by what they serve.

Linux only where it matters (prctl, /proc); elsewhere the functions do nothing or find nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1
PROC = Path("/proc")
EXIT_POLL_INTERVAL_S = 0.05


def _prctl() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[[int, int], int] = libc.prctl
    except (OSError, AttributeError):  # not Linux
        return None
    return prctl


def dies_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A Popen ``preexec_fn``: the kernel sends ``sig`` to the child when its parent ends.

    Even by SIGKILL, so no server outlives the command that started it. Two details:

    - Popen runs ``preexec_fn`` after it dropped privileges for ``user=``/``group=``
      (CPython's ``_posixsubprocess``: setgroups, setregid, setreuid, then preexec_fn), and
      the kernel clears the parent-death signal when the credentials change: set here, it holds.
    - "Parent" is the *thread* that started the child: start servers from a thread that lives
      as long as they should (the main thread, or the supervisor that restarts them).

    libc is loaded before the fork; the child only calls prctl and getppid, taking no lock,
    which is why this ``preexec_fn`` is safe in a process with threads. If the parent died
    before the signal was set, the child exits at once instead of running orphaned.
    """
    prctl = _prctl()
    parent = os.getpid()

    def preexec() -> None:
        if prctl is None:
            return
        prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:
            os._exit(1)

    return preexec


#: Objects allocated (net) before a young collection; Python's default is 700.
GC_YOUNG_THRESHOLD = 50_000
#: Young collections before a middle one (default 10).
GC_MIDDLE_THRESHOLD = 20
#: Middle collections before a full one: never, in effect; `FullCollections` runs them instead.
GC_OLD_THRESHOLD = 1_000_000_000
#: The least time between two full collections a `FullCollections` runs.
GC_FULL_INTERVAL_S = 60.0


def collect_garbage_for_throughput() -> FullCollections:
    """Tunes Python's cycle collector for a process that holds a large heap and makes many
    short-lived objects per message (consume, the relay, replay); returns the ticker of its
    full collections, to call between batches.

    With the defaults, a full collection runs whenever the long-lived heap grew by a quarter;
    replay's in-memory ledger grows with every decision, and those collections took 15-25 % of
    its time (BENCHMARKS.md, "Garbage collection"). The ledger makes no reference cycle per message (a test checks
    it), so nothing waits on them: the full collection runs at most once per GC_FULL_INTERVAL_S,
    between batches, and what start-up built (modules, validators, the policy) is frozen out of
    every collection.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, GC_OLD_THRESHOLD)
    return FullCollections()


class FullCollections:
    """Runs `gc.collect()` when called, if GC_FULL_INTERVAL_S passed since the last one."""

    def __init__(self, interval_s: float = GC_FULL_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            gc.collect()
            self.last = time.monotonic()


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped, does not)."""
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] not in ("Z", "X")
    if PROC.exists():
        return False
    try:  # no /proc: ask the kernel
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids() -> list[int]:
    try:
        return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]
    except OSError:
        return []


def working_in(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory``.

    PostgreSQL's postmaster makes its data directory its working directory, and every
    backend and helper it forks inherits it: this finds a server's processes, and only its.
    """
    target = str(Path(directory).absolute())
    found = []
    for pid in _pids():
        try:
            cwd = os.readlink(PROC / str(pid) / "cwd")
        except OSError:  # gone, a zombie, or not ours to look at
            continue
        if cwd == target and alive(pid):
            found.append(pid)
    return found


def descendants(pid: int) -> list[int]:
    """Live children of ``pid``, their children, and so on."""
    children: dict[int, list[int]] = {}
    for other in _pids():
        fields = _stat_fields(other)
        if fields is not None and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(other)
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def in_group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    found = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append(pid)
    return found


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Waits up to ``timeout_s`` for ``pids`` to end; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    remaining = [p for p in pids if alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(EXIT_POLL_INTERVAL_S)
        remaining = [p for p in remaining if alive(p)]
    return remaining
