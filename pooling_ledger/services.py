"""Where PostgreSQL and Kafka are: the configured ones, or the embedded servers.

With `DATABASE_URL` unset, the embedded PostgreSQL serves `{POOLING_DATA_DIR}/postgres`
(kept between runs; a server already running on it, e.g. under `demo`, is reused).

Roles (see `storage.roles`, `projections.roles`): an admin connection creates the schema and two roles, and
the application connects as the writer, which owns nothing and cannot switch off the event
store's append-only triggers. The admin is
- embedded: the superuser, whose password initdb stored in `{data_dir}/postgres.password`; the
  writer's and reader's passwords (unless configured) are generated beside it, mode 0600;
- `DATABASE_ADMIN_URL` when set: then `DATABASE_URL` names the writer role and its password;
- none, when `DATABASE_URL` names the writer role (`POOLING_WRITER_ROLE`) itself: the database was
  prepared before (`pooling-ledger prepare-db` with `DATABASE_ADMIN_URL`; docker-compose.yml's init);
- else `DATABASE_URL` itself: the writer is `POOLING_WRITER_ROLE` with `POOLING_WRITER_PASSWORD`,
  or a password derived from the admin's (`storage.roles.derived_password`), or when the
  admin URL has none, one generated into `{POOLING_DATA_DIR}`.

URLs here carry passwords: log them only through `storage.roles.without_password`.
With `KAFKA_BOOTSTRAP_SERVERS` unset, a running embedded broker announced in
`{POOLING_DATA_DIR}/kafka.json` is reused, or one is started for this process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
import structlog

from pooling_ledger import processes
from pooling_ledger.database import prepare_database
from pooling_ledger.embedded import (
    POSTGRES_SUPERUSER,
    EmbeddedKafka,
    EmbeddedPostgres,
    ensure_topics,
    read_password,
    role_url,
    stored_password,
)
from pooling_ledger.settings import Settings
from storage.roles import EVENTS_TABLE, derived_password
from storage.roles import role_url as with_role

log = structlog.get_logger("services")


class ServiceUnavailable(RuntimeError):
    """A service the command needs is neither configured nor running."""


def _running_postgres_url(data_dir: Path) -> str | None:
    """The superuser's URL of a live embedded server on `data_dir` (postmaster.pid: pid, ..., port)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    if not processes.alive(pid):
        return None
    return role_url(POSTGRES_SUPERUSER, read_password(data_dir, POSTGRES_SUPERUSER), port)


def _user(url: str) -> str:
    return unquote(urlsplit(url).username or "")


@dataclass(frozen=True)
class Database:
    """The URLs of one ledger database: its admin (schema owner; None when not given), writer and
    reader roles."""

    admin_url: str | None
    writer_url: str
    reader_url: str


def _roles(settings: Settings, admin_url: str | None, secrets_dir: Path | None, *, prepare: bool) -> Database:
    """Prepares the schema and roles as the admin; the URLs the application then connects with.

    `admin_url` None: `DATABASE_URL` is the writer's and the database was prepared before
    (`pooling-ledger prepare-db`, as docker-compose.yml's init service does).
    """

    def password(role: str, configured: str | None, derive_from: str) -> str:
        if configured:
            return configured
        if secrets_dir is not None:
            return stored_password(secrets_dir, role)
        return derived_password(derive_from, role)

    if settings.database_url and (admin_url is None or settings.database_admin_url):
        writer = urlsplit(settings.database_url)
        if not writer.username or not writer.password:
            raise ServiceUnavailable("DATABASE_URL must name the ledger's writer role and its password")
        writer_role, writer_password = unquote(writer.username), unquote(writer.password)
        writer_url = settings.database_url
        reader_password = password(settings.reader_role, settings.reader_password, writer_url)
    else:
        assert admin_url is not None
        writer_role = settings.writer_role
        writer_password = password(writer_role, settings.writer_password, admin_url)
        writer_url = with_role(admin_url, writer_role, writer_password)
        reader_password = password(settings.reader_role, settings.reader_password, admin_url)
    reader_url = with_role(writer_url, settings.reader_role, reader_password)
    if admin_url is None:
        _check_prepared(writer_url)
        return Database(None, writer_url, reader_url)
    if not prepare:
        return Database(admin_url, writer_url, reader_url)
    prepare_database(
        admin_url, writer_role=writer_role, writer_password=writer_password,
        reader_role=settings.reader_role, reader_password=reader_password,
    )
    return Database(admin_url, writer_url, reader_url)


def _check_prepared(writer_url: str) -> None:
    with psycopg.connect(writer_url) as conn:
        if conn.execute("SELECT to_regclass(%s)", (EVENTS_TABLE,)).fetchone() == (None,):
            raise ServiceUnavailable(
                "the ledger's tables are missing: run `pooling-ledger prepare-db` with "
                "DATABASE_ADMIN_URL set (or set it for this command)"
            )


@contextmanager
def database_roles(settings: Settings, *, prepare: bool = True) -> Iterator[Database]:
    """The ledger's database, prepared (unless told not to): configured, or the embedded server
    (started if needed)."""
    if settings.database_url:
        admin_url = settings.database_admin_url or settings.database_url
        if not settings.database_admin_url and _user(settings.database_url) == settings.writer_role:
            yield _roles(settings, None, None, prepare=prepare)  # the writer itself: prepared before
            return
        secrets_dir = None
        if not urlsplit(admin_url).password:  # nothing to derive from: generate and keep
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            secrets_dir = settings.data_dir
        yield _roles(settings, admin_url, secrets_dir, prepare=prepare)
        return
    data_dir = settings.data_dir.absolute() / "postgres"
    url = _running_postgres_url(data_dir)
    if url is not None:
        yield _roles(settings, url, data_dir, prepare=prepare)
        return
    # supervised: a postmaster that dies is reaped and restarted on the same port
    with EmbeddedPostgres(data_dir, supervise=True) as server:
        yield _roles(settings, server.url, data_dir, prepare=prepare)


@contextmanager
def database(settings: Settings, *, as_found: bool = False) -> Iterator[str]:
    """The URL the ledger's processes connect with: the writer role's, the schema prepared.

    `as_found`: the admin's URL (the writer's when no admin is known), nothing created or
    granted, for the auditors (`verify`, `replay`, `export`), which must not repair (e.g.
    re-enable the append-only triggers of) the store they check.
    """
    with database_roles(settings, prepare=not as_found) as db:
        yield (db.admin_url or db.writer_url) if as_found else db.writer_url


def _announced_broker(settings: Settings) -> str | None:
    try:
        announced = json.loads((settings.data_dir / "kafka.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return str(announced["bootstrap_servers"]) if processes.alive(int(announced["pid"])) else None


@contextmanager
def kafka(settings: Settings, *, start: bool = True) -> Iterator[str]:
    """The broker's bootstrap servers, with the ledger's topics created if missing."""
    bootstrap = settings.kafka_bootstrap_servers or _announced_broker(settings)
    if bootstrap is not None:
        ensure_topics(bootstrap, topic_partitions(settings))
        yield bootstrap
        return
    if not start:
        raise ServiceUnavailable(
            "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS, or keep `pooling-ledger demo` "
            "or `pooling-ledger consume` running (they start an embedded broker)"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    announcement = settings.data_dir / "kafka.json"
    with EmbeddedKafka(log_dir=settings.data_dir) as broker:
        ensure_topics(broker.bootstrap_servers, topic_partitions(settings))
        announcement.write_text(
            json.dumps({"bootstrap_servers": broker.bootstrap_servers, "pid": os.getpid()})
        )
        try:
            yield broker.bootstrap_servers
        finally:
            announcement.unlink(missing_ok=True)


def topic_partitions(settings: Settings) -> dict[str, int]:
    return {
        settings.events_topic: settings.topic_partitions,
        settings.ledger_topic: settings.topic_partitions,
        settings.rejections_topic: settings.topic_partitions,
    }
