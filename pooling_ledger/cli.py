"""`pooling-ledger`: the command line of the provincial pooling ledger."""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from pooling_ledger.logs import configure_logging
from pooling_ledger.processes import collect_garbage_for_throughput
from pooling_ledger.settings import Settings

app = typer.Typer(
    help=(
        "Event-sourced ledger of a province's basic medical insurance funds under provincial "
        "pooling. Configuration comes from environment variables (DATABASE_URL, "
        "KAFKA_BOOTSTRAP_SERVERS, POOLING_*); unset service URLs mean the embedded servers."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
schemas_app = typer.Typer(help="The wire contract's JSON Schema files.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _stop_flag() -> list[bool]:
    """A flag set by SIGTERM/SIGINT: the current batch finishes, then the loop stops.

    A second signal interrupts at once (KeyboardInterrupt): the embedded servers are still
    stopped on the way out, and the stored positions make the next run redo nothing.
    """
    flag = [False]

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return flag


def _interrupt_on_sigterm() -> None:
    """SIGTERM (systemd, `kill`) stops like Ctrl-C does: a KeyboardInterrupt unwinds the command.

    Python's default SIGTERM ends the process on the spot, leaving the embedded PostgreSQL
    it started running; uvicorn, which catches SIGTERM while serving, raises it again once
    it shut down, and then it comes here.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@app.command()
def demo(
    events: Annotated[
        int,
        typer.Option(
            "--events", "-n", min=1_000, max=10_000_000,
            help="Messages over the fiscal years, exactly (at least 1,000 a year); the default finishes in "
            "under a minute on two cores.",
        ),
    ] = 50_000,  # pooling_ledger.demo.DEFAULT_EVENTS
    years: Annotated[
        str, typer.Option(help="Fiscal years FIRST-LAST of the simulated province; each is closed the January after.")
    ] = "2024-2026",
    bad_share: Annotated[
        str,
        typer.Option(
            "--bad-share",
            help="Share of messages that are duplicates, invalid, rule-breaking or late, as for `simulate`.",
        ),
    ] = "0.01",
    events_per_city: Annotated[
        int | None,
        typer.Option(
            min=1, max=100_000,
            help="Run the one-month demo instead (a simulated December 2025 in phases): movements per city.",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed of the simulation (default: a new one each run; the report names it).")
    ] = None,
    as_json: JsonFlag = False,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Exit after the report instead of serving the dashboard.")
    ] = False,
) -> None:
    """Run the simulated province (fiscal years 2024-2026) through Kafka, the ledger and the read side.

    Starts the embedded PostgreSQL and Kafka-protocol broker (unless DATABASE_URL /
    KAFKA_BOOTSTRAP_SERVERS are set), publishes the simulated province's messages
    (pooling_ledger/province.py, the events of `simulate`) while the ledger consumes them and
    relays its outcomes, with a progress bar on a terminal; projects the treasury's read tables;
    prints the province year by year (the adjustment funds against their ceilings: residents'
    from 2025, employees' from 2026), the allocations to cities with gaps, the rejections by
    reason beside the simulator's expectations and the trial balance. Then it serves the
    dashboard until Ctrl-C (not with --no-serve or --json). With --events-per-city, the
    one-month demo instead.
    """
    from pooling_ledger.demo import province_simulation, run_demo, run_province_demo
    from pooling_ledger.province import BadShare, parse_years

    settings = _settings()
    _interrupt_on_sigterm()
    if "POOLING_LOG_LEVEL" not in os.environ:  # the report tells the story; keep warnings only
        # (errors only for the province: its hundreds of rejections are counted in the report)
        configure_logging(settings.log_format, "warning" if events_per_city is not None else "error")
    if events_per_city is not None:
        run_demo(
            settings, events_per_city=events_per_city, seed=seed, as_json=as_json, serve=not no_serve
        )
        return
    try:
        sim = province_simulation(events, seed, parse_years(years), BadShare.parse(bad_share))
    except ValueError as error:  # years, shares, or too few events for the years
        _fail(str(error))
    run_province_demo(settings, sim, as_json=as_json, serve=not no_serve)


@app.command()
def consume(
    idle_exit: Annotated[
        float | None,
        typer.Option(help="Stop once no message arrived for this many seconds and the lag is 0."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535,
            help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics (events by fate and "
            "reason, unprocessable, batch latency, consumer lag per partition, relay backlog, "
            "projection lag, retries).",
        ),
    ] = None,
) -> None:
    """Consume pooling.events.v1 into the ledger and publish outcomes, until SIGTERM/SIGINT.

    Each poll batch is saved with its Kafka positions in one PostgreSQL transaction; a
    restart continues from the stored positions, so nothing is lost or booked twice.
    With POOLING_CONSUMER_MODE=group, several consumers share the partitions through a
    Kafka consumer group (named POOLING_CONSUMER_GROUP).
    """
    from consumers.ingest import Ingestor
    from consumers.metrics import count_retry
    from consumers.runner import RelayProcess
    from consumers.runner import consume as consume_loop
    from pooling_ledger.services import database, kafka
    from storage import DatabaseRetry, open_ledger

    settings = _settings()
    stop = _stop_flag()
    with database(settings) as url, kafka(settings) as bootstrap:
        ledger = open_ledger(url, _seed_policy(settings))
        if metrics_port is not None:
            _serve_consumer_metrics(metrics_port, ledger, url)
        ingestor = Ingestor(
            ledger, bootstrap, settings.events_topic, settings.consumer_group,
            settings.batch_size_max, settings.poll_timeout_ms, group=settings.consumer_mode == "group",
            message_size_max_bytes=settings.message_size_max,
        )
        # the relay runs in a process of its own: booking and publishing each get a core
        relay = RelayProcess(
            url, bootstrap, settings.ledger_topic, settings.rejections_topic,
            db_retry_max_s=settings.db_retry_max_s,
        )
        try:
            stats = consume_loop(
                ingestor, relay, should_stop=lambda: stop[0], idle_exit_s=idle_exit,
                retry=DatabaseRetry(max_s=settings.db_retry_max_s, on_retry=count_retry),
                between_batches=collect_garbage_for_throughput(),
            )
        finally:
            ingestor.close()
            ledger.close()
    typer.echo(json.dumps({"batches": stats.batches, **dict(stats.outcomes)}))


def _serve_consumer_metrics(port: int, ledger: Any, url: str) -> None:
    """The consumer's metrics, plus two figures read from PostgreSQL at each scrape."""
    import psycopg

    from consumers.metrics import REGISTRY, ReadingCollector, serve_metrics
    from consumers.relay import RELAY_NAME
    from projections.projector import LagCounter
    from storage import ledger_recorder

    recorder = ledger_recorder(ledger)
    projection_lag = LagCounter()

    def relay_backlog() -> int:
        last = recorder.max_notification_id() or 0
        return max(0, last - (recorder.max_tracking_id(RELAY_NAME) or 0))

    def projection_lag_now() -> int | None:
        with psycopg.connect(url, connect_timeout=2) as conn:
            exists = conn.execute("SELECT to_regclass('pl_tracking') IS NOT NULL").fetchone()
            return projection_lag(conn) if exists and exists[0] else None

    REGISTRY.register(ReadingCollector({
        "pooling_relay_backlog_notifications": (
            "Notifications recorded and not yet gone through the relay to the outcome topics.",
            relay_backlog,
        ),
        "pooling_projection_lag_notifications": (
            "Notifications the read tables have not applied yet.", projection_lag_now,
        ),
    }))
    serve_metrics(port)


@app.command()
def project(
    until_caught_up: Annotated[
        bool, typer.Option("--until-caught-up", help="Stop once every recorded event is projected.")
    ] = False,
) -> None:
    """Feed the treasury's read tables from the ledger's notification log, until SIGTERM/SIGINT.

    Each page is applied with its position in one transaction: a restart double-counts nothing.
    """
    from pooling_ledger.services import database
    from projections.projector import Projector
    from projections.service import project_loop
    from storage import DatabaseRetry, open_ledger

    settings = _settings()
    stop = _stop_flag()
    with database(settings) as url:
        ledger = open_ledger(url, _seed_policy(settings))
        projector = Projector(ledger, url)
        try:
            applied = project_loop(
                projector, lambda: stop[0], idle_exit=until_caught_up,
                retry=DatabaseRetry(max_s=settings.db_retry_max_s),
            )
            lag = projector.lag()
        finally:
            projector.close()
            ledger.close()
    typer.echo(json.dumps({"projected": applied, "lag": lag}))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (default POOLING_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default POOLING_API_PORT; 0 = any free port).")] = None,
    no_project: Annotated[
        bool, typer.Option("--no-project", help="Do not run the projector in this process.")
    ] = False,
) -> None:
    """Serve the read API (/v1, OpenAPI at /docs) and the dashboard (/dashboard) until interrupted.

    Reads go through the read-only role POOLING_READER_ROLE. Every /v1 call needs the bearer
    token POOLING_API_TOKEN; without one, a random token is made for this run and printed
    with the dashboard's link.
    """
    from pooling_ledger.embedded import free_port
    from pooling_ledger.services import database_roles
    from projections.service import api_token
    from projections.service import serve as serve_api
    from storage import DatabaseRetry

    settings = _settings()
    _interrupt_on_sigterm()
    token = api_token(settings.api_token)
    chosen_port = port if port is not None else settings.api_port
    with database_roles(settings) as db:
        serve_api(
            db.writer_url,
            host=host or settings.api_host,
            port=chosen_port or free_port(),
            token=token,
            reader_url=db.reader_url,
            seed_policy=_seed_policy(settings),
            project=not no_project,
            on_ready=lambda base: typer.echo(_serving_message(base, token, settings.api_token is None)),
            retry=DatabaseRetry(max_s=settings.db_retry_max_s),
        )


def _serving_message(base: str, token: str, generated: bool) -> str:
    """Where to look; the token only when it was made for this run (a configured one is a secret)."""
    if generated:
        return (
            f"dashboard: {base}/dashboard#token={token}\n"
            f"API:       {base}/v1/... with 'Authorization: Bearer {token}'"
            " (a token made for this run; set POOLING_API_TOKEN to choose one)"
            f"\nOpenAPI:   {base}/docs\nstop with Ctrl-C"
        )
    return (
        f"dashboard: {base}/dashboard#token=<POOLING_API_TOKEN>\n"
        f"API:       {base}/v1/... with 'Authorization: Bearer <POOLING_API_TOKEN>'"
        f"\nOpenAPI:   {base}/docs\nstop with Ctrl-C"
    )


@app.command("prepare-db")
def prepare_db() -> None:
    """Create the ledger's tables, its writer role and its read-only role, as the database's admin.

    The admin is DATABASE_ADMIN_URL (then DATABASE_URL names the writer role and its password),
    or DATABASE_URL, or the embedded server's superuser. Other commands do the same on start,
    unless DATABASE_URL is the writer's own: then this command must have run before.
    """
    from pooling_ledger.services import database_roles
    from storage.roles import without_password

    settings = _settings()
    with database_roles(settings) as db:
        typer.echo(json.dumps({"writer": without_password(db.writer_url), "reader": without_password(db.reader_url)}))


@app.command()
def publish(
    file: Annotated[Path, typer.Argument(help="JSON Lines file: one upstream event per line.")],
    topic: Annotated[str | None, typer.Option(help="Topic (default POOLING_EVENTS_TOPIC).")] = None,
) -> None:
    """Publish upstream events from a JSON Lines file to pooling.events.v1, keyed by city.

    Lines are sent as they are (the ledger validates and rejects with reasons); the key
    is the line's `city`, or its `province` for province-level events.
    """
    from kafka import KafkaProducer

    from pooling_ledger.services import ServiceUnavailable, kafka
    from pooling_ledger.simulate import key_of

    settings = _settings()
    if not file.is_file():
        _fail(f"{file}: no such file")
    try:
        with kafka(settings, start=False) as bootstrap:
            producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
            count = 0
            with file.open("rb") as lines:
                for line in lines:
                    raw = line.rstrip(b"\r\n")
                    if not raw.strip():
                        continue
                    try:
                        parsed = json.loads(raw)
                        key = key_of(parsed) if isinstance(parsed, dict) else b""
                    except ValueError:
                        key = b""
                    producer.send(topic or settings.events_topic, key=key or None, value=raw)
                    count += 1
            producer.flush()
            producer.close()
    except ServiceUnavailable as error:
        _fail(str(error))
    typer.echo(json.dumps({"published": count, "topic": topic or settings.events_topic}))


@app.command()
def balances(
    as_json: JsonFlag = False,
    as_of_text: Annotated[
        str | None,
        typer.Option("--as-of", help="Business time, RFC 3339 with its offset, e.g. 2025-03-31T23:59:59+08:00; "
                     "default: now."),
    ] = None,
) -> None:
    """Every account's balance (the trial balance), replayed from the event store; sums to zero."""
    from ledger.audit import fold
    from storage import open_ledger

    settings = _settings()
    as_of = None
    if as_of_text is not None:
        try:
            as_of = datetime.fromisoformat(as_of_text)
        except ValueError:
            _fail(f"--as-of {as_of_text!r} is not a time; expected e.g. 2025-03-31T23:59:59+08:00")
        if as_of is None or as_of.tzinfo is None:
            _fail("--as-of needs an offset, e.g. 2025-03-31T23:59:59+08:00")
    from pooling_ledger.services import database

    with database(settings) as url:
        ledger = open_ledger(url, _seed_policy(settings))
        from ledger.audit import FUND_EVENT_TOPICS

        trial = fold((e for _, e in ledger.notifications(FUND_EVENT_TOPICS)), as_of=as_of)
        ledger.close()
    if as_json:
        typer.echo(json.dumps(trial.as_json(), ensure_ascii=False, indent=2))
        return
    for row in trial.as_json()["accounts"]:
        typer.echo(f"{row['account']:<55} {row['balance_fen']:>20,}")
    typer.echo(f"{'total (must be 0)':<55} {trial.total_fen:>20,}")


@app.command()
def verify(
    expect: Annotated[
        str | None, typer.Option(help="A fingerprint kept from an earlier verify: prove nothing changed.")
    ] = None,
    up_to: Annotated[
        int | None, typer.Option(help="Fingerprint history up to this notification id (with --expect).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Audit the event store and print a fingerprint of its history.

    Checks that the replayed trial balance is zero, every fund matches the replay, the
    read tables match it, and the store is still append-only. Exits 1 when a check fails.
    """
    from eventsourcing.persistence import ProgrammingError

    from pooling_ledger.services import database
    from pooling_ledger.verify import verify as run_verify
    from storage import open_ledger

    settings = _settings()
    with database(settings, as_found=True) as url:
        ledger = open_ledger(url, _seed_policy(settings), create_tables=False)
        try:
            result = run_verify(ledger, url, expect=expect, up_to=up_to)
        except ProgrammingError as error:
            _fail(f"no ledger to verify at this database ({error})")
        finally:
            ledger.close()
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
    else:
        for name, ok in result.checks.items():
            typer.echo(f"{'ok  ' if ok else 'FAIL'} {name}")
        for problem in result.problems:
            typer.echo(f"     {problem}")
        typer.echo(
            f"fingerprint {result.facts['fingerprint']} over {result.facts['events']:,} events "
            f"(up to notification {result.facts['last_notification_id']})"
        )
        chain = result.facts.get("chain") or {}
        if chain.get("latest_link"):
            link = chain["latest_link"]
            typer.echo(
                f"chain link {link['link_id']} {link['digest']} (up to notification "
                f"{link['last_notification_id']}); recomputed {chain['recomputed_digest']}"
            )
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def replay(
    as_json: JsonFlag = False,
    until: Annotated[str | None, typer.Option(
        help="Decide only the inputs dated (occurred_at) up to this business instant (RFC 3339 with "
        "offset), plus every policy adoption, in recorded order; print the trial balance as of it.",
    )] = None,
    policy: Annotated[Path | None, typer.Option(
        help="What if this policy file (like ledger/policies/anhui.json) had decided the history: "
        "the fates that change, by city and scheme, and the balances, recorded and what-if.",
    )] = None,
    keep_adoptions: Annotated[bool, typer.Option(
        "--keep-adoptions", help="With --policy: decide the recorded policy adoptions as recorded "
        "(default: skip them, the file's policy throughout).",
    )] = False,
) -> None:
    """Decide every recorded event again and compare the fates and balances.

    Each event is decided from the payload its receipt kept, on a fresh in-memory ledger
    seeded with the same policy. Exits 1 when anything differs: the numbers must follow
    from the inputs and the rules alone. With --until or --policy it answers instead of
    checking (exit 0): see pooling_ledger/whatif.py. Nothing is ever written to the store.
    """
    from pooling_ledger import whatif
    from pooling_ledger.replay import replay as run_replay
    from pooling_ledger.services import database
    from storage import open_ledger

    settings = _settings()
    try:
        until_at = whatif.parse_until(until) if until is not None else None
        what_if = whatif.load_what_if_policy(policy) if policy is not None else None
    except ValueError as error:
        _fail(str(error))
    if keep_adoptions and policy is None:
        _fail("--keep-adoptions goes with --policy")
    configure_logging(settings.log_format, "error")  # the replayed rejections are not news
    again = None
    with database(settings, as_found=True) as url:
        ledger = open_ledger(url, _seed_policy(settings), create_tables=False)
        full_collection = collect_garbage_for_throughput()
        try:
            with whatif.progress_bar(not as_json, "replaying") as bar:

                def progress(decisions: int, position: int, last: int) -> None:  # after each batch
                    full_collection()
                    if bar is not None:
                        bar(decisions, position, last)

                if until_at is None and what_if is None:
                    result = run_replay(ledger, settings.message_size_max, progress=progress)
                else:
                    again = whatif.decide_again(
                        ledger, policy=what_if, until=until_at, keep_adoptions=keep_adoptions,
                        message_size_max_bytes=settings.message_size_max, progress=progress,
                    )
        finally:
            ledger.close()
    if again is not None:
        if as_json:
            typer.echo(json.dumps(again.as_json(policy), indent=2, ensure_ascii=False))
        else:
            from rich.console import Console

            whatif.render(again, Console(), policy)
        return
    if as_json:
        typer.echo(json.dumps(result.as_json(), indent=2))
    else:
        typer.echo(
            f"replayed {result.decisions:,} decisions and compared {result.funds_compared} funds: "
            + ("the same" if result.ok else f"{len(result.differences)} differences")
        )
        for difference in result.differences:
            typer.echo(f"  {difference}")
    if not result.ok:
        raise typer.Exit(1)


JOURNAL_COLUMNS = (
    "notification_id", "event_id", "type", "debit_account", "credit_account", "amount_fen",
    "category", "fiscal_year", "occurred_at", "reversal_of", "prior_year_adjustment",
)


#: The journal's columns in Parquet (pyarrow's type factories); the others are strings.
JOURNAL_PARQUET_TYPES = {"notification_id": "int64", "amount_fen": "int64", "fiscal_year": "int32",
                         "prior_year_adjustment": "bool_"}
JOURNAL_PARQUET_BATCH = 50_000
PARQUET_INSTALL = "pip install 'pooling-ledger[parquet]'"
EXPORT_FORMATS = {"journal": ("csv", "parquet"), "events": ("jsonl",), "statement": ("csv", "xlsx", "json")}


@app.command()
def export(
    what: Annotated[
        str,
        typer.Argument(help="journal: every accepted transfer (CSV, or Parquet); events: every stored event as "
                       "JSON Lines; statement: the annual fund statement (as the `statement` command)."),
    ],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default stdout).")] = None,
    year: Annotated[
        int | None,
        typer.Option(min=1900, max=2200, help="journal: only the transfers of this fiscal year (default all); "
                     "statement: its fiscal year (required)."),
    ] = None,
    format_: Annotated[
        str | None,
        typer.Option("--format", help="journal: csv (default) or parquet (needs the `parquet` extra and -o); "
                     "statement: csv (default), xlsx (needs -o) or json; events: jsonl."),
    ] = None,
    city: Annotated[str | None, typer.Option(help="statement: one city's statements (its code).")] = None,
    scheme: Annotated[str | None, typer.Option(help="statement: employee or resident (default both).")] = None,
) -> None:
    """Export the ledger for auditors and archives.

    The journal and the events come straight from the event store; the statement from the read
    tables, brought up to date first (see `statement`).
    """
    import csv

    from consumers.relay import RECEIPT_TOPICS
    from ledger.aggregates import Receipt
    from pooling_ledger.services import database
    from storage import open_ledger

    if what not in EXPORT_FORMATS:
        _fail(f"unknown export {what!r}: choose journal, events or statement")
    chosen = format_ or EXPORT_FORMATS[what][0]
    if chosen not in EXPORT_FORMATS[what]:
        _fail(f"export {what} writes {' or '.join(EXPORT_FORMATS[what])}, not {chosen!r}")
    if what == "statement":
        if year is None:
            _fail("export statement needs --year")
        _write_statement(year, city, scheme, chosen, output, project=True)
        return
    if city is not None or scheme is not None:
        _fail("--city and --scheme are options of export statement")
    if what == "events" and year is not None:
        _fail("--year is an option of export journal and export statement")
    parquet = _parquet_journal(output) if chosen == "parquet" else None
    settings = _settings()
    target = output.open("w", encoding="utf-8", newline="") if output and parquet is None else sys.stdout
    count = 0
    try:
        with database(settings, as_found=True) as url:
            ledger = open_ledger(url, _seed_policy(settings), create_tables=False)
            if what == "journal":
                writer = csv.writer(target) if parquet is None else None
                if writer is not None:
                    writer.writerow(JOURNAL_COLUMNS)
                for notification_id, event in ledger.notifications(RECEIPT_TOPICS[:1]):
                    if not isinstance(event, Receipt.Accepted):
                        continue
                    for booked in (event.transfer, getattr(event, "split", None)):  # E6: two for a split
                        if booked is None or (year is not None and booked["fiscal_year"] != year):
                            continue
                        row = {"notification_id": notification_id, "type": event.event_type, **booked}
                        if writer is not None:
                            writer.writerow(["" if row.get(c) is None else row.get(c) for c in JOURNAL_COLUMNS])
                        else:
                            parquet.add({c: row.get(c) for c in JOURNAL_COLUMNS})  # type: ignore[union-attr]
                        count += 1
            else:
                for n in ledger.stored_notifications():
                    record = {
                        "notification_id": n.id, "originator_id": str(n.originator_id),
                        "originator_version": n.originator_version, "topic": n.topic,
                        "state": json.loads(n.state),
                    }
                    target.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                    count += 1
            ledger.close()
    finally:
        if parquet is not None:
            parquet.close()
        elif output:
            target.close()
    typer.echo(f"exported {count:,} {'transfers' if what == 'journal' else 'events'}", err=True)


class _ParquetJournal:
    """The journal written to a Parquet file in row groups of JOURNAL_PARQUET_BATCH transfers."""

    def __init__(self, path: Path, pa: Any, pq: Any) -> None:
        self.pa = pa
        self.schema = pa.schema([(c, getattr(pa, JOURNAL_PARQUET_TYPES.get(c, "string"))()) for c in JOURNAL_COLUMNS])
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= JOURNAL_PARQUET_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _parquet_journal(output: Path | None) -> _ParquetJournal:
    """A Parquet writer for the journal, or a clear error when pyarrow (the `parquet` extra) is missing."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        _fail(f"--format parquet needs pyarrow, which is not installed: {PARQUET_INSTALL}")
        raise  # unreachable: _fail exits
    if output is None:
        _fail("--format parquet writes a file: give -o FILE")
        raise AssertionError  # unreachable: _fail exits
    return _ParquetJournal(output, pa, pq)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Target folder (default: the package's schemas/json).")
    ] = None,
) -> None:
    """Write one JSON Schema file per event type (and the envelope and policy)."""
    from schemas.export import default_schema_dir, export_json_schemas

    target = directory or default_schema_dir()
    written = export_json_schemas(target)
    typer.echo(f"wrote {len(written)} schema files to {target}")


# -- the annual fund statement (issue 10) --------------------------------------------------------

STATEMENT_FORMATS = ("table", "csv", "xlsx", "json")


@app.command()
def statement(
    year: Annotated[int, typer.Option(min=1900, max=2200, help="Fiscal year.")],
    city: Annotated[
        str | None, typer.Option(help="One city's statements (its code); default every city and the province.")
    ] = None,
    scheme: Annotated[str | None, typer.Option(help="employee or resident (default both).")] = None,
    format_: Annotated[str, typer.Option("--format", help="table (default), csv, xlsx (needs -o) or json.")] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default stdout).")] = None,
    no_project: Annotated[
        bool, typer.Option("--no-project", help="Read the read tables as they are, without projecting first.")
    ] = False,
) -> None:
    """The annual fund statement (final accounts) of a fiscal year, per city and scheme and for the province.

    Lines: opening balance; contribution income (employer, individual, medical assistance);
    fiscal subsidies by level; interest; subsidy from the higher level (allocations received);
    recoveries and other income; benefit expenditure by claim category and the major-illness
    premium; remittance to the higher level (extractions); the year's surplus; prior-year
    adjustments booked in the year; closing balance. The employee personal accounts (E6) have
    statements of their own. Without --city, per scheme also the provincial adjustment fund and
    the consolidated province, where extractions and allocations cancel (X6).

    The read tables are brought up to date first (the projector runs until caught up, as
    `project --until-caught-up`), then the statement is computed from them by the same code
    as GET /v1/statements/{year}.
    """
    if format_ not in STATEMENT_FORMATS:
        _fail(f"--format must be one of {', '.join(STATEMENT_FORMATS)}, not {format_!r}")
    _write_statement(year, city, scheme, format_, output, project=not no_project)


def _write_statement(
    year: int, city: str | None, scheme: str | None, format_: str, output: Path | None, *, project: bool
) -> None:
    """`statement` and `export statement`: project (unless told not to), read, write."""
    import psycopg

    from pooling_ledger.services import database
    from projections import statement as fund_statement
    from projections.projector import Projector
    from projections.queries import NotFound
    from storage import open_ledger

    if scheme is not None and scheme not in ("employee", "resident"):
        _fail(f"--scheme must be employee or resident, not {scheme!r}")
    if format_ == "xlsx" and output is None:
        _fail("--format xlsx writes a file: give -o FILE")
    settings = _settings()
    with database(settings) as url:
        if project:
            ledger = open_ledger(url, _seed_policy(settings))
            try:
                with Projector(ledger, url) as projector:
                    projector.run_until_caught_up()
            finally:
                ledger.close()
        with psycopg.connect(url) as conn:
            try:
                body = fund_statement.read_statement(conn, year, city=city, scheme=scheme)
            except NotFound as error:
                _fail(str(error))
            except psycopg.errors.UndefinedTable:
                _fail("nothing is projected in this database: run it without --no-project")
    data = fund_statement.render(body, format_)
    if output is not None:
        output.write_bytes(data)
        typer.echo(f"wrote the {year} statement ({len(body['statements'])} statements) to {output}", err=True)
    else:
        typer.echo(data.decode(), nl=False)


# -- a realistic province over several fiscal years (issue 10) ---------------------------------


@app.command()
def simulate(
    years: Annotated[
        str, typer.Option(help="Fiscal years FIRST-LAST (or one year); each is closed the January after.")
    ] = "2024-2026",
    events: Annotated[
        int, typer.Option("--events", "-n", min=1_000, help="Messages in all, exactly (at least 1,000 a year).")
    ] = 100_000,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="JSON Lines file to write: one message a line.")
    ] = None,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish",
            help="Publish to the events topic (POOLING_EVENTS_TOPIC, keyed by city) instead of writing a file, "
            "as `publish` does.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed and options give the same bytes.")] = 1,
    bad_share: Annotated[
        str,
        typer.Option(
            "--bad-share",
            help="Share of all messages that are not clean: one fraction (0.01: 35 % re-delivered duplicates, "
            "15 % invalid, 35 % rule-breaking, 15 % valid but delivered late), or "
            "duplicate=F,invalid=F,rule=F,late=F; 0 gives a clean stream in business-time order.",
        ),
    ] = "0.01",
    expectations: Annotated[
        Path | None,
        typer.Option(
            help="Also write each message's expected fate, line for line, as JSON Lines "
            "(event_id, status, reason, kind, late).",
        ),
    ] = None,
) -> None:
    """Simulate Anhui's provincial pooling over fiscal years (2024-2026 by default) as upstream events.

    A deterministic stream (pooling_ledger/province.py) for the policy in force
    (POOLING_POLICY_FILE, default Anhui's): the 16 cities sized by the 2020 census, both schemes,
    openings first; monthly contributions (employers, employees' own to the personal accounts,
    residents, medical assistance), resident subsidies by finance level at the per-capita standard
    with their headcounts, claims by category and hospital level with a winter peak (some treated
    in another city, some paid from personal accounts), recoveries, reversals, interest and the
    major-illness premium; budgets each December (and BudgetAdjusted when claims run high);
    adjustment-fund extractions from each scheme's phase on within the X2 cap and the X4 ceiling;
    allocations to cities with a gap within its share (X5); year closes each January. A share of
    the messages are duplicates, invalid, rule-breaking or late (--bad-share), each with the fate
    the ledger must give it (--expectations).

    Messages are in business-time order except the late ones. Nothing is held in memory per
    message: 10,000,000 take the memory of 10,000. A progress bar shows on a terminal.
    """
    from pooling_ledger.province import BadShare, ProvinceSimulation, Simulated, parse_years

    if (output is None) != publish:
        _fail("give either -o FILE or --publish")
    settings = _settings()
    try:
        sim = ProvinceSimulation(
            _seed_policy(settings), events=events, seed=seed, years=parse_years(years),
            bad_share=BadShare.parse(bad_share),
        )
    except ValueError as error:
        _fail(str(error))

    def stream() -> Any:
        """The messages, with a progress bar on a terminal (stderr), quiet otherwise."""
        if not sys.stderr.isatty():
            yield from sim.messages()
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("simulate", total=events)
            for count, message in enumerate(sim.messages(), 1):
                yield message
                if count % 2_000 == 0 or count == events:
                    progress.update(task, completed=count)

    expected_file = expectations.open("w", encoding="utf-8") if expectations else None

    def expect(message: Simulated) -> None:
        if expected_file is not None:
            expected_file.write(json.dumps({"event_id": message.event_id, **message.expected.as_json()}) + "\n")

    try:
        if output is not None:
            with output.open("wb") as lines:
                for message in stream():
                    lines.write(message.value + b"\n")
                    expect(message)
            where = {"written": sim.totals.messages, "file": str(output)}
        else:
            from kafka import KafkaProducer

            from pooling_ledger.services import ServiceUnavailable, kafka

            topic = settings.events_topic
            try:
                with kafka(settings, start=False) as bootstrap:
                    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
                    for message in stream():
                        producer.send(topic, key=message.key or None, value=message.value)
                        expect(message)
                    producer.flush()
                    producer.close()
            except ServiceUnavailable as error:
                _fail(str(error))
            where = {"published": sim.totals.messages, "topic": topic}
    finally:
        if expected_file is not None:
            expected_file.close()
    typer.echo(json.dumps({**where, **sim.totals.as_json()}, ensure_ascii=False))


def _seed_policy(settings: Settings) -> Any:
    from ledger.policy import load_packaged_policy, load_policy_file

    if settings.policy_file is None:
        return load_packaged_policy()
    if not settings.policy_file.is_file():
        _fail(f"POOLING_POLICY_FILE={settings.policy_file}: no such file")
    return load_policy_file(settings.policy_file)


def main() -> None:  # pragma: no cover - console entry point
    try:
        app(prog_name="pooling-ledger")
    except RuntimeError as error:
        # storage is imported here, not at the top: only the commands that use it import it
        from storage.recorder import StoreNotPrepared

        if not isinstance(error, StoreNotPrepared):
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
