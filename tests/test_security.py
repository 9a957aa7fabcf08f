"""Roles and secrets (issue 7, finding 9): the ledger's writer role cannot rewrite history, the
embedded PostgreSQL wants passwords, no secret reaches any output, and the read API answers bad
input with 4xx, sends its security headers and serves its docs from packaged assets."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from fastapi.routing import APIRoute

from pooling_ledger.database import prepare_database
from pooling_ledger.embedded import EmbeddedPostgres, free_port
from pooling_ledger.services import ServiceUnavailable, database_roles
from pooling_ledger.settings import Settings
from storage import StoreNotPrepared, open_ledger
from storage.roles import role_url, scram_verifier, without_password
from tests.test_api import AUTH, Served, served  # noqa: F401 - the fixture
from tests.test_projections import Feed, contribution, project

pytestmark = pytest.mark.integration

WRITER_PASSWORD = "writer-pw-5b1e"
READER_PASSWORD = "reader-pw-9c2d"
API_TOKEN = "api-token-7f3a0c"
SERVE_START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
GUARD = "the ledger event store is append-only"


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A folder outside pytest's basetemp (kept 0700 by pytest, which the postgres system user
    cannot enter when the tests run as root)."""
    root = Path(tempfile.mkdtemp(prefix="pooling-ledger-sec-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def url_with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return role_url(url, parts.username or "", password)


# -- the writer role ---------------------------------------------------------------------------


def test_the_writer_role_cannot_delete_from_the_event_store_by_any_means(database_url: str) -> None:
    prepare_database(database_url, writer_password=WRITER_PASSWORD, reader_password=READER_PASSWORD)
    writer_url = role_url(database_url, "pooling_ledger", WRITER_PASSWORD)
    ledger = open_ledger(writer_url)  # the ledger books through the writer role
    Feed(ledger).send([contribution("340100", "resident", 5_000, "2025-12-02T10:00:00+08:00"),
                       contribution("340200", "employee", 7_000, "2025-12-03T10:00:00+08:00")])
    ledger.close()
    with psycopg.connect(database_url) as admin:
        stored = admin.execute("SELECT count(*), sum(length(state)) FROM ledger_events").fetchone()
        assert admin.execute(
            "SELECT rolsuper, rolreplication, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles"
            " WHERE rolname = 'pooling_ledger'"
        ).fetchone() == (False, False, False, False, False)
        assert admin.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'ledger_events'"
        ).fetchone() == ("postgres",)
    # per contribution: a receipt, a fund and its movement, the marker of its business day (I4); the policy book
    assert stored is not None and stored[0] == 10

    attempts: list[tuple[str, type[psycopg.Error], str]] = [
        ("DELETE FROM ledger_events", psycopg.errors.InsufficientPrivilege, "permission denied"),
        ("UPDATE ledger_events SET state = ''::bytea", psycopg.errors.RaiseException, GUARD),
        ("UPDATE ledger_events SET originator_version = originator_version + 1000",
         psycopg.errors.RaiseException, GUARD),
        ("TRUNCATE ledger_events", psycopg.errors.InsufficientPrivilege, "permission denied"),
        ("SET session_replication_role = replica", psycopg.errors.InsufficientPrivilege, "permission denied"),
        ("SET LOCAL session_replication_role = replica", psycopg.errors.InsufficientPrivilege, "permission denied"),
        ("SELECT set_config('session_replication_role', 'replica', false)",
         psycopg.errors.InsufficientPrivilege, "permission denied"),
        ("ALTER TABLE ledger_events DISABLE TRIGGER ALL", psycopg.errors.InsufficientPrivilege, "must be owner"),
        ("ALTER TABLE ledger_events DISABLE TRIGGER ledger_events_append_only",
         psycopg.errors.InsufficientPrivilege, "must be owner"),
        ("DROP TRIGGER ledger_events_append_only ON ledger_events",
         psycopg.errors.InsufficientPrivilege, "must be owner"),
        ("DROP TRIGGER ledger_events_no_truncate ON ledger_events",
         psycopg.errors.InsufficientPrivilege, "must be owner"),
        ("DROP TABLE ledger_events", psycopg.errors.InsufficientPrivilege, "must be owner"),
        ("DROP FUNCTION ledger_events_append_only()", psycopg.errors.InsufficientPrivilege, "must be owner"),
        ("CREATE OR REPLACE FUNCTION ledger_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN END;$$",
         psycopg.errors.InsufficientPrivilege, "permission denied for schema public"),
        ("ALTER TABLE ledger_events RENAME TO ledger_events_old", psycopg.errors.InsufficientPrivilege,
         "must be owner"),
        ("ALTER TABLE ledger_events OWNER TO pooling_ledger", psycopg.errors.InsufficientPrivilege,
         "must be owner"),
        ("SET ROLE postgres", psycopg.errors.InsufficientPrivilege, "permission denied"),
        ("ALTER ROLE pooling_ledger SUPERUSER", psycopg.errors.InsufficientPrivilege, "permission denied"),
        ("ALTER ROLE pooling_ledger REPLICATION", psycopg.errors.InsufficientPrivilege, "permission denied"),
        ("CREATE RULE keep AS ON DELETE TO ledger_events DO INSTEAD NOTHING",
         psycopg.errors.InsufficientPrivilege, "must be owner"),
        ("WITH gone AS (DELETE FROM ledger_events RETURNING 1) SELECT count(*) FROM gone",
         psycopg.errors.InsufficientPrivilege, "permission denied"),
    ]
    with psycopg.connect(writer_url, autocommit=True) as writer:
        assert writer.execute("SELECT current_user, session_user").fetchone() == ("pooling_ledger", "pooling_ledger")
        for statement, error, message in attempts:
            with pytest.raises(error, match=message):
                if statement.startswith("SET LOCAL"):
                    with writer.transaction():
                        writer.execute(statement)
                else:
                    writer.execute(statement)
            assert writer.execute("SHOW session_replication_role").fetchone() == ("origin",)
        # a replica-mode DELETE after the refused SET: still refused, still the same rows
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute("SET session_replication_role = replica; DELETE FROM ledger_events")
        # GRANT of a privilege it lacks on a table it does not own: nothing is granted
        writer.execute("GRANT DELETE, TRUNCATE ON ledger_events TO pooling_ledger")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute("DELETE FROM ledger_events")
    with psycopg.connect(database_url) as admin:
        assert admin.execute("SELECT count(*), sum(length(state)) FROM ledger_events").fetchone() == stored
        assert admin.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'ledger_events'::regclass"
            " AND NOT tgisinternal ORDER BY tgname"
        ).fetchall() == [("ledger_events_append_only", "O"), ("ledger_events_no_truncate", "O")]
        assert admin.execute("SELECT has_table_privilege('pooling_ledger', 'ledger_events', 'DELETE')").fetchone() == (
            False,
        )


def test_the_writer_books_and_projects_and_the_reader_only_reads(database_url: str) -> None:
    prepare_database(database_url, writer_password=WRITER_PASSWORD, reader_password=READER_PASSWORD)
    writer_url = role_url(database_url, "pooling_ledger", WRITER_PASSWORD)
    ledger = open_ledger(writer_url)
    Feed(ledger).send([contribution("340100", "resident", 12_345, "2025-12-02T10:00:00+08:00")])
    assert project(writer_url, ledger) == 2  # the receipt and the fund's movement
    ledger.close()
    with psycopg.connect(database_url) as admin:  # the writer analyzed the tables it rebuilt (MAINTAIN)
        analyzed = admin.execute("SELECT count(*) FROM pg_stats WHERE tablename = 'pl_postings'").fetchone()
        assert analyzed is not None and analyzed[0] > 0
    with psycopg.connect(role_url(database_url, "pooling_reader", READER_PASSWORD)) as reader:
        assert reader.execute(
            "SELECT balance_fen FROM pl_account_balances WHERE account = 'city:340100:resident:pooling'"
        ).fetchone() == (12_345,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("INSERT INTO kafka_positions VALUES ('x', 't', 0, 1)")


def test_the_writer_on_a_store_an_older_version_prepared_is_told_to_run_prepare_db(database_url: str) -> None:
    """A store prepared before the hash chain (issue 10) has no ledger_chain, which the writer
    may not create: it is refused when opened, naming the table and the command, not batch by
    batch later."""
    prepare_database(database_url, writer_password=WRITER_PASSWORD, reader_password=READER_PASSWORD)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("DROP TABLE ledger_chain")
    writer_url = role_url(database_url, "pooling_ledger", WRITER_PASSWORD)
    with pytest.raises(StoreNotPrepared, match="no ledger_chain table.*pooling-ledger prepare-db"):
        open_ledger(writer_url)

    done = subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", "project", "--until-caught-up"],
        env={**os.environ, "DATABASE_URL": writer_url}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "error: the database has no ledger_chain table" in done.stderr
    assert "Traceback" not in done.stderr

    prepare_database(database_url, writer_password=WRITER_PASSWORD, reader_password=READER_PASSWORD)
    open_ledger(writer_url).close()  # prepared again: the writer opens it


def test_passwords_reach_postgresql_as_scram_verifiers_only() -> None:
    verifier = scram_verifier("pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096)
    # RFC 7677's example (user "user", password "pencil", this salt)
    assert verifier == (
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    )
    assert without_password("postgresql://pooling_ledger:s%40cret@127.0.0.1:5432/db") == (
        "postgresql://pooling_ledger@127.0.0.1:5432/db"
    )


# -- the embedded server wants passwords -------------------------------------------------------


def test_the_embedded_server_refuses_wrong_passwords(pg_server_url: str, database_url: str) -> None:
    assert urlsplit(pg_server_url).password  # the fixture's superuser URL carries the generated one
    for wrong in (url_with_password(pg_server_url, "wrong"), without_password(pg_server_url)):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed|no password supplied"):
            psycopg.connect(wrong, connect_timeout=5)
    prepare_database(database_url, writer_password=WRITER_PASSWORD, reader_password=READER_PASSWORD)
    for role, right in (("pooling_reader", READER_PASSWORD), ("pooling_ledger", WRITER_PASSWORD)):
        for wrong in ("wrong", right + "x", right.upper()):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(role_url(database_url, role, wrong), connect_timeout=5)
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(without_password(role_url(database_url, role, right)), connect_timeout=5)
        with psycopg.connect(role_url(database_url, role, right)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)


def hba_methods(data: Path) -> set[str]:
    return {line.split()[-1] for line in (data / "pg_hba.conf").read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def test_the_superuser_password_is_generated_0600(private_dir: Path) -> None:
    data = private_dir / "data"
    with EmbeddedPostgres(data, fast=True) as server:
        password_file = data / "postgres.password"
        password = password_file.read_text().strip()
        assert password_file.stat().st_mode & 0o777 == 0o600
        assert len(password) == 32  # 24 random bytes, URL-safe base64
        assert urlsplit(server.url).password == password
        assert hba_methods(data) == {"scram-sha-256"}
    password_file.unlink()  # its password lost: the data dir cannot be used, and says so
    with pytest.raises(RuntimeError, match="superuser's password is unknown.*rm -rf"):
        EmbeddedPostgres(data, fast=True).start()


def test_a_trusting_data_dir_of_an_earlier_version_moves_to_passwords_keeping_its_data(private_dir: Path) -> None:
    data = private_dir / "data"
    with EmbeddedPostgres(data, fast=True) as server, psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('from the trusting days')")
    # what an earlier version left: trust for every connection, no password file
    hba = data / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    (data / "postgres.password").unlink()
    assert hba_methods(data) == {"trust"}
    with EmbeddedPostgres(data, fast=True) as server:
        password = (data / "postgres.password").read_text().strip()
        assert (data / "postgres.password").stat().st_mode & 0o777 == 0o600
        assert hba_methods(data) == {"scram-sha-256"}
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT note FROM kept").fetchall() == [("from the trusting days",)]
        for wrong in (url_with_password(server.url, "wrong"), without_password(server.url)):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed|no password supplied"):
                psycopg.connect(wrong, connect_timeout=5)
        assert password not in (data / "server.log").read_text()
    with EmbeddedPostgres(data, fast=True) as again:  # and it stays so
        assert urlsplit(again.url).password == password


def test_services_prepare_the_embedded_server_with_generated_role_passwords(private_dir: Path) -> None:
    settings = Settings.model_validate({"POOLING_DATA_DIR": str(private_dir)})
    with database_roles(settings) as db:
        data = private_dir / "postgres"
        files = {p.name: p for p in data.glob("*.password")}
        assert sorted(files) == ["pooling_ledger.password", "pooling_reader.password", "postgres.password"]
        assert {p.stat().st_mode & 0o777 for p in files.values()} == {0o600}
        assert urlsplit(db.writer_url).username == "pooling_ledger"
        assert urlsplit(db.writer_url).password == files["pooling_ledger.password"].read_text().strip()
        assert urlsplit(db.reader_url).password == files["pooling_reader.password"].read_text().strip()
        with psycopg.connect(db.writer_url) as conn:
            assert conn.execute(
                "SELECT current_user, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user"
            ).fetchone() == ("pooling_ledger", False, False)
        # a second command finds the running server and the same passwords
        with database_roles(settings) as again:
            assert again == db


# -- no secret in any output -----------------------------------------------------------------


def assert_no_secret(secrets: dict[str, str], outputs: dict[str, str]) -> None:
    for where, text in outputs.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} found in {where}"
            assert quote(secret, safe="") not in text, f"{name} (URL-encoded) found in {where}"


def log_files(root: Path) -> dict[str, str]:
    return {str(p): p.read_text(errors="replace") for p in root.rglob("*.log")}


def test_a_demo_run_prints_and_logs_no_secret(
    private_dir: Path, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    env = {
        **os.environ,
        "POOLING_DATA_DIR": str(private_dir),  # the embedded PostgreSQL, with a generated password
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "POOLING_EVENTS_TOPIC": topics["events"],
        "POOLING_LEDGER_TOPIC": topics["ledger"],
        "POOLING_REJECTIONS_TOPIC": topics["rejections"],
        "POOLING_API_TOKEN": API_TOKEN,
        "POOLING_READER_PASSWORD": READER_PASSWORD,
        "POOLING_LOG_LEVEL": "debug",
    }
    for generated in ("DATABASE_URL", "DATABASE_ADMIN_URL", "POOLING_WRITER_PASSWORD"):
        env.pop(generated, None)
    result = subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", "demo", "--no-serve", "--events-per-city", "20", "--seed", "5"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "total (must be 0)" in result.stdout
    superuser = (private_dir / "demo" / "postgres" / "postgres.password").read_text().strip()
    writer = (private_dir / "demo" / "postgres" / "pooling_ledger.password").read_text().strip()
    assert len(superuser) == len(writer) == 32
    assert not (private_dir / "demo" / "postgres" / "pooling_reader.password").exists()  # configured
    assert "postgresql://pooling_ledger@127.0.0.1:" in result.stdout  # where the store is, without password
    logs = log_files(private_dir)
    assert str(private_dir / "demo" / "postgres" / "server.log") in logs
    assert_no_secret(
        {"API token": API_TOKEN, "reader password": READER_PASSWORD, "writer password": writer,
         "superuser password": superuser},
        {"stdout": result.stdout, "stderr": result.stderr, **logs},
    )


def http(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def test_a_serve_run_prints_and_logs_no_secret_and_sends_no_server_header(
    pg_server_url: str, database_url: str, private_dir: Path
) -> None:
    superuser = urlsplit(pg_server_url).password
    assert superuser
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,  # the superuser's, with its password: the admin connection
        "POOLING_DATA_DIR": str(private_dir),
        "POOLING_API_TOKEN": API_TOKEN,
        "POOLING_READER_PASSWORD": READER_PASSWORD,
        "POOLING_WRITER_PASSWORD": WRITER_PASSWORD,
        "POOLING_LOG_LEVEL": "debug",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pooling_ledger.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None and "/health" not in answers:
            try:
                answers["/health"] = http(f"{base}/health")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        assert "/health" in answers, process.communicate()[1].decode()[-3000:] if process.poll() is not None else ""
        for path, token in (("/v1/cities", API_TOKEN), ("/v1/cities", "wrong"), ("/v1/events/a%00b", API_TOKEN),
                            ("/docs", None), ("/dashboard", None), ("/nowhere", None)):
            answers[f"{path} {token}"] = http(base + path, token)
        with psycopg.connect(database_url) as admin:  # serve connects as the writer and the reader
            users = {u for (u,) in admin.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
                " AND usename <> current_user"
            ).fetchall()}
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=STOP_TIMEOUT_S)
    assert users == {"pooling_ledger", "pooling_reader"}
    assert [answers[k][0] for k in answers] == [200, 200, 401, 422, 200, 200, 404]
    for status, headers, _ in answers.values():
        assert "server" not in headers, headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert "content-security-policy" in headers
    assert process.returncode == 0, err.decode()[-3000:]
    stdout, stderr = out.decode(), err.decode()
    assert f"{base}/dashboard#token=<POOLING_API_TOKEN>" in stdout  # the configured token is not shown
    assert_no_secret(
        {"API token": API_TOKEN, "reader password": READER_PASSWORD, "writer password": WRITER_PASSWORD,
         "superuser password": superuser},
        {"stdout": stdout, "stderr": stderr, **log_files(private_dir)},
    )


def test_a_generated_token_is_printed() -> None:
    from pooling_ledger.cli import _serving_message

    assert "#token=abc" in _serving_message("http://h:1", "abc", True)
    configured = _serving_message("http://h:1", "abc", False)
    assert "abc" not in configured
    assert "http://h:1/dashboard#token=<POOLING_API_TOKEN>" in configured


# -- hostile input to every endpoint ---------------------------------------------------------------

#: A valid value of each path parameter (a new parameter must be added here).
VALID_PATH = {
    "city": "340100", "scheme": "resident", "year": "2025", "account": "city:340100:resident:pooling",
    "event_id": str(uuid.UUID(int=7)),
}
PROBES = [
    "\x00", "a\x00b", "340100\x00", "\x00" * 64, "\x01\x1f\x7f", "\n", " ",
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59+14:00", "0001-01-01", "9999-12-31", "-0001-01-01T00:00:00Z", "+10000-01-01",
    "2025-02-30", "2025-13-01T00:00:00+08:00", "2025-12-20T25:61:61+08:00", "2025-12-20T00:00:00+99:00",
    "0", "-1", "-2147483649", "2147483648", "9223372036854775807", "9223372036854775808",
    "-9223372036854775809", "1" * 400, "1e309", "NaN", "inf", "-0", "0x10",
    "x" * 10_000, "é" * 3000, "💥", "🏥\x00", "' OR 1=1 --", "%", "%00", "../../etc/passwd", "<script>",
    "csv\x00", "json ", "employee\x00", "RESIDENT",
]


def probe_paths(route: APIRoute) -> Iterator[tuple[str, dict[str, str]]]:
    """(path, query) for every probe in every parameter of `route`, the others valid."""
    names = [p.name for p in route.dependant.path_params]
    valid = {name: VALID_PATH[name] for name in names}

    def path_of(values: dict[str, str]) -> str:
        return route.path_format.format(**{k: quote(v, safe="") for k, v in values.items()})

    yield path_of(valid), {}
    for name in names:
        for probe in PROBES:
            yield path_of({**valid, name: probe}), {}
    for param in route.dependant.query_params:
        alias = param.alias
        for probe in PROBES:
            yield path_of(valid), {alias: probe}


def test_hostile_values_in_every_path_and_query_parameter_never_answer_5xx(served: Served) -> None:  # noqa: F811
    routes = [r for r in served.client.app.routes if isinstance(r, APIRoute) and "GET" in r.methods]
    assert {r.path for r in routes} >= {
        "/health", "/dashboard", "/docs", "/redoc", "/v1/cities", "/v1/cities/{city}/balances",
        "/v1/accounts/{account}/daily", "/v1/province/summary", "/v1/budgets", "/v1/budgets/{city}/{scheme}/{year}",
        "/v1/risk", "/v1/events/{event_id}", "/v1/rejections", "/v1/audit/trial-balance",
    }
    answered: dict[int, int] = {}
    for route in routes:
        for path, query in probe_paths(route):
            response = served.client.get(path, params=query, headers=AUTH)
            answered[response.status_code] = answered.get(response.status_code, 0) + 1
            assert response.status_code < 500, (path, query, response.status_code, response.text[:300])
            if response.status_code >= 400:
                detail = response.json()["detail"]
                assert detail, (path, query)
    assert not [code for code in answered if code >= 500]
    assert answered[422] > 0 and answered[200] > 0
    # raw bytes that are no UTF-8, and repeated parameters
    for raw in ("/v1/risk?as_of=%ff%fe", "/v1/events/%ff%fe", "/v1/budgets?year=2025&year=%00",
                "/v1/accounts/%c0%80/daily?from=%00&to=9999-12-31", "/v1/cities?format=%e2%80%8b"):
        response = served.client.get(raw, headers=AUTH)
        assert response.status_code < 500, (raw, response.status_code, response.text[:300])


def test_the_issues_probe_values_answer_422_with_a_message(served: Served) -> None:  # noqa: F811
    for path in ("/v1/events/a%00b", "/v1/events/%00", "/v1/accounts/city:340100%00/daily",
                 "/v1/cities/340100%00/balances", "/v1/budgets/340100%00/resident/2025"):
        response = served.client.get(path, headers=AUTH)
        assert response.status_code == 422, (path, response.text)
    for path in ("/v1/cities/340100/balances", "/v1/risk", "/v1/province/summary", "/v1/audit/trial-balance"):
        for as_of in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
            response = served.client.get(path, params={"as_of": as_of}, headers=AUTH)
            assert response.status_code == 422, (path, as_of, response.text)
            assert response.json() == {"detail": "as_of must fall in the years 1901-2199"}
    response = served.client.get("/v1/budgets", params={"year": 10**30}, headers=AUTH)
    assert response.status_code == 422
    response = served.client.get("/health")
    assert response.json()["unprocessable"] == 0


# -- headers and packaged docs ---------------------------------------------------------------------


def inline_script_hashes(html: str) -> set[str]:
    return {
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    }


def test_security_headers_and_docs_from_packaged_assets(served: Served) -> None:  # noqa: F811
    for path in ("/health", "/v1/cities", "/v1/risk?as_of=x", "/openapi.json", "/dashboard", "/docs", "/redoc",
                 "/static/swagger-ui.css", "/nowhere"):
        response = served.client.get(path, headers=AUTH)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
        assert response.headers["x-frame-options"] == "DENY", path
        assert "server" not in response.headers, path
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
    assert served.client.get("/v1/cities", headers=AUTH).headers["content-security-policy"] == (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    for page, assets in (
        ("/docs", ["/static/swagger-ui-bundle.js", "/static/swagger-ui.css", "/static/favicon.png"]),
        ("/redoc", ["/static/redoc.standalone.js", "/static/favicon.png"]),
        ("/dashboard", []),
    ):
        response = served.client.get(page)
        assert response.status_code == 200
        html = response.text
        csp = response.headers["content-security-policy"]
        scripts = inline_script_hashes(html)
        assert len(scripts) == (0 if page == "/redoc" else 1), page
        for digest in scripts:
            assert digest in csp, page
        assert "'unsafe-eval'" not in csp and "script-src 'self'" in csp
        if page != "/dashboard":  # the dashboard names the SVG namespace, which loads nothing
            assert not re.search(r"https?://", html), page
        assert sorted(re.findall(r'(?:src|href)="([^"]+)"', html)) == sorted(assets) or page == "/dashboard", page
        for asset in assets:
            got = served.client.get(asset)
            assert got.status_code == 200 and len(got.content) > 500, asset
    js = served.client.get("/static/swagger-ui-bundle.js")
    assert js.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    assert 'validatorUrl": null' in served.client.get("/docs").text  # no badge from the validator's site



def test_prepare_db_makes_the_roles_and_the_writer_then_runs_on_its_own(database_url: str, private_dir: Path) -> None:
    """docker-compose.yml's way: `init` runs prepare-db as the admin; the services get the writer's URL only."""
    writer_url = role_url(database_url, "pooling_ledger", WRITER_PASSWORD)
    unprepared = Settings.model_validate({"DATABASE_URL": writer_url, "POOLING_DATA_DIR": str(private_dir)})
    prepare_database(database_url, writer_password=WRITER_PASSWORD)  # the role exists, the tables of this db do not
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("DROP TABLE ledger_events CASCADE")
    with pytest.raises(ServiceUnavailable, match="pooling-ledger prepare-db"), database_roles(unprepared):
        pass
    result = subprocess.run(
        [sys.executable, "-m", "pooling_ledger.cli", "prepare-db"],
        env={**os.environ, "DATABASE_ADMIN_URL": database_url, "DATABASE_URL": writer_url,
             "POOLING_READER_PASSWORD": READER_PASSWORD, "POOLING_DATA_DIR": str(private_dir),
             "POOLING_LOG_LEVEL": "debug"},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    port = urlsplit(database_url).port
    database = urlsplit(database_url).path
    assert result.stdout.strip() == (
        f'{{"writer": "postgresql://pooling_ledger@127.0.0.1:{port}{database}", '
        f'"reader": "postgresql://pooling_reader@127.0.0.1:{port}{database}"}}'
    )
    assert_no_secret(
        {"writer password": WRITER_PASSWORD, "reader password": READER_PASSWORD,
         "superuser password": urlsplit(database_url).password or "-"},
        {"stdout": result.stdout, "stderr": result.stderr},
    )
    settings = unprepared.model_copy(update={"reader_password": READER_PASSWORD})
    with database_roles(settings) as db:
        assert db.admin_url is None and db.writer_url == writer_url
        ledger = open_ledger(db.writer_url)
        Feed(ledger).send([contribution("340100", "resident", 777, "2025-12-02T10:00:00+08:00")])
        ledger.close()
        with psycopg.connect(db.reader_url) as reader:
            # the policy book (2), the contribution (3) and its business day's marker (I4)
            assert reader.execute("SELECT count(*) FROM ledger_events").fetchone() == (6,)


def test_logged_tracebacks_show_no_local_variables(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    from pooling_ledger.logs import configure_logging

    def connect(url: str) -> None:
        psycopg.connect(url, connect_timeout=1)

    secret = "pw-" + uuid.uuid4().hex
    saved = structlog.get_config()
    configure_logging("console", "info")  # prints to this test's captured stderr
    try:
        try:
            connect(f"postgresql://pooling_ledger:{secret}@127.0.0.1:{free_port()}/postgres")
        except psycopg.OperationalError:
            structlog.get_logger().exception("connect_failed")
    finally:
        structlog.configure(**saved)  # later tests must not print to this test's closed stream
    err = capsys.readouterr().err
    assert "connect_failed" in err and "OperationalError" in err
    assert secret not in err
