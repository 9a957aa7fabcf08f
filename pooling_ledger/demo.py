"""`pooling-ledger demo`: a simulated province flowing through Kafka, the ledger and back.

By default (`run_province_demo`) the three fiscal years 2024-2026 of provincial pooling, as
`pooling_ledger/province.py` simulates them, are published to the events topic while the ledger
consumes them, its outcomes are relayed to the outcome topics, the read tables are projected and
the dashboard is served: the resident adjustment fund works from 2025, the employee one from
2026, against their ceilings, with allocations to the cities whose claims outran their income.
`--events-per-city N` runs the earlier one-month demo instead (`run_demo`: a December in phases).
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, Self

import psycopg
from kafka import KafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consumers.ingest import Ingestor
from consumers.relay import Relay
from consumers.runner import consume
from consumers.topics import partition_counts, read_topic
from ledger import accounts, formulas
from ledger.aggregates import ALLOCATION_CATEGORY, EXTRACTION_CATEGORY
from ledger.application import Ledger, Outcome
from ledger.audit import FUND_EVENT_TOPICS, TrialBalance, fold
from ledger.clock import CHINA_STANDARD_TIME
from ledger.policy import load_packaged_policy
from pooling_ledger.embedded import free_port
from pooling_ledger.province import BadShare, ProvinceSimulation
from pooling_ledger.services import database_roles, kafka
from pooling_ledger.settings import Settings
from pooling_ledger.simulate import Message, Simulation, encode, pooling_year, with_faults
from projections import queries
from projections.projector import Projector
from projections.service import api_token
from projections.service import serve as serve_api
from schemas.policy import Policy
from storage import open_ledger
from storage.roles import without_password

DEMO_IDLE_EXIT_S = 0.8


def publish_messages(bootstrap: str, topic: str, messages: list[Message]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10, batch_size=512 * 1024)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def demo_settings(settings: Settings) -> Settings:
    """The demo books into a fresh embedded event store of its own, `{POOLING_DATA_DIR}/demo`.

    Each run starts from audited openings on 2025-01-01, so a second run into the same
    store would find its openings taken and 2025 closed. With DATABASE_URL set, the demo
    uses that database as it is.
    """
    if settings.database_url:
        return settings
    demo = settings.model_copy(update={"data_dir": settings.data_dir / "demo"})
    if (demo.data_dir / "postgres" / "postmaster.pid").exists():
        raise SystemExit(f"error: a demo is already running on {demo.data_dir}; stop it first")
    shutil.rmtree(demo.data_dir / "postgres", ignore_errors=True)
    return demo


def run_demo(
    settings: Settings, *, events_per_city: int, seed: int | None, as_json: bool, serve: bool = True
) -> None:
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 120)
    policy = load_packaged_policy()
    settings = demo_settings(settings)
    with database_roles(settings) as db, kafka(settings) as bootstrap:
        url = db.writer_url
        ledger = open_ledger(url, policy)
        sim = Simulation(policy, seed=int(time.time()) if seed is None else seed, month=12)
        phases = pooling_year(sim, events_per_city)
        simulated = [e for _, phase in phases for e in phase]
        first_title, first = phases[0]
        phases[0] = (first_title, with_faults(sim, first))
        ingestor = Ingestor(
            ledger, bootstrap, settings.events_topic, settings.consumer_group,
            settings.batch_size_max, settings.poll_timeout_ms,
            message_size_max_bytes=settings.message_size_max,
        )
        relay = Relay(ledger, bootstrap, settings.ledger_topic, settings.rejections_topic)
        started = time.monotonic()
        totals: Counter[str] = Counter()
        published = 0
        for title, phase in phases:
            messages = [m if isinstance(m, tuple) else encode(m) for m in phase]
            publish_messages(bootstrap, settings.events_topic, messages)
            published += len(messages)
            stats = consume(ingestor, relay, idle_exit_s=DEMO_IDLE_EXIT_S)
            totals.update(stats.outcomes)
            console.print(
                f"[bold]{title}[/]: {len(messages):,} messages, "
                + ", ".join(f"{n:,} {status}" for status, n in sorted(stats.outcomes.items()))
            )
        ingestor.close()
        relay.close()
        elapsed = time.monotonic() - started
        rejections = Counter(m.value["reason"] for m in read_topic(bootstrap, settings.rejections_topic))
        trial = fold((e for _, e in ledger.notifications(FUND_EVENT_TOPICS)))
        report = {
            "messages": published,
            "outcomes": dict(totals),
            "seconds": round(elapsed, 2),
            "rejections_by_reason": dict(rejections),
            "cities": city_balances(ledger, policy.cities, sim.year),
            "revision_2_flows": revision_2_flows(ledger, simulated),
            "adjustment_funds": adjustment_funds(ledger, sim.year),
            "trial_balance": trial.as_json(),
            "database_url": without_password(url),
            "kafka_bootstrap_servers": bootstrap,
        }
        with Projector(ledger, url) as projector:
            report["projected"] = projector.run_until_caught_up()
        ledger.close()
        if as_json:
            print(json.dumps(report, ensure_ascii=False, indent=2))
        else:
            print_report(console, report, trial, settings)
        if serve and not as_json:
            serve_dashboard(console, settings, url, db.reader_url, policy, sim.year)


def serve_dashboard(
    console: Console, settings: Settings, url: str, reader_url: str, policy: Policy, year: int
) -> None:
    """The demo ends by serving the treasury's dashboard on the demo's store, until Ctrl-C.

    The token is printed only when it was made for this run: a configured one is a secret.
    """
    token = api_token(settings.api_token)
    shown = token if settings.api_token is None else "<POOLING_API_TOKEN>"
    serve_api(
        url,
        host=settings.api_host,
        port=settings.api_port or free_port(),
        token=token,
        reader_url=reader_url,
        seed_policy=policy,
        on_ready=lambda base: console.print(
            f"\n[bold]Treasury dashboard:[/] {base}/dashboard?year={year}#token={shown}\n"
            f"API: {base}/docs (bearer token {shown}); stop with Ctrl-C"
        ),
    )


def adjustment_funds(ledger: Ledger, year: int) -> list[dict[str, Any]]:
    rows = []
    for scheme in ("employee", "resident"):
        fund = ledger.fund(accounts.province_adjustment(scheme))
        rows.append(
            {
                "scheme": scheme,
                "balance_fen": fund.balance_fen if fund else 0,
                "extracted_fen": {y: fund.total_fen(y, "extraction") for y in (year, year + 1)} if fund else {},
                "allocated_fen": {y: fund.total_fen(y, "allocation") for y in (year, year + 1)} if fund else {},
                "closed_income_fen": dict(fund.closed_years) if fund else {},
            }
        )
    return rows


#: The flows of RULES.md revision 2 the simulator publishes, as the report names them.
FLOWS = {
    "employee_own_contribution": "employees' own contributions (E6: personal accounts)",
    "personal_account_claim": "claims paid from personal accounts (E6)",
    "out_of_city_claim": "claims treated in another city (E7)",
    "medical_assistance": "medical assistance contributions (E8)",
    "critical_illness_premium": "major-illness premiums (E8)",
    "recovery": "recoveries from institutions (P4)",
}


def flow_of(event: dict[str, Any]) -> str | None:
    """The revision 2 flow (a key of FLOWS) an upstream event belongs to, if any."""
    kind = event.get("type")
    if kind == "ContributionReceived":
        if event.get("payer_kind") == "medical_assistance":
            return "medical_assistance"
        if (event.get("scheme"), event.get("payer_kind")) == ("employee", "individual"):
            return "employee_own_contribution"
    elif kind == "ClaimPaid":
        if event.get("paid_from") == "personal_account":
            return "personal_account_claim"
        if event.get("institution_city") not in (None, event.get("city")):
            return "out_of_city_claim"
    elif kind == "CriticalIllnessPremiumPaid":
        return "critical_illness_premium"
    elif kind == "RecoveryReceived":
        return "recovery"
    return None


def revision_2_flows(ledger: Ledger, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per revision 2 flow: the simulated events published, and those the ledger accepted (its
    receipts) with their amount."""
    published: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    accepted_fen: Counter[str] = Counter()
    seen: set[str] = set()
    for event in events:
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        flow = flow_of(event)
        if flow is None:
            continue
        published[flow] += 1
        receipt = ledger.receipt(event["event_id"])
        if receipt is not None and receipt.status == "accepted":
            accepted[flow] += 1
            accepted_fen[flow] += event["amount_fen"]
    return [
        {"flow": flow, "title": title, "published": published[flow], "accepted": accepted[flow],
         "accepted_fen": accepted_fen[flow]}
        for flow, title in FLOWS.items()
    ]


def city_balances(ledger: Ledger, cities: dict[str, str], year: int) -> list[dict[str, Any]]:
    rows = []
    for code, name in cities.items():
        row: dict[str, Any] = {"city": code, "name": name}
        personal = ledger.fund(accounts.city_personal(code))
        row["personal_balance_fen"] = personal.balance_fen if personal else 0
        for scheme in ("employee", "resident"):
            fund = ledger.fund(accounts.city_pooling(code, scheme))
            row[f"{scheme}_balance_fen"] = fund.balance_fen if fund else 0
            if fund is not None:
                row[f"{scheme}_extracted_fen"] = fund.total_fen(year, "extraction") + fund.total_fen(year + 1, "extraction")
                row[f"{scheme}_allocated_fen"] = fund.total_fen(year, "allocation")
                budget = fund.budgets.get(year)
                row[f"{scheme}_budget_execution_bp"] = (
                    formulas.budget_execution_bp(fund.claims_paid_fen(year), budget["expenditure_fen"])
                    if budget else None
                )
        rows.append(row)
    return rows


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def print_report(console: Console, report: dict[str, Any], trial: TrialBalance, settings: Settings) -> None:
    outcomes = report["outcomes"]
    console.print(
        f"consumed {report['messages']:,} messages in {report['seconds']} s: "
        f"{outcomes.get('accepted', 0):,} accepted, {outcomes.get('rejected', 0):,} rejected, "
        f"{outcomes.get('duplicate', 0):,} duplicates ignored"
    )
    table = Table(title="City pooling funds and employee personal accounts (yuan; extracted to / allocated from "
                        "the province, budget execution)")
    for column in ("city", "name", "employee", "personal", "resident", "extracted", "allocated", "resident budget"):
        table.add_column(column, justify="left" if column in ("city", "name") else "right")
    for row in report["cities"]:
        execution = row.get("resident_budget_execution_bp")
        table.add_row(
            row["city"], row["name"],
            _yuan(row["employee_balance_fen"]), _yuan(row["personal_balance_fen"]), _yuan(row["resident_balance_fen"]),
            _yuan(row.get("employee_extracted_fen", 0) + row.get("resident_extracted_fen", 0)),
            _yuan(row.get("resident_allocated_fen", 0)),
            f"{formulas.percent_text(execution)} %" if execution is not None else "-",
        )
    console.print(table)
    funds = Table(title="Provincial adjustment funds (yuan)")
    for column in ("scheme", "balance", "extracted", "allocated", "income fixed by year close"):
        funds.add_column(column, justify="left" if column == "scheme" else "right")
    for row in report["adjustment_funds"]:
        funds.add_row(
            row["scheme"], _yuan(row["balance_fen"]),
            _yuan(sum(row["extracted_fen"].values())), _yuan(sum(row["allocated_fen"].values())),
            ", ".join(f"{y}: {_yuan(v)}" for y, v in sorted(row["closed_income_fen"].items())) or "-",
        )
    console.print(funds)
    flows = Table(title="RULES revision 2 flows (yuan accepted)")
    for column in ("flow", "published", "accepted", "amount"):
        flows.add_column(column, justify="left" if column == "flow" else "right")
    for row in report["revision_2_flows"]:
        flows.add_row(row["title"], f"{row['published']:,}", f"{row['accepted']:,}", _yuan(row["accepted_fen"]))
    console.print(flows)
    reasons = Table(title=f"Rejections by reason (read back from {settings.rejections_topic})")
    reasons.add_column("reason")
    reasons.add_column("count", justify="right")
    for reason, count in sorted(report["rejections_by_reason"].items()):
        reasons.add_row(reason, str(count))
    console.print(reasons)
    print_trial_balance(console, trial)
    store = (
        f"POOLING_DATA_DIR={settings.data_dir} " if not settings.database_url else ""
    )
    console.print(
        "Where to look next:\n"
        f"  {store}./run pooling-ledger balances --json    every account's balance (sums to zero)\n"
        f"  {store}./run pooling-ledger balances --as-of 2025-12-20T00:00:00+08:00    the same, at a past instant\n"
        f"  the event store of this run: {report['database_url']}"
        + (
            f" (data in {settings.data_dir.absolute() / 'postgres'}, kept until the next demo;"
            " the roles' passwords in its *.password files)" if store else ""
        )
        + "\n"
        f"  outcomes were published to {settings.ledger_topic} and {settings.rejections_topic} "
        "(the embedded broker is memory-only and stops with the demo)"
    )


# -- three fiscal years of provincial pooling (issue 10) -----------------------------------------

#: The default size of the three-year demo: measured to finish, servers started and the read
#: tables projected, in under a minute on a 2-core machine (README).
DEFAULT_EVENTS = 50_000
DEFAULT_YEARS = (2024, 2026)
#: The publisher tells the progress bar every this many messages.
PROGRESS_EVERY = 500
#: Should the ledger never decide as many messages as were published, the consumer stops once
#: nothing arrived for this long and nothing is left on the topic.
PROVINCE_IDLE_EXIT_S = 10.0
#: How long an interrupted demo waits for the publishing thread (a full producer buffer blocks it).
PUBLISHER_JOIN_TIMEOUT_S = 10.0


class DemoProgress:
    """Messages published and decided, each with its events/s, on stderr when it is a terminal
    (and `enabled`); quiet otherwise. Told from the publishing thread and the consuming one."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.started = time.monotonic()
        console = Console(stderr=True)
        self.bar: Progress | None = None
        if enabled and console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>14}"), TimeElapsedColumn(), console=console,
            )
            self.tasks = {
                name: self.bar.add_task(name, total=total, rate="") for name in ("published", "decided")
            }

    def __enter__(self) -> Self:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def tell(self, name: str, count: int) -> None:
        if self.bar is not None:
            rate = count / max(time.monotonic() - self.started, 1e-6)
            self.bar.update(self.tasks[name], completed=count, rate=f"{rate:,.0f} events/s")


class Publisher(threading.Thread):
    """Publishes the simulated stream to the events topic, keyed by city (or province), while the
    ledger consumes it: one producer, so each key's messages keep the simulator's order."""

    def __init__(self, sim: ProvinceSimulation, bootstrap: str, topic: str, progress: DemoProgress) -> None:
        super().__init__(name="demo-publisher", daemon=True)
        self.sim, self.bootstrap, self.topic, self.progress = sim, bootstrap, topic, progress
        self.published = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=10, batch_size=512 * 1024)
        try:
            for message in self.sim:
                if self.stopping.is_set():
                    return
                producer.send(self.topic, key=message.key or None, value=message.value)
                self.published += 1
                if self.published % PROGRESS_EVERY == 0:
                    self.progress.tell("published", self.published)
            producer.flush()
            self.progress.tell("published", self.published)
        except BaseException as error:  # noqa: BLE001 - surfaced by the consuming thread
            self.error = error
        finally:
            producer.close()


class CountingIngestor(Ingestor):
    """The ingestor, telling `on_batch` the outcomes of every batch it saved."""

    def __init__(self, *args: Any, on_batch: Callable[[list[Outcome]], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_batch = on_batch

    def poll_once(self) -> list[Outcome]:
        outcomes = super().poll_once()
        if outcomes:
            self.on_batch(outcomes)
        return outcomes


def fate_of(outcome: Outcome) -> str:
    """An outcome as the simulator writes its expectation (`Expected.fate`)."""
    return outcome.status if outcome.reason is None else f"{outcome.status}:{outcome.reason}"


def province_settings(settings: Settings) -> Settings:
    """The demo's own store, and (for its own, memory-only broker) topics of one partition.

    Kafka keeps order within a partition only (docs/scaling.md), and the simulated province's
    messages depend on one another across cities through the provincial adjustment funds: an
    extraction on the room the other cities' extractions left under the ceiling (X4), an
    allocation on every city's extractions, the adjustment fund's year close and interest
    (keyed by the province) on the cities' movements before them. Upstream would publish those
    in phases, each once the previous one is decided; in one partition the ledger decides every
    message in the simulator's order and gives each the fate the simulator expects.
    """
    settings = demo_settings(settings)
    if settings.kafka_bootstrap_servers is None:
        settings = settings.model_copy(update={"topic_partitions": 1})
    return settings


def province_simulation(
    events: int = DEFAULT_EVENTS, seed: int | None = None, years: tuple[int, int] = DEFAULT_YEARS,
    bad_share: BadShare | None = None,
) -> ProvinceSimulation:
    """The demo's province under the packaged (Anhui) policy; a seed from the clock when None.
    Raises ValueError for too few events for the years."""
    seed = int(time.time()) % 1_000_000 if seed is None else seed
    return ProvinceSimulation(load_packaged_policy(), events=events, seed=seed, years=years, bad_share=bad_share)


def run_province_demo(settings: Settings, sim: ProvinceSimulation, *, as_json: bool = False, serve: bool = True) -> None:
    """The simulated province's fiscal years through the whole pipeline, then the report (and,
    unless `serve` is false or `as_json`, the dashboard until Ctrl-C)."""
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 120)
    policy, events, seed, years = sim.policy, sim.events, sim.seed, (sim.first_year, sim.last_year)
    settings = province_settings(settings)
    started = time.monotonic()
    with database_roles(settings) as db, kafka(settings) as bootstrap:
        url = db.writer_url
        partitions = partition_counts(bootstrap).get(settings.events_topic, 0)
        if partitions > 1:
            console.print(
                f"[yellow]warning:[/] {settings.events_topic} has {partitions} partitions: Kafka keeps order per "
                "partition only, so the adjustment funds' messages (extractions, allocations, closes), which depend "
                "on other cities', may be decided out of the simulator's order and meet other fates than it expects"
            )
        ledger = open_ledger(url, policy)
        decided = [0]
        fates: Counter[str] = Counter()
        with DemoProgress(events, enabled=not as_json) as progress:

            def on_batch(outcomes: list[Outcome]) -> None:
                decided[0] += len(outcomes)
                fates.update(fate_of(o) for o in outcomes)
                progress.tell("decided", decided[0])

            ingestor = CountingIngestor(
                ledger, bootstrap, settings.events_topic, settings.consumer_group,
                settings.batch_size_max, settings.poll_timeout_ms,
                message_size_max_bytes=settings.message_size_max, on_batch=on_batch,
            )
            # the relay in a thread of this process, as in the one-month demo: measured as fast here as
            # `consume`'s relay process, whose own logging would write to the report's stdout
            relay = Relay(ledger, bootstrap, settings.ledger_topic, settings.rejections_topic)
            publisher = Publisher(sim, bootstrap, settings.events_topic, progress)
            flowing = time.monotonic()
            publisher.start()
            try:
                stats = consume(
                    ingestor, relay, idle_exit_s=PROVINCE_IDLE_EXIT_S,
                    should_stop=lambda: decided[0] >= events or publisher.error is not None,
                )
            finally:
                publisher.stopping.set()
                publisher.join(PUBLISHER_JOIN_TIMEOUT_S)
                ingestor.close()
                relay.close()
        if publisher.error is not None:
            raise RuntimeError("publishing the simulated province failed") from publisher.error
        flowed = time.monotonic() - flowing
        with Projector(ledger, url) as projector:
            projected = projector.run_until_caught_up()
        trial = fold((e for _, e in ledger.notifications(FUND_EVENT_TOPICS)))
        rejections = Counter(m.value["reason"] for m in read_topic(bootstrap, settings.rejections_topic))
        first, last = years
        expected = dict(sorted(sim.totals.by_fate.items()))
        report = {
            "years": [first, last],
            "seed": seed,
            "events": events,
            "published": publisher.published,
            "decided": decided[0],
            "outcomes": dict(stats.outcomes),
            "fates": dict(sorted(fates.items())),
            "expected_fates": expected,
            "as_expected": dict(sorted(fates.items())) == expected,
            "rejections_by_reason": dict(sorted(stats.reasons.items())),
            "rejections_read_back": dict(sorted(rejections.items())),
            "flow_seconds": round(flowed, 2),
            "events_per_second": round(decided[0] / max(flowed, 1e-6)),
            "province": province_years(url, first, last),
            "allocations": allocations(ledger, policy.cities, first, last),
            "cities": city_balances(ledger, policy.cities, last),
            "adjustment_funds": adjustment_funds_by_year(ledger, first, last),
            "trial_balance": trial.as_json(),
            "projected": projected,
            "seconds": round(time.monotonic() - started, 2),
            "database_url": without_password(url),
            "kafka_bootstrap_servers": bootstrap,
        }
        ledger.close()
        if as_json:
            print(json.dumps(report, ensure_ascii=False, indent=2))
        else:
            print_province_report(console, report, trial, settings, policy)
        if serve and not as_json:
            serve_dashboard(console, settings, url, db.reader_url, policy, last)


def year_end(year: int) -> datetime:
    return datetime(year, 12, 31, 23, 59, 59, tzinfo=CHINA_STANDARD_TIME)


def province_years(url: str, first: int, last: int) -> list[dict[str, Any]]:
    """Per fiscal year and scheme, what the dashboard shows of the province at the year's end
    (`GET /v1/province/summary?year=Y&as_of=Y-12-31T23:59:59+08:00`, from the read tables): the
    adjustment fund against its ceiling, extracted from and allocated to the cities."""
    rows = []
    with psycopg.connect(url) as conn:
        for year in range(first, last + 1):
            summary = queries.province_summary(conn, year, year_end(year))
            rows += [{"year": year, **s} for s in summary["schemes"]]
    return rows


def allocations(ledger: Ledger, cities: dict[str, str], first: int, last: int) -> list[dict[str, Any]]:
    """The allocations each city pooling fund received from the province (X5) per fiscal year, with
    what it remitted to the province that year."""
    rows = []
    for scheme in ("resident", "employee"):
        for code, name in cities.items():
            fund = ledger.fund(accounts.city_pooling(code, scheme))
            if fund is None:
                continue
            for year in range(first, last + 1):
                if allocated := fund.total_fen(year, ALLOCATION_CATEGORY):
                    rows.append({"year": year, "scheme": scheme, "city": code, "name": name, "allocated_fen": allocated,
                                 "extracted_fen": fund.total_fen(year, EXTRACTION_CATEGORY)})
    return sorted(rows, key=lambda r: (r["year"], r["scheme"] != "resident", r["city"]))


def adjustment_funds_by_year(ledger: Ledger, first: int, last: int) -> list[dict[str, Any]]:
    rows = []
    for scheme in ("employee", "resident"):
        fund = ledger.fund(accounts.province_adjustment(scheme))
        rows.append(
            {
                "scheme": scheme,
                "balance_fen": fund.balance_fen if fund else 0,
                "extracted_fen": {y: fund.total_fen(y, EXTRACTION_CATEGORY) if fund else 0 for y in range(first, last + 1)},
                "allocated_fen": {y: fund.total_fen(y, ALLOCATION_CATEGORY) if fund else 0 for y in range(first, last + 1)},
                "closed_income_fen": dict(fund.closed_years) if fund else {},
            }
        )
    return rows


def _percent(part: int, whole: int) -> str:
    """part / whole as a percentage with one decimal, by integer arithmetic ("-" without a whole)."""
    if whole <= 0:
        return "-"
    tenths = part * 1000 // whole
    return f"{tenths // 10}.{tenths % 10} %"


def print_province_report(
    console: Console, report: dict[str, Any], trial: TrialBalance, settings: Settings, policy: Policy
) -> None:
    first, last = report["years"]
    outcomes = report["outcomes"]
    console.print(
        f"[bold]Fiscal years {first}-{last}[/] (seed {report['seed']}): {report['published']:,} messages published "
        f"and {report['decided']:,} decided in {report['flow_seconds']} s ({report['events_per_second']:,} events/s): "
        f"{outcomes.get('accepted', 0):,} accepted, {outcomes.get('rejected', 0):,} rejected, "
        f"{outcomes.get('duplicate', 0):,} duplicates ignored"
    )
    if report["as_expected"]:
        console.print("every fate is the one the simulator expected (accepted, duplicate, rejected by reason)")
    else:
        differ = sorted(set(report["fates"]) | set(report["expected_fates"]))
        console.print(
            "[red]fates differ from the simulator's expectations:[/] "
            + ", ".join(f"{f} {report['fates'].get(f, 0)} (expected {report['expected_fates'].get(f, 0)})"
                        for f in differ if report["fates"].get(f, 0) != report["expected_fates"].get(f, 0))
        )
    starts = ", ".join(f"{s.value}s' from {d.isoformat()}" for s, d in sorted(policy.adjustment_from.items(), key=lambda item: item[1]))
    years = Table(
        title="Provincial pooling year by year: the adjustment funds at each year's end (yuan)",
        caption=f"The adjustment funds work from their phase on (X1): {starts}; the ceiling is "
                f"{formulas.percent_text(policy.pause_ratio_bp)} % of the province's collected income of the year before (X4).",
    )
    for column in ("year", "scheme", "extracted from cities", "allocated to cities", "adjustment fund",
                   "ceiling", "of ceiling", "city pooling funds"):
        years.add_column(column, justify="left" if column in ("year", "scheme") else "right")
    for row in report["province"]:
        operating = row["extracted_fen"] or row["allocated_fen"] or row["adjustment_fund_fen"]
        years.add_row(
            str(row["year"]), row["scheme"],
            _yuan(row["extracted_fen"]) if operating else "not yet",
            _yuan(row["allocated_fen"]), _yuan(row["adjustment_fund_fen"]), _yuan(row["ceiling_fen"]),
            _percent(row["adjustment_fund_fen"], row["ceiling_fen"]), _yuan(row["city_balances_fen"]),
        )
    console.print(years)
    gaps = Table(title="Allocations to cities with gaps (X5, yuan)")
    for column in ("year", "scheme", "city", "name", "allocated", "extracted that year"):
        gaps.add_column(column, justify="right" if column in ("allocated", "extracted that year") else "left")
    for row in report["allocations"]:
        gaps.add_row(str(row["year"]), row["scheme"], row["city"], row["name"], _yuan(row["allocated_fen"]),
                     _yuan(row["extracted_fen"]))
    console.print(gaps)
    table = Table(title=f"City pooling funds and employee personal accounts at the end of {last} (yuan)")
    for column in ("city", "name", "employee", "personal", "resident", f"resident budget {last}"):
        table.add_column(column, justify="left" if column in ("city", "name") else "right")
    for row in report["cities"]:
        execution = row.get("resident_budget_execution_bp")
        table.add_row(
            row["city"], row["name"], _yuan(row["employee_balance_fen"]), _yuan(row["personal_balance_fen"]),
            _yuan(row["resident_balance_fen"]),
            f"{formulas.percent_text(execution)} %" if execution is not None else "-",
        )
    console.print(table)
    expected = {f.split(":", 1)[1]: n for f, n in report["expected_fates"].items() if f.startswith("rejected:")}
    reasons = Table(title=f"Rejections by reason: expected, decided, read back from {settings.rejections_topic}")
    reasons.add_column("reason")
    for column in ("expected", "decided", "read back"):
        reasons.add_column(column, justify="right")
    for reason in sorted(expected.keys() | report["rejections_by_reason"].keys() | report["rejections_read_back"].keys()):
        reasons.add_row(reason, str(expected.get(reason, 0)), str(report["rejections_by_reason"].get(reason, 0)),
                        str(report["rejections_read_back"].get(reason, 0)))
    console.print(reasons)
    print_trial_balance(console, trial)
    store = f"POOLING_DATA_DIR={settings.data_dir} " if not settings.database_url else ""
    console.print(
        f"{report['projected']:,} notifications projected; {report['seconds']} s in all.\n"
        "Where to look next:\n"
        f"  {store}./run pooling-ledger statement --year {last}    the annual fund statement (also {first}, ...)\n"
        f"  {store}./run pooling-ledger verify    the auditor's checks and the fingerprint of this history\n"
        f"  the event store of this run: {report['database_url']}"
        + (f" (data in {settings.data_dir.absolute() / 'postgres'}, kept until the next demo)" if store else "")
    )


def print_trial_balance(console: Console, trial: TrialBalance) -> None:
    kinds: dict[str, int] = {}
    for account, balance in trial.balances_fen.items():
        kind = ":".join(account.split(":")[:2]) if account.startswith("external") else account.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + balance
    tb = Table(title="Trial balance by account group (yuan)")
    tb.add_column("accounts")
    tb.add_column("balance", justify="right")
    for kind, balance in sorted(kinds.items()):
        tb.add_row(kind, _yuan(balance))
    tb.add_row("[bold]total (must be 0)[/]", f"[bold]{_yuan(trial.total_fen)}[/]")
    console.print(tb)
