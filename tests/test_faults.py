"""Faults: PostgreSQL killed under a running consumer, and stops by signal that leave nothing behind.

The commands run as subprocesses on their own embedded PostgreSQL (POOLING_DATA_DIR in a
temporary folder), as an operator would run them; their processes are found through /proc.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pooling_ledger import processes
from pooling_ledger.embedded import EmbeddedPostgres
from tests.pipeline_support import contribution, publish, read_all

pytestmark = pytest.mark.integration

CLI = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "pooling-ledger")
#: Start-up includes initdb on a fresh data directory and the first connection to the broker.
READY_TIMEOUT_S = 120.0
#: PostgreSQL killed: the supervisor restarts it and the consumer's retries get through.
RECOVERY_TIMEOUT_S = 120.0
#: The promise under test: a command and everything it started are gone within 10 s.
STOP_TIMEOUT_S = 10.0
POLL_S = 0.2
CITY = "340100"
POOLING_FUND = "city:340100:resident:pooling"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """POOLING_DATA_DIR outside pytest's basetemp (kept at 0700, which the postgres user can't enter)."""
    root = Path(tempfile.mkdtemp(prefix="pooling-ledger-faults-"))
    try:
        yield root
    finally:
        for pid in processes.working_in(root / "postgres") + processes.working_in(root / "demo" / "postgres"):
            os.kill(pid, signal.SIGKILL)  # a failed test's leftovers, and only ours
        shutil.rmtree(root, ignore_errors=True)


def command(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Path]:
    """`pooling-ledger ARGS` in a session (and process group) of its own; stderr to a log file."""
    log_path = data_dir / f"{args[0]}.log"
    process = subprocess.Popen(
        [CLI, *args],
        env={
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")},
            "POOLING_DATA_DIR": str(data_dir),
            "POOLING_POLL_TIMEOUT_MS": "100",
            "POOLING_LOG_FORMAT": "json",
            "POOLING_LOG_LEVEL": "info",
            "POOLING_API_PORT": "0",
            **(env or {}),
        },
        stdout=subprocess.PIPE,
        stderr=log_path.open("w"),
        text=True,
        start_new_session=True,
    )
    return process, log_path


def log_events(log_path: Path) -> list[str]:
    events = []
    for line in log_path.read_text().splitlines():
        try:
            events.append(json.loads(line)["event"])
        except (ValueError, KeyError, TypeError):
            continue
    return events


def wait_for(condition: object, timeout_s: float, process: subprocess.Popen[str], log_path: Path) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"exited {process.returncode}:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log_path.read_text()[-3000:]}"
        time.sleep(POLL_S)


def postmaster_pid(data_dir: Path, name: str = "consume") -> int | None:
    try:
        return int((pg_dir(data_dir, name) / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def pg_dir(data_dir: Path, name: str) -> Path:
    """Where the command keeps its embedded PostgreSQL (the demo books into a store of its own)."""
    return data_dir / "demo" / "postgres" if name == "demo" else data_dir / "postgres"


def zombie_children(pid: int) -> list[int]:
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rfind(")") + 2 :].split()[:2]
        if state == "Z" and int(ppid) == pid:
            zombies.append(int(entry.name))
    return zombies


def outcomes_published(bootstrap: str, topic: str) -> int:
    return len(read_all(bootstrap, topic))


def topics_env(bootstrap: str, topics: dict[str, str]) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "POOLING_EVENTS_TOPIC": topics["events"],
        "POOLING_LEDGER_TOPIC": topics["ledger"],
        "POOLING_REJECTIONS_TOPIC": topics["rejections"],
    }


def test_consume_survives_its_postgres_being_killed_and_books_what_came_meanwhile(
    data_dir: Path, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    consume, log_path = command(data_dir, "consume", env=topics_env(kafka_bootstrap, topics))
    publish(kafka_bootstrap, topics["events"], [contribution(CITY, "resident", 1_000) for _ in range(10)])
    wait_for(lambda: outcomes_published(kafka_bootstrap, topics["ledger"]) == 10, READY_TIMEOUT_S, consume, log_path)

    killed = postmaster_pid(data_dir)
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    publish(kafka_bootstrap, topics["events"], [contribution(CITY, "resident", 2_000) for _ in range(20)])
    wait_for(
        lambda: outcomes_published(kafka_bootstrap, topics["ledger"]) == 30, RECOVERY_TIMEOUT_S, consume, log_path
    )

    restarted = postmaster_pid(data_dir)
    assert restarted is not None and restarted != killed
    assert zombie_children(consume.pid) == []  # the killed postmaster was reaped
    consume.send_signal(signal.SIGTERM)
    out, _ = consume.communicate(timeout=STOP_TIMEOUT_S)
    assert consume.returncode == 0, log_path.read_text()[-3000:]
    assert json.loads(out.splitlines()[-1])["accepted"] == 30
    events = log_events(log_path)
    assert "embedded_postgres.postmaster_died" in events
    assert "embedded_postgres.restarted" in events
    assert "database_retry" in events
    assert "database_recovered" in events
    assert processes.working_in(data_dir / "postgres") == []

    balances = subprocess.run(
        [CLI, "balances", "--json"], env={**os.environ, "POOLING_DATA_DIR": str(data_dir), "POOLING_LOG_LEVEL": "error"},
        capture_output=True, text=True, timeout=READY_TIMEOUT_S, check=False,
    )
    assert balances.returncode == 0, balances.stderr[-3000:]
    trial = json.loads(balances.stdout)
    assert {"account": POOLING_FUND, "balance_fen": 50_000} in trial["accounts"]
    assert trial["total_fen"] == 0


#: What `serve` and `demo` print on stdout once they listen.
SERVING = {"serve": "dashboard: ", "demo": "Treasury dashboard:"}


def started_by(pid: int) -> set[int]:
    """Everything `pid` started (its descendants) and its process group."""
    return {*processes.descendants(pid), *processes.in_group(pid)} - {pid}


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def ready(process: subprocess.Popen[str], name: str, data_dir: Path) -> bool:
    """Past start-up: `consume` runs its relay, `project` started its PostgreSQL."""
    if name == "consume":
        return any(b"spawn_main" in cmdline(child) for child in processes.descendants(process.pid))
    return "embedded_postgres.started" in log_events(data_dir / f"{name}.log")


@pytest.mark.parametrize(
    ("name", "sig"),
    [
        ("consume", signal.SIGTERM),
        ("consume", signal.SIGINT),
        ("serve", signal.SIGTERM),
        ("project", signal.SIGTERM),
        ("demo", signal.SIGTERM),
    ],
)
def test_a_signal_to_the_process_group_stops_the_command_and_all_it_started_within_10_s(
    data_dir: Path, name: str, sig: signal.Signals
) -> None:
    """What systemd does: the signal goes to every process of the command's group."""
    args = ["demo", "--events-per-city", "3", "--seed", "1"] if name == "demo" else [name]
    process, log_path = command(data_dir, *args)
    if name in SERVING:
        assert process.stdout is not None
        for line in process.stdout:  # printed once it listens
            if SERVING[name] in line:
                break
        else:
            raise AssertionError(log_path.read_text()[-3000:])
    else:
        wait_for(lambda: ready(process, name, data_dir), READY_TIMEOUT_S, process, log_path)
    postmaster = postmaster_pid(data_dir, name)
    assert postmaster is not None
    ours = started_by(process.pid)
    assert postmaster in ours

    started = time.monotonic()
    os.killpg(process.pid, sig)
    process.communicate(timeout=STOP_TIMEOUT_S)
    left = processes.wait_gone(sorted(ours), STOP_TIMEOUT_S - (time.monotonic() - started))
    assert left == []
    assert process.returncode == 0, log_path.read_text()[-3000:]
    assert processes.working_in(pg_dir(data_dir, name)) == []
    assert postmaster_pid(data_dir, name) is None  # a clean shutdown removes postmaster.pid


def test_a_consume_killed_with_sigkill_takes_its_postgres_broker_and_relay_with_it(data_dir: Path) -> None:
    process, log_path = command(data_dir, "consume")
    wait_for(lambda: ready(process, "consume", data_dir), READY_TIMEOUT_S, process, log_path)
    ours = started_by(process.pid)
    programs = {Path(os.fsdecode(cmdline(pid).split(b"\0")[0])).name.split("-")[0] for pid in ours}
    assert {"postgres", "tansu"} <= programs, programs

    process.send_signal(signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT_S)
    assert processes.wait_gone(sorted(ours), STOP_TIMEOUT_S) == []
    assert processes.working_in(data_dir / "postgres") == []


def test_a_supervised_postgres_killed_with_sigkill_is_reaped_and_restarted_on_its_port(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir / "postgres", supervise=True)  # fsync on: commits survive
    with server:
        url = server.url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (id int)")
            conn.execute("INSERT INTO kept VALUES (7)")
        idle = psycopg.connect(url)  # a backend left behind by the killed postmaster
        killed = postmaster_pid(data_dir)
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while server.restarts == 0 and time.monotonic() < deadline:
            time.sleep(POLL_S)
        assert server.restarts == 1
        assert not Path(f"/proc/{killed}").exists()  # reaped, not a zombie
        assert server.url == url  # same port
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT id FROM kept").fetchall() == [(7,)]
        idle.close()
    assert processes.working_in(data_dir / "postgres") == []
