"""What the bench scripts share: servers, a store per run, the year mix, the CLI, RSS sampling.

The product is driven through its command line (`.venv/bin/pooling-ledger publish / consume /
replay / project`) as subprocesses configured by DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS and
POOLING_*, so the bench keeps working while the ledger's internals change. From the project
it imports only the embedded servers (to start PostgreSQL and the broker), the topic helper
and the simulator's year mix (`bench/chaos`'s `year_mix`, itself built on
`pooling_ledger.simulate`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any, Self

os.environ.setdefault("POSTGRES_PASSWORD", "")
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

import psutil

CLI = REPO / ".venv" / "bin" / "pooling-ledger"
PARTITIONS = 4
MB = 1_000_000
RESULTS = BENCH / "results.json"

#: Issue 8's targets (this 2-core machine, embedded PostgreSQL with fsync on, Tansu broker).
TARGETS = {
    "ingest_end_to_end_events_per_s": 20_000,
    "ingest_over_naive": 13.0,
    "replay_events_per_s": 50_000,
    "projection_rebuild_events_per_s": 150_000,
    "consumer_rss_growth": 0.20,  # peak RSS at N within 20 % of the peak at 100,000
    "consumer_rss_mb": 500,
    "read_api_p99_ms": 20,  # each of READ_ENDPOINTS, open loop at read_api_rate requests/s
    "read_api_rate": 500,
}

#: The read API's endpoints under load (bench/readload), one after the other.
READ_ENDPOINTS = ("/v1/province/summary", "/v1/risk", "/v1/budgets?year=2025")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             check=False, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except OSError:
        return None


# ------------------------------------------------------------------------------ servers


def _ensure_topics(bootstrap: str, topics: dict[str, int]) -> None:
    try:
        from consumers.topics import ensure_topics
    except ImportError:  # pragma: no cover - wherever the core keeps it
        from pooling_ledger.embedded import ensure_topics  # type: ignore[no-redef]
    ensure_topics(bootstrap, topics)


def _create_database(server_url: str, name: str) -> str:
    from pooling_ledger.embedded import create_database

    return create_database(server_url, name)


class Servers:
    """One embedded PostgreSQL (fsync on) and one Tansu broker for the whole run, unless
    DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS name others. Each run gets its own database and topics."""

    def __init__(self, keep_tmp: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.keep_tmp = keep_tmp
        self._pg: Any = None
        self._kafka: Any = None
        self.server_url = os.environ.get("DATABASE_URL") or ""
        self.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or ""

    def __enter__(self) -> Self:
        from pooling_ledger.embedded import EmbeddedKafka, EmbeddedPostgres
        from pooling_ledger.logs import configure_logging

        configure_logging("console", "error")
        if not self.server_url:
            log("starting the embedded PostgreSQL (fsync on)")
            self._pg = EmbeddedPostgres(self.tmp / "pg")
            self.server_url = self._pg.start()
        if not self.bootstrap:
            log("starting the embedded Tansu broker (memory storage)")
            self._kafka = EmbeddedKafka(log_dir=self.tmp / "kafka")
            self.bootstrap = self._kafka.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self._kafka, self._pg):
            if server is not None:
                try:
                    server.stop()
                except Exception as error:  # noqa: BLE001 - cleanup goes on
                    log(f"stopping {server!r}: {error}")
        if not self.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def server_pids(self) -> dict[str, int]:
        """The embedded servers' pids (empty for servers named by DATABASE_URL and so on)."""
        pids = {}
        for name, server in (("postgres", self._pg), ("broker", self._kafka)):
            proc = getattr(server, "_proc", None)
            if proc is not None:
                pids[name] = proc.pid
        return pids

    def store(self, name: str) -> Store:
        suffix = uuid.uuid4().hex[:8]
        database_url = _create_database(self.server_url, f"bench_{name}_{suffix}")
        prefix = f"bench{suffix}"
        topics = {k: f"{prefix}.pooling.{k}.v1" for k in ("events", "ledger", "rejections")}
        _ensure_topics(self.bootstrap, {t: PARTITIONS for t in topics.values()})
        return Store(self, name, database_url, topics)


@dataclass
class Store:
    """One database and its topics; how to run the CLI against them."""

    servers: Servers
    name: str
    database_url: str
    topics: dict[str, str]
    messages: int = 0  # upstream messages published (= decided once the run is over)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.servers.bootstrap,
            "POOLING_EVENTS_TOPIC": self.topics["events"],
            "POOLING_LEDGER_TOPIC": self.topics["ledger"],
            "POOLING_REJECTIONS_TOPIC": self.topics["rejections"],
            "POOLING_CONSUMER_GROUP": f"{self.name}-ledger",
            "POOLING_TOPIC_PARTITIONS": str(PARTITIONS),
            "POOLING_DATA_DIR": str(self.servers.tmp / "data" / self.name),
            "POOLING_LOG_LEVEL": "warning",
            "POOLING_LOG_FORMAT": "json",
            **extra,
        }

    def logfile(self, stem: str) -> Path:
        logs = self.servers.tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return logs / f"{self.name}-{stem}-{len(self.procs):02d}.log"

    def spawn(self, args: list[str], prefix: list[str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        """Starts `pooling-ledger ARGS` (behind `prefix`, e.g. py-spy); stdout piped, stderr to a log."""
        path = self.logfile(args[0])
        with path.open("wb") as err:
            popen = subprocess.Popen([*(prefix or []), str(CLI), *args], env=self.env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        self.procs.append(popen)
        return popen, path

    def run(self, args: list[str], timeout: float = 7200.0, prefix: list[str] | None = None,
            sample_rss: bool = False) -> tuple[str, float, int]:
        """Runs a CLI command to its end: (stdout, wall seconds, peak RSS of its process tree)."""
        started = time.perf_counter()
        popen, path = self.spawn(args, prefix)
        sampler = RssSampler(popen.pid) if sample_rss else None
        try:
            out, _ = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
            raise RuntimeError(f"pooling-ledger {args[0]} took more than {timeout:.0f} s") from None
        finally:
            if sampler:
                sampler.stop()
        seconds = time.perf_counter() - started
        if popen.returncode != 0:
            raise RuntimeError(f"pooling-ledger {' '.join(args)} exited {popen.returncode}: "
                               f"{out.decode(errors='replace')[-500:]}{tail(path)}")
        return out.decode(), seconds, sampler.peak if sampler else 0


def tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def last_json(text: str) -> dict[str, Any]:
    """The last JSON object a CLI command printed (whole stdout, or its last line)."""
    text = "\n".join(line for line in text.splitlines() if not line.startswith("py-spy>")).strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = json.loads(text.splitlines()[-1])
    if not isinstance(value, dict):
        raise TypeError(f"not a JSON object: {text[-200:]}")
    return value


# ---------------------------------------------------------------------------- RSS


def _tree_total(pid: int, measure: Any) -> float:
    """`measure(process)` summed over a process and its living descendants (those gone count 0)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            total += measure(p)
        except psutil.Error:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process, its living descendants and the children they
    have reaped (a postmaster's ended backends count)."""
    return _tree_total(pid, lambda p: sum(p.cpu_times()[:4]))  # user, system, children's both


class CpuMeter:
    """CPU seconds each named process tree spent between `__init__` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: round(cpu_seconds(pid) - self.before[name], 1) for name, pid in self.pids.items()}


class RssSampler:
    """Peak RSS (bytes) of a process and all its descendants, sampled every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def sample(self) -> int:
        return int(_tree_total(self.pid, lambda p: p.memory_info().rss))

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------------------- the mix

_chaos: ModuleType | None = None


def chaos() -> ModuleType:
    """bench/chaos as a module (its year mix and expectation are reused, not copied)."""
    global _chaos
    if _chaos is None:
        loader = SourceFileLoader("bench_chaos", str(BENCH / "chaos"))
        spec = importlib.util.spec_from_loader("bench_chaos", loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_chaos"] = module
        loader.exec_module(module)
        _chaos = module
    return _chaos


#: The year mix's messages per movement: 1/400 bad events, 1/1000 junk lines, 1/100 re-delivered,
#: 1/100 reversed claims, and its fixed events (openings, budgets, extractions, closes...).
MIX_OVERHEAD = 1 + 1 / 400 + 1 / 1000 + 1 / 100 + 0.37 / 100


def year_mix(events: int, seed: int = 8) -> list[list[Any]]:
    """About `events` messages of a 2025-2026 pooling year of every event type, in phases that
    are published one after the other (each once the previous one is decided): openings and
    budgets; a month of contributions, subsidies, interest and claims with ~0.35 % bad input
    (invalid schema, unknown city, earmark violations, overdrafts, negative amounts, junk that
    is not JSON); extractions (some over the cap), reversals, a gap allocation, a budget
    adjustment, ~1 % re-deliveries and event_id conflicts; the year closes; 2026 extractions."""
    c = chaos()
    cities = len(c.CITIES)
    per_city = max(4, round(events / cities / MIX_OVERHEAD))
    phases: list[list[Any]] = c.year_mix(seed, per_city, c.Expectation())
    return budgets_for_the_claims(phases)


def budgets_for_the_claims(phases: list[list[Any]]) -> list[list[Any]]:
    """The simulator's approved budgets are sized from last year's income, for a month of a few
    thousand movements per city; at 10^5-10^6 messages a year's claims pass them and most claims
    would be refused `over_budget` (B3). Each fund's approved expenditure is raised to 110 % of
    the claims published for it (income likewise, so that B1 holds), in place; the budget cut and
    the over-budget claim of the mix (absolute amounts, later) keep their fates."""
    claims: dict[tuple[str, str], int] = {}
    for phase in phases:
        for e in phase:
            if isinstance(e, dict) and e.get("type") == "ClaimPaid" and isinstance(e.get("amount_fen"), int):
                key = (str(e.get("city")), str(e.get("scheme")))
                claims[key] = claims.get(key, 0) + e["amount_fen"]
    for phase in phases:
        for e in phase:
            if isinstance(e, dict) and e.get("type") == "BudgetApproved":
                needed = claims.get((str(e.get("city")), str(e.get("scheme"))), 0) * 11 // 10
                if needed > e["expenditure_fen"]:
                    e["expenditure_fen"] = needed
                    e["income_fen"] = max(e["income_fen"], needed * 102 // 100)
    return phases


def mix_summary(phases: list[list[Any]]) -> dict[str, Any]:
    from collections import Counter

    types: Counter[str] = Counter()
    seen: set[str] = set()
    duplicates = junk = 0
    for phase in phases:
        for item in phase:
            if isinstance(item, str):
                junk += 1
                continue
            eid = str(item.get("event_id"))
            if eid in seen:
                duplicates += 1
            seen.add(eid)
            types[str(item.get("type"))] += 1
    return {"messages": sum(len(p) for p in phases), "types": dict(types),
            "redelivered_or_conflicting": duplicates, "junk_lines": junk}


def write_jsonl(path: Path, items: list[Any]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for item in items:
            out.write((item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)) + "\n")


# ---------------------------------------------------------------------------- metrics


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: How often the ingest reads consume's metrics. Each read of the relay backlog is a query in the
#: consume process: every 0.1 s it took about 4 % of consume's CPU in the profile.
SCRAPE_INTERVAL_S = 0.5


def scrape(port: int) -> dict[str, float] | None:
    """`consume --metrics-port`'s figures: messages decided (every fate) and the relay backlog."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    decided = 0.0
    backlog = -1.0
    for line in text.splitlines():
        if line.startswith("pooling_events_total{"):
            decided += float(line.rsplit(" ", 1)[1])
        elif line.startswith("pooling_relay_backlog_notifications"):
            backlog = float(line.rsplit(" ", 1)[1])
    return {"decided": decided, "relay_backlog": backlog}


# ---------------------------------------------------------------------------- ingest


def ingest(servers: Servers, events: int, *, seed: int = 8, name: str = "ingest",
           consume_prefix: list[str] | None = None, stall_s: float = 300.0,
           on_ready: Any = None) -> tuple[Store, dict[str, Any]]:
    """Publishes about `events` messages of the year mix with `pooling-ledger publish`, phase by
    phase, to a running `pooling-ledger consume`, and waits after each phase until every message
    is decided and every outcome relayed (its --metrics-port). End to end runs from the first
    publish to the last outcome relayed; publishing and consuming overlap as they would in
    production. The peak RSS is that of consume and its relay child."""
    log(f"{name}: generating about {events:,} messages of the year mix")
    phases = year_mix(events, seed)
    summary = mix_summary(phases)
    store = servers.store(name)
    files = []
    for i, phase in enumerate(phases):
        path = servers.tmp / f"{store.name}-{i}.jsonl"
        write_jsonl(path, phase)
        files.append((path, len(phase)))
    total = summary["messages"]
    log(f"{name}: {total:,} messages in {len(phases)} phases; starting consume")
    port = free_port()
    consume, consume_log = store.spawn(["consume", "--metrics-port", str(port)], prefix=consume_prefix)
    sampler = RssSampler(consume.pid)
    try:
        deadline = time.monotonic() + 180
        while scrape(port) is None:
            if consume.poll() is not None:
                raise RuntimeError(f"consume exited {consume.returncode}: {tail(consume_log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"consume did not serve metrics in time: {tail(consume_log)}")
            time.sleep(0.2)
        if on_ready is not None:
            on_ready(consume)
        cpu = CpuMeter({"consume": consume.pid, **servers.server_pids()})
        cpu_self = sum(os.times()[2:4])  # the publishers this bench runs (reaped children)
        publish_s = 0.0
        phase_s: list[float] = []
        target = 0
        started = time.perf_counter()
        progress_at = started
        for i, (path, count) in enumerate(files):
            _, seconds, _ = store.run(["publish", str(path)], timeout=3600)
            publish_s += seconds
            target += count
            log(f"{name}: phase {i + 1}/{len(files)}: published {count:,} in {seconds:.1f} s")
            last, last_change = -1.0, time.monotonic()
            while True:
                figures = scrape(port)
                if consume.poll() is not None:
                    raise RuntimeError(f"consume exited {consume.returncode}: {tail(consume_log)}")
                if figures:
                    if figures["decided"] >= target and figures["relay_backlog"] == 0:
                        break
                    if figures["decided"] != last:
                        last, last_change = figures["decided"], time.monotonic()
                    if time.monotonic() - progress_at > 10:
                        progress_at = time.monotonic()
                        rate = figures["decided"] / (progress_at - started)
                        log(f"{name}:   decided {figures['decided']:,.0f}/{total:,} ({rate:,.0f}/s),"
                            f" relay backlog {figures['relay_backlog']:,.0f},"
                            f" consumer RSS {sampler.peak / MB:,.0f} MB peak")
                if time.monotonic() - last_change > stall_s:
                    raise RuntimeError(f"no progress for {stall_s:.0f} s: {figures}; {tail(consume_log)}")
                time.sleep(SCRAPE_INTERVAL_S)
            phase_s.append(round(time.perf_counter() - started - sum(phase_s), 2))
        seconds = time.perf_counter() - started
        cpu_s = {**cpu.stop(), "publish": round(sum(os.times()[2:4]) - cpu_self, 1)}
    finally:
        sampler.stop()
        if consume.poll() is None:
            target_pid = consume.pid
            if consume_prefix:  # a profiler runs consume as its child: stop consume itself
                try:
                    children = psutil.Process(consume.pid).children()
                    target_pid = children[0].pid if children else consume.pid
                except psutil.Error:
                    pass
            os.kill(target_pid, signal.SIGTERM)
        try:
            out, _ = consume.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            consume.kill()
            out, _ = consume.communicate()
    try:
        outcomes = last_json(out.decode())
    except (TypeError, ValueError, IndexError):
        outcomes = {}
    for path, _ in files:
        path.unlink(missing_ok=True)
    store.messages = total
    result = {
        "messages": total,
        "mix": summary,
        "seconds": round(seconds, 2),
        "events_per_s": round(total / seconds),
        "publish_seconds": round(publish_s, 2),
        "publish_events_per_s": round(total / publish_s),
        "phases": [{"messages": count, "seconds": sec} for (_, count), sec in zip(files, phase_s, strict=True)],
        "consumer_outcomes": outcomes,
        "consumer_peak_rss_mb": round(sampler.peak / MB),
        "cpu_seconds": cpu_s,
        "cpu_us_per_message": {k: round(1e6 * v / total) for k, v in cpu_s.items()},
    }
    log(f"{name}: {total:,} messages end to end in {seconds:.1f} s = {result['events_per_s']:,}/s;"
        f" consumer peak RSS {result['consumer_peak_rss_mb']} MB; outcomes {outcomes}")
    log(f"{name}: CPU per message (us): " + ", ".join(f"{k} {v:,}" for k, v in result["cpu_us_per_message"].items()))
    return store, result


def publish_only(servers: Servers, events: int, *, seed: int = 8, name: str = "published") -> Store:
    """A store whose events topic holds the year mix (published with `pooling-ledger publish`),
    nothing consumed: the naive consumer's input when it runs alone."""
    phases = year_mix(events, seed)
    store = servers.store(name)
    path = servers.tmp / f"{store.name}.jsonl"
    write_jsonl(path, [item for phase in phases for item in phase])
    _, seconds, _ = store.run(["publish", str(path)], timeout=3600)
    store.messages = sum(len(p) for p in phases)
    path.unlink(missing_ok=True)
    log(f"{name}: published {store.messages:,} messages in {seconds:.1f} s")
    return store


def common_arguments(parser: Any, events: int, quick_events: int) -> None:
    parser.add_argument("--events", type=int, default=None,
                        help=f"messages of the year mix (default {events:,}; --quick: {quick_events:,})")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--seed", type=int, default=8, help="the simulation's seed")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs, data)")


# ---------------------------------------------------------------------------- read back


def replay(store: Store, prefix: list[str] | None = None) -> dict[str, Any]:
    """`pooling-ledger replay --json` over the booked store: every decision made again."""
    log(f"replay: deciding the {store.messages:,} recorded messages again")
    out, seconds, peak = store.run(["replay", "--json"], prefix=prefix, sample_rss=True)
    result = last_json(out)
    decisions = int(result.get("decisions", 0))
    figures = {
        "decisions": decisions, "ok": result.get("ok"), "seconds": round(seconds, 2),
        "events_per_s": round(decisions / seconds), "peak_rss_mb": round(peak / MB),
        "differences": len(result.get("differences") or []),
    }
    log(f"replay: {decisions:,} decisions in {seconds:.1f} s = {figures['events_per_s']:,}/s, ok={figures['ok']}")
    return figures


def project(store: Store) -> dict[str, Any]:
    """`pooling-ledger project --until-caught-up` from zero (a fresh store's read tables)."""
    log(f"project: rebuilding the read tables from zero over {store.messages:,} messages")
    out, seconds, peak = store.run(["project", "--until-caught-up"], sample_rss=True)
    result = last_json(out)
    figures = {
        "messages": store.messages, "notifications": result.get("projected"), "lag": result.get("lag"),
        "seconds": round(seconds, 2), "events_per_s": round(store.messages / seconds),
        "peak_rss_mb": round(peak / MB),
    }
    log(f"project: {store.messages:,} messages ({figures['notifications']} notifications) in"
        f" {seconds:.1f} s = {figures['events_per_s']:,}/s")
    return figures


def read_load(store: Store, rate: float = 500, seconds: float = 20, warmup: float = 2,
              endpoints: tuple[str, ...] = READ_ENDPOINTS) -> dict[str, Any]:
    """The read API under an open-loop load, endpoint by endpoint: `pooling-ledger serve` for the
    store on a free port (its own process, with a bearer token made here), then `bench/readload`
    (another process) schedules `rate` requests/s at the endpoint for `seconds` after `warmup`
    seconds, whether or not the server keeps up; then whether the server still answers /health
    within 5 s, and it is stopped with SIGTERM (SIGKILL 30 s later). A fresh server per endpoint,
    so that one endpoint's overload does not spill into the next one's figures. `serve` runs its
    projector beside the API as in production; after `project` the read tables are caught up and
    it only polls (without `project` it catches up before it answers). The figures by path:
    p50/p95/p99/max ms of the 200s, errors by kind, the achieved rate, the server's CPU."""
    import secrets

    result: dict[str, Any] = {
        "messages": store.messages, "rate": rate, "seconds": seconds, "warmup_seconds": warmup,
        "server": "pooling-ledger serve (uvicorn, 1 worker, projector beside it), its own process,"
                  " a fresh one per endpoint",
        "client": "bench/readload (asyncio, keep-alive connections, open loop), its own process",
        "endpoints": {}}
    for path in endpoints:
        token = secrets.token_urlsafe(24)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = store.logfile("serve")
        log(f"read: {path}: serving the API at {base} over {store.messages:,} messages")
        with log_path.open("wb") as err:
            server = subprocess.Popen([str(CLI), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                      env=store.env(POOLING_API_TOKEN=token), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err)
        store.procs.append(server)
        stopped = "sigterm"
        try:
            deadline = time.monotonic() + 900
            while not _health(base):
                if server.poll() is not None:
                    raise RuntimeError(f"serve exited {server.returncode}: {tail(log_path)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not answer /health in time: {tail(log_path)}")
                time.sleep(0.2)
            proc = psutil.Process(server.pid)
            cpu_before = sum(proc.cpu_times()[:2])
            started = time.perf_counter()
            client = subprocess.run(
                [sys.executable, str(BENCH / "readload"), base, "--endpoint", path, "--rate", str(rate),
                 "--seconds", str(seconds), "--warmup", str(warmup)],
                env={**os.environ, "POOLING_API_TOKEN": token}, check=False, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=seconds + warmup + 300)
            server_cpu = 100 * (sum(proc.cpu_times()[:2]) - cpu_before) / (time.perf_counter() - started)
            sys.stderr.write(client.stderr)
            if client.returncode != 0:
                raise RuntimeError(f"bench/readload exited {client.returncode}: {client.stderr[-1500:]}")
            figures = json.loads(client.stdout)["endpoints"][path]
            figures["server_cpu_percent"] = round(server_cpu, 1)
            figures["server_answered_health_after"] = _health(base)
        finally:
            if server.poll() is None:
                os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stopped = "sigkill (no exit 30 s after SIGTERM)"
                server.kill()
                server.wait()
        figures["server_stopped_by"] = stopped
        result["endpoints"][path] = figures
        log(f"read: {path}: p99 {figures['p99_ms']} ms at {figures['achieved_rate']:,} /s of {rate:g} offered,"
            f" {figures['errors']} errors {figures['outcomes']}; server CPU {figures['server_cpu_percent']} %,"
            f" answered /health after: {figures['server_answered_health_after']}, stopped by {stopped}")
    return result


def _health(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# ---------------------------------------------------------------------------- naive

NAIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_balances (account text PRIMARY KEY, balance_fen bigint NOT NULL);
CREATE TABLE IF NOT EXISTS naive_journal (
    event_id text PRIMARY KEY, account text NOT NULL, amount_fen bigint NOT NULL,
    type text NOT NULL, occurred_at text NOT NULL, booked_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS naive_positions (
    topic text NOT NULL, partition int NOT NULL, next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition));
"""

#: The sign a movement has on its city fund's balance, by type (the rest only moves the position).
NAIVE_SIGN = {"ContributionReceived": 1, "SubsidyDisbursed": 1, "InterestCredited": 1,
              "OpeningBalanceRecorded": 1, "AdjustmentFundAllocated": 1,
              "ClaimPaid": -1, "AdjustmentFundExtracted": -1}


def naive(servers: Servers, source: Store, *, limit_events: int, limit_s: float) -> dict[str, Any]:
    """The naive consumer: kafka-python reads `source`'s events topic from its start; each message
    is one PostgreSQL transaction (psycopg, fsync on): `SELECT ... FOR UPDATE` on its fund's
    balance row, the new balance, a journal insert, the Kafka position upsert. No rules beyond a
    non-negative balance, no receipts, no relay. Stops after `limit_events` or `limit_s`."""
    import psycopg
    from kafka import KafkaConsumer, TopicPartition

    database_url = _create_database(servers.server_url, f"bench_naive_{uuid.uuid4().hex[:8]}")
    topic = source.topics["events"]
    consumer = KafkaConsumer(bootstrap_servers=servers.bootstrap, enable_auto_commit=False,
                             group_id=None, max_partition_fetch_bytes=4 << 20)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    count = booked = refused = 0
    log(f"naive: one transaction per message, up to {limit_events:,} messages or {limit_s:.0f} s")
    with psycopg.connect(database_url) as conn:
        conn.execute(NAIVE_SCHEMA)
        conn.commit()
        started = time.perf_counter()
        progress_at = started
        idle_polls = 0
        while count < limit_events and time.perf_counter() - started < limit_s:
            batch = consumer.poll(timeout_ms=500, max_records=500)
            if not batch:
                idle_polls += 1
                if idle_polls > 6:
                    break  # the topic is read to its end
                continue
            idle_polls = 0
            for tp, records in batch.items():
                for r in records:
                    if count >= limit_events:
                        break
                    count += 1
                    try:
                        e = json.loads(r.value)
                    except (TypeError, ValueError):
                        e = None
                    with conn.transaction():
                        sign = NAIVE_SIGN.get(e.get("type")) if isinstance(e, dict) else None
                        amount = e.get("amount_fen", e.get("balance_fen")) if isinstance(e, dict) else None
                        if sign and isinstance(amount, int) and e.get("city"):
                            account = f"city:{e['city']}:{e.get('scheme')}:pooling"
                            row = conn.execute("SELECT balance_fen FROM naive_balances WHERE account = %s"
                                               " FOR UPDATE", (account,)).fetchone()
                            balance = (row[0] if row else 0) + sign * amount
                            if balance >= 0:
                                if row is None:
                                    conn.execute("INSERT INTO naive_balances VALUES (%s, %s)", (account, balance))
                                else:
                                    conn.execute("UPDATE naive_balances SET balance_fen = %s WHERE account = %s",
                                                 (balance, account))
                                inserted = conn.execute(
                                    "INSERT INTO naive_journal (event_id, account, amount_fen, type, occurred_at)"
                                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
                                    (str(e.get("event_id")), account, sign * amount, e["type"],
                                     str(e.get("occurred_at"))),
                                ).rowcount
                                booked += inserted
                            else:
                                refused += 1
                        conn.execute(
                            "INSERT INTO naive_positions VALUES (%s, %s, %s) ON CONFLICT (topic, partition)"
                            " DO UPDATE SET next_offset = EXCLUDED.next_offset", (tp.topic, tp.partition, r.offset + 1))
                if time.perf_counter() - progress_at > 10:
                    progress_at = time.perf_counter()
                    log(f"naive:   {count:,} messages, {count / (progress_at - started):,.0f}/s")
        seconds = time.perf_counter() - started
    consumer.close()
    figures = {"messages": count, "booked": booked, "refused": refused, "seconds": round(seconds, 2),
               "events_per_s": round(count / seconds) if seconds else 0,
               "limit_events": limit_events, "limit_s": limit_s}
    log(f"naive: {count:,} messages in {seconds:.1f} s = {figures['events_per_s']:,}/s")
    return figures


# ---------------------------------------------------------------------------- output


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    log(f"results written to {path}")


def header(command: list[str]) -> dict[str, Any]:
    return {"command": " ".join(command), "commit": git_commit(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
            "postgres": "embedded PostgreSQL (fsync on)" if not os.environ.get("DATABASE_URL") else "DATABASE_URL",
            "broker": "embedded Tansu (memory)" if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
            else "KAFKA_BOOTSTRAP_SERVERS"}


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("figure", "measured", "target (issue 8)", "met")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def yes(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "no")
