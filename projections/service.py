"""Running the read side: the projector loop, and the API server with the projector beside it."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
import uvicorn

from projections.api import create_app
from projections.projector import Projector, ensure_schema
from schemas.policy import Policy
from storage import DatabaseRetry, RetryStopped, open_ledger, refresh_connections

log = structlog.get_logger("projections.service")

PROJECT_IDLE_WAIT_S = 0.5


def project_loop(
    projector: Projector, should_stop: Callable[[], bool], idle_exit: bool = False,
    retry: DatabaseRetry | None = None,
) -> int:
    """Applies the notification log until stopped (or, with `idle_exit`, until caught up): an
    empty projection in one set-based pass first, then page by page.

    A page that fails on a lost PostgreSQL connection is applied again once it is back.
    """
    retry = retry or DatabaseRetry()

    def reconnect() -> None:
        refresh_connections(projector.ledger)
        projector.reconnect()

    try:  # an empty projection (a new store, a rebuild): set-based first
        total = retry.call(projector.fill_from_zero, what="project", reconnect=reconnect, should_stop=should_stop)
    except RetryStopped:
        return 0
    while not should_stop():
        try:
            applied = retry.call(
                projector.run_once, what="project", reconnect=reconnect, should_stop=should_stop
            )
        except RetryStopped:
            break
        total += applied
        if not applied:
            if idle_exit:
                break
            threading.Event().wait(PROJECT_IDLE_WAIT_S)
    return total


class ProjectorThread(threading.Thread):
    def __init__(
        self, database_url: str, seed_policy: Policy | None, retry: DatabaseRetry | None = None
    ) -> None:
        super().__init__(name="projector", daemon=True)
        self.ledger = open_ledger(database_url, seed_policy)
        self.projector = Projector(self.ledger, database_url)
        self.retry = retry
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            project_loop(self.projector, self.stopping.is_set, retry=self.retry)
        except Exception:
            log.exception("projector_failed")

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self.projector.close()
        self.ledger.close()


def api_token(configured: str | None) -> str:
    """The configured token, or a fresh random one for this run (printed with the URL)."""
    return configured or secrets.token_urlsafe(24)


def serve(
    database_url: str,
    *,
    host: str,
    port: int,
    token: str,
    reader_url: str,
    seed_policy: Policy | None = None,
    project: bool = True,
    on_ready: Callable[[str], Any] | None = None,
    retry: DatabaseRetry | None = None,
) -> None:
    """Serves the API and dashboard until interrupted; projects in the background unless told not to.

    `database_url` is the writer's, `reader_url` the read-only role's (both made by
    `pooling_ledger.database.prepare_database`); the API reads through the latter.
    """
    projector = ProjectorThread(database_url, seed_policy, retry) if project else None
    if projector is not None:
        projector.projector.run_until_caught_up()  # the first page a user sees is current
        projector.start()
    else:  # another process projects: the tables the reader is granted must exist all the same
        open_ledger(database_url, seed_policy).close()
        with psycopg.connect(database_url) as conn:
            ensure_schema(conn)
    app = create_app(reader_url, token)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, server_header=False
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        base = f"http://{host}:{port}"
        original_startup = server.startup

        async def startup(sockets: Any = None) -> None:
            await original_startup(sockets)
            on_ready(base)

        server.startup = startup  # type: ignore[method-assign]
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C back after its graceful shutdown
        log.info("api_stopped")
    finally:
        if projector is not None:
            projector.stop()
