"""`pooling-ledger demo`: a simulated province flowing through Kafka, the ledger and back."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from typing import Any

from kafka import KafkaProducer
from rich.console import Console
from rich.table import Table

from consumers.ingest import Ingestor
from consumers.relay import Relay
from consumers.runner import consume
from consumers.topics import read_topic
from ledger import accounts, formulas
from ledger.application import Ledger
from ledger.audit import FUND_EVENT_TOPICS, TrialBalance, fold
from ledger.policy import load_packaged_policy
from pooling_ledger.embedded import free_port
from pooling_ledger.services import database_roles, kafka
from pooling_ledger.settings import Settings
from pooling_ledger.simulate import Message, Simulation, encode, pooling_year, with_faults
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
        projector = Projector(ledger, url)
        report["projected"] = projector.run_until_caught_up()
        projector.close()
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
