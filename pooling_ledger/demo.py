"""`pooling-ledger demo`: a simulated province flowing through Kafka, the ledger and back."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from rich.console import Console
from rich.table import Table

from consumers.ingest import Ingestor
from consumers.relay import Relay
from consumers.runner import consume
from consumers.store import open_ledger
from ledger import accounts
from ledger.application import Ledger
from ledger.audit import FUND_EVENT_TOPICS, TrialBalance, fold
from ledger.policy import load_packaged_policy
from pooling_ledger.services import database, kafka
from pooling_ledger.settings import Settings
from pooling_ledger.simulate import Message, Simulation, with_faults

DEMO_IDLE_EXIT_S = 1.5
READ_BACK_TIMEOUT_MS = 1000
READ_BACK_POLLS_MAX = 30


def publish_messages(bootstrap: str, topic: str, messages: list[Message]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10, batch_size=512 * 1024)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every message on `topic`, from the start to the end offsets seen now."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        values: list[dict[str, Any]] = []
        for _ in range(READ_BACK_POLLS_MAX):
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
            for records in consumer.poll(timeout_ms=READ_BACK_TIMEOUT_MS).values():
                values.extend(json.loads(r.value) for r in records)
        return values
    finally:
        consumer.close()


def run_demo(settings: Settings, *, events_per_city: int, seed: int, as_json: bool) -> None:
    console = Console(stderr=as_json)
    policy = load_packaged_policy()
    with database(settings) as url, kafka(settings) as bootstrap:
        ledger = open_ledger(url, policy)
        sim = Simulation(policy, seed=seed + int(time.time()))
        messages = with_faults(sim, sim.clean_stream(events_per_city, opening_balance_fen_max=5 * 10**9))
        console.print(f"[bold]publishing[/] {len(messages):,} upstream messages to {settings.events_topic} at {bootstrap}")
        started = time.monotonic()
        publish_messages(bootstrap, settings.events_topic, messages)
        ingestor = Ingestor(
            ledger, bootstrap, settings.events_topic, settings.consumer_group,
            settings.batch_size_max, settings.poll_timeout_ms,
        )
        relay = Relay(ledger, bootstrap, settings.ledger_topic, settings.rejections_topic)
        stats = consume(ingestor, relay, idle_exit_s=DEMO_IDLE_EXIT_S)
        ingestor.close()
        relay.close()
        elapsed = time.monotonic() - started
        rejections = Counter(m["reason"] for m in read_topic(bootstrap, settings.rejections_topic))
        trial = fold((e for _, e in ledger.notifications(FUND_EVENT_TOPICS)))
        report = {
            "messages": len(messages),
            "outcomes": dict(stats.outcomes),
            "seconds": round(elapsed, 2),
            "rejections_by_reason": dict(rejections),
            "cities": city_balances(ledger, policy.cities),
            "trial_balance": trial.as_json(),
            "database_url": url,
            "kafka_bootstrap_servers": bootstrap,
        }
        ledger.close()
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return
    print_report(console, report, trial, settings)


def city_balances(ledger: Ledger, cities: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for code, name in cities.items():
        row: dict[str, Any] = {"city": code, "name": name}
        for scheme in ("employee", "resident"):
            fund = ledger.fund(accounts.city_pooling(code, scheme))
            row[f"{scheme}_balance_fen"] = fund.balance_fen if fund else 0
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
    table = Table(title="City pooling funds (yuan)")
    for column in ("city", "name", "employee", "resident"):
        table.add_column(column, justify="right" if column in ("employee", "resident") else "left")
    for row in report["cities"]:
        table.add_row(row["city"], row["name"], _yuan(row["employee_balance_fen"]), _yuan(row["resident_balance_fen"]))
    console.print(table)
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
    console.print(
        "Where to look next:\n"
        f"  pooling-ledger balances --json      every account (trial balance), from {report['database_url']}\n"
        f"  topics {settings.ledger_topic} and {settings.rejections_topic} on {report['kafka_bootstrap_servers']} "
        "(the embedded broker stops with the demo)\n"
        f"  the event store stays in {settings.data_dir.absolute() / 'postgres'} (run the demo again to add a month)"
    )
