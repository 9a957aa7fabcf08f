"""The treasury's read API (DESIGN §5) and its dashboard, served by one process.

Every `/v1` path needs `Authorization: Bearer <POOLING_API_TOKEN>`; the process reads
through the read-only role. `?format=csv` returns the table of an endpoint as CSV.

Every response carries `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
`X-Frame-Options: DENY` and a Content-Security-Policy: HTML pages (dashboard, Swagger UI at
`/docs`, ReDoc at `/redoc`) may run only their own inline script (by hash) and this origin's
packaged assets under `/static`; everything else may load nothing. Bad path or query values
answer 422 with a message (NUL and control characters, over-long text, years and instants
out of range), never 500.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import hmac
import io
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from importlib import resources
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST as METRICS_CONTENT_TYPE
from psycopg_pool import ConnectionPool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from projections import queries
from projections.queries import NotFound

POOL_SIZE_MAX = 8
POOL_TIMEOUT_S = 10.0
#: A kept response is served again for at most this long (and only at the same projection position).
CACHE_TTL_S = 1.0
CACHE_ENTRIES_MAX = 256
CACHE_BODY_BYTES_MAX = 512 * 1024
#: Longest path value (city, account, event id) the API looks up; longer ones cannot exist.
PATH_VALUE_LENGTH_MAX = 200
#: No NUL or other control character in a path value (PostgreSQL text cannot even hold NUL).
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
#: Years (fiscal years, and those of `as_of`, `from`, `to`) the API answers for.
YEAR_MIN = 1900
YEAR_MAX = 2200
STATIC_PATH = "/static"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
#: Responses other than the HTML pages load nothing at all.
CSP_NONE = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
#: The HTML pages: their own inline script (by hash), packaged scripts and styles, inline
#: styles (the dashboard's, Swagger UI's and ReDoc's), data: images, calls to this origin,
#: ReDoc's search worker (a blob:).
CSP_PAGE = (
    "default-src 'none'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

Format = Annotated[Literal["json", "csv"], Query(description="`csv` returns the endpoint's table as CSV.")]
AsOf = Annotated[
    datetime | None,
    Query(description="Business time, RFC 3339 with offset (e.g. 2025-12-20T00:00:00+08:00); default now."),
]
Year = Annotated[int, Query(ge=YEAR_MIN, le=YEAR_MAX, description="Fiscal year.")]
YearPath = Annotated[int, Path(ge=YEAR_MIN, le=YEAR_MAX, description="Fiscal year.")]
Text = Annotated[str, Path(max_length=PATH_VALUE_LENGTH_MAX, pattern=PRINTABLE)]


def csp_for(html: str) -> str:
    """The page CSP allowing exactly the inline scripts of `html`."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return CSP_PAGE.format(hashes=hashes)


def bearer_token_matches(header: str, api_token: str) -> bool:
    """Whether an `Authorization` header carries `Bearer <api_token>` (compared in constant time)."""
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), api_token.encode())


class ResponseCache:
    """Answers a repeated authorised `GET /v1/...` from memory while the read tables are unchanged.

    The read tables change only when the projector commits a page, which moves its position
    (`pl_tracking`) in the same transaction. A response is kept with the position it was read
    at, and served again only while the position is the same and for at most CACHE_TTL_S (the
    answers that say "as of now" move on with the clock). Requests asking what is being
    answered at that moment wait for that answer instead of asking PostgreSQL again (a kept
    answer expiring under 500 requests/s would otherwise send hundreds of the same queries at
    once). The position is read per request
    on a connection of its own (one query, no worker thread), so a hit costs neither a pool
    connection nor FastAPI's routing, validation and serialisation.
    """

    def __init__(self, app: ASGIApp, reader_url: str, api_token: str) -> None:
        self.app, self.reader_url, self.api_token = app, reader_url, api_token
        self.entries: OrderedDict[tuple[str, bytes], tuple[int, float, list[Any], bytes]] = OrderedDict()
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.lock = asyncio.Lock()
        #: questions being answered now: the others asking the same wait for that answer
        self.inflight: dict[tuple[str, bytes], asyncio.Future[None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            await self.app(scope, receive, send)  # the app answers 401
            return
        position = await self._position()
        if position is None:
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope["query_string"])
        if await self._send_kept(key, position, send):
            return
        leader = self.inflight.get(key)
        if leader is not None:  # the same question is being answered: wait for that answer
            await asyncio.shield(leader)
            if await self._send_kept(key, position, send):
                return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inflight[key] = done
        try:
            await self._answer(key, position, scope, receive, send)
        finally:
            if self.inflight.get(key) is done:
                del self.inflight[key]
            done.set_result(None)

    async def _send_kept(self, key: tuple[str, bytes], position: int, send: Send) -> bool:
        entry = self.entries.get(key)
        if entry is None or entry[0] != position or time.monotonic() - entry[1] >= CACHE_TTL_S:
            return False
        self.entries.move_to_end(key)
        await send({"type": "http.response.start", "status": 200, "headers": entry[2]})
        await send({"type": "http.response.body", "body": entry[3]})
        return True

    async def _answer(
        self, key: tuple[str, bytes], position: int, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started: dict[str, Any] = {}
        body = bytearray()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body") and started.get("status") == 200 and len(body) <= CACHE_BODY_BYTES_MAX:
                    self._keep(key, position, list(started.get("headers", [])), bytes(body))
            await send(message)

        await self.app(scope, receive, capture)

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":  # read as Starlette reads it for the app's own check
                return bearer_token_matches(bytes(value).decode("latin-1"), self.api_token)
        return False

    async def _position(self) -> int | None:
        async with self.lock:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = await psycopg.AsyncConnection.connect(self.reader_url, autocommit=True)
                cur = await self.conn.execute(
                    "SELECT notification_id FROM pl_tracking WHERE projection = 'treasury'"
                )
                row = await cur.fetchone()
            except psycopg.Error:
                if self.conn is not None:
                    await self.conn.close()
                self.conn = None
                return None  # no cache while PostgreSQL is away: the app answers (or fails) as usual
        return int(row[0]) if row else None

    def _keep(self, key: tuple[str, bytes], position: int, headers: list[Any], body: bytes) -> None:
        self.entries[key] = (position, time.monotonic(), headers, body)
        self.entries.move_to_end(key)
        while len(self.entries) > CACHE_ENTRIES_MAX:
            self.entries.popitem(last=False)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class SecurityHeaders:
    """Adds the security headers to every response (`pages`: path -> its CSP; others CSP_NONE)."""

    def __init__(self, app: ASGIApp, pages: dict[str, str]) -> None:
        self.app, self.pages = app, pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.pages.get(scope["path"], CSP_NONE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                names = {k.lower() for k, _ in headers}
                for name, value in (*SECURITY_HEADERS.items(), ("content-security-policy", csp)):
                    if name.encode() not in names:
                        headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def admitted(request: Request) -> AsyncIterator[None]:
    """At most POOL_SIZE_MAX requests at a time past this point; the others wait here.

    They wait on the event loop, not in a worker thread: a request blocked in a thread on a
    pool connection, while the requests holding the connections wait for a thread to run
    their query, stops the server for good (seen at 200 requests/s: every one of uvicorn's
    40 worker threads waiting for one of 8 connections). Past POOL_TIMEOUT_S: 503.
    """
    admission: asyncio.Semaphore = request.app.state.admission
    try:
        await asyncio.wait_for(admission.acquire(), POOL_TIMEOUT_S)
    except TimeoutError:
        raise HTTPException(503, "the read API is busy; try again", headers={"Retry-After": "1"}) from None
    try:
        yield
    finally:
        admission.release()


def connection(request: Request, _: Annotated[None, Depends(admitted)]) -> Iterator[psycopg.Connection[Any]]:
    pool: ConnectionPool[Any] = request.app.state.pool
    with pool.connection() as conn:
        conn.read_only = True
        yield conn


Conn = Annotated[psycopg.Connection[Any], Depends(connection)]
From = Annotated[date | None, Query(alias="from", description="First business day (YYYY-MM-DD).")]
To = Annotated[date | None, Query(alias="to", description="Last business day (YYYY-MM-DD).")]
Scheme = Literal["employee", "resident"]


def create_app(reader_url: str, api_token: str) -> FastAPI:
    if not api_token:
        raise ValueError("the read API needs a bearer token (POOLING_API_TOKEN)")
    pool = ConnectionPool(reader_url, min_size=1, max_size=POOL_SIZE_MAX, timeout=POOL_TIMEOUT_S, open=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        pool.open()
        yield
        pool.close()

    app = FastAPI(
        title="pooling-ledger treasury API",
        version="1",
        description="Balances, budgets, risk and audit views of the provincial pooling ledger. "
        "Money is integer fen. Every /v1 path needs a bearer token.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    pages = {  # served as made here, so that the CSP's script hashes match
        "/dashboard": (resources.files("projections") / "static" / "dashboard.html").read_text("utf-8"),
        "/docs": bytes(get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js", swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_PATH}/favicon.png", swagger_ui_parameters={"validatorUrl": None},
        ).body).decode(),
        "/redoc": bytes(get_redoc_html(
            openapi_url="/openapi.json", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{STATIC_PATH}/redoc.standalone.js", redoc_favicon_url=f"{STATIC_PATH}/favicon.png",
            with_google_fonts=False,
        ).body).decode(),
    }
    app.add_middleware(SecurityHeaders, pages={path: csp_for(html) for path, html in pages.items()})
    # outside the security headers: what it keeps already carries them
    app.add_middleware(ResponseCache, reader_url=reader_url, api_token=api_token)
    app.mount(STATIC_PATH, StaticFiles(packages=[("projections", "static")]), name="static")

    def authorised(request: Request) -> None:
        if not bearer_token_matches(request.headers.get("authorization", ""), api_token):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    app.state.pool = pool
    app.state.admission = asyncio.Semaphore(POOL_SIZE_MAX)
    v1 = [Depends(authorised)]

    @app.exception_handler(NotFound)
    async def not_found(_: Request, error: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(psycopg.errors.DataError)
    async def bad_value(_: Request, error: psycopg.errors.DataError) -> JSONResponse:
        """A value PostgreSQL cannot take (validation above should have caught it first)."""
        return JSONResponse({"detail": "a path or query value is malformed or out of range"}, status_code=422)

    @app.get("/health", tags=["operations"])
    def health(conn: Conn) -> dict[str, Any]:
        """Liveness, the projection lag (notifications the read tables have not applied yet), and
        `chain`: the ledger's latest hash-chain link (`digest`, `last_notification_id`, ...;
        null where the store has none), which `pooling-ledger verify` recomputes."""
        from storage.chain import latest_link

        return {**queries.health(conn), "chain": latest_link(conn)}

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics(conn: Conn) -> PlainTextResponse:
        """Prometheus metrics of the read side, read from the read tables at each scrape."""
        return PlainTextResponse(queries.metrics_text(conn), media_type=METRICS_CONTENT_TYPE)

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return pages["/dashboard"]

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def swagger_ui() -> str:
        return pages["/docs"]

    @app.get("/redoc", response_class=HTMLResponse, include_in_schema=False)
    def redoc() -> str:
        return pages["/redoc"]

    @app.get("/v1/cities", dependencies=v1, tags=["balances"])
    def list_cities(conn: Conn, format: Format = "json") -> Any:
        rows = [{"city": c, "name": n} for c, n in queries.cities(conn).items()]
        return _table({"cities": rows}, rows, format)

    @app.get("/v1/cities/{city}/balances", dependencies=v1, tags=["balances"])
    def city_balances(
        city: Text, conn: Conn, scheme: Scheme | None = None,
        as_of: AsOf = None, format: Format = "json",
    ) -> Any:
        """A city's pooling fund: balance at `as_of`, and the fiscal year's income and expenditure by category."""
        body = queries.city_balances(conn, city, scheme, _aware(as_of))
        rows = [{"side": side, "category": k, "amount_fen": v}
                for side in ("income", "expenditure") for k, v in body[f"{side}_fen"].items()]
        return _table(body, rows, format)

    @app.get("/v1/accounts/{account}/daily", dependencies=v1, tags=["balances"])
    def account_daily(
        account: Text, conn: Conn, start: From = None, end: To = None, format: Format = "json",
    ) -> Any:
        """Closing balance of an account on each business day it moved (for charts)."""
        body = queries.daily(conn, account, _day(start, "from"), _day(end, "to"))
        return _table(body, body["days"], format)

    @app.get("/v1/province/summary", dependencies=v1, tags=["province"])
    def province_summary(conn: Conn, year: Year | None = None, as_of: AsOf = None, format: Format = "json") -> Any:
        """Per scheme: city balances, the adjustment fund against its 10 % ceiling, extractions and allocations."""
        body = queries.province_summary(conn, year, _aware(as_of))
        return _table(body, body["schemes"], format)

    @app.get("/v1/budgets", dependencies=v1, tags=["budgets"])
    def all_budgets(conn: Conn, year: Year, format: Format = "json") -> Any:
        """Budget execution of every city and scheme in a year, and who has no approved budget."""
        body = queries.budgets(conn, year)
        return _table(body, [_flat_budget(r) for r in body["rows"]], format)

    @app.get("/v1/out-of-city", dependencies=v1, tags=["balances"])
    def out_of_city(conn: Conn, year: Year, format: Format = "json") -> Any:
        """Treatment in another city (RULES E7): what each city's funds paid the institutions of
        other cities in a fiscal year, per scheme, net of reversals; the employee scheme's figures
        include the claims paid from the city's personal accounts (E6)."""
        body = queries.out_of_city(conn, year)
        return _table(body, body["rows"], format)

    @app.get("/v1/recoveries", dependencies=v1, tags=["balances"])
    def recoveries(conn: Conn, year: Year, format: Format = "json") -> Any:
        """Money recovered from institutions (RULES P4) per city, scheme and reason in a fiscal year."""
        body = queries.recoveries(conn, year)
        return _table(body, body["rows"], format)

    @app.get("/v1/personal-accounts", dependencies=v1, tags=["balances"])
    def personal_accounts(conn: Conn, year: Year, as_of: AsOf = None, format: Format = "json") -> Any:
        """Employee personal accounts (RULES E6) per city: balance at `as_of`, and the fiscal year's
        contributions credited to them (`income_fen`) and claims paid from them (`payouts_fen`),
        net of reversals."""
        body = queries.personal_accounts(conn, year, _aware(as_of))
        return _table(body, body["rows"], format)

    @app.get("/v1/subsidies/reconciliation", dependencies=v1, tags=["budgets"])
    def subsidy_reconciliation(conn: Conn, year: Year, format: Format = "json") -> Any:
        """Fiscal subsidies (RULES I3) per city, scheme and finance level in a fiscal year: paid
        against headcount x the policy's per-capita standard; `totals` for standards of several
        levels together. A view, not a block: `headcount` is the payments' own
        (`SubsidyDisbursed.headcount`, net of reversals), None for a group where a payment came
        without one; `headcounts_known` is false then."""
        body = queries.subsidy_reconciliation(conn, year)
        return _table(body, body["rows"], format)

    @app.get("/v1/budgets/{city}/{scheme}/{year}", dependencies=v1, tags=["budgets"])
    def one_budget(city: Text, scheme: Scheme, year: YearPath, conn: Conn, format: Format = "json") -> Any:
        """Budget against actual and the execution percentage (claims paid / budgeted expenditure)."""
        body = queries.budget(conn, city, scheme, year)
        return _table(body, [_flat_budget(body)], format)

    @app.get("/v1/risk", dependencies=v1, tags=["risk"])
    def risk(conn: Conn, as_of: AsOf = None, format: Format = "json") -> Any:
        """Months of expenditure each fund's balance covers, with a warning level against the policy's band."""
        body = queries.risk(conn, _aware(as_of))
        return _table(body, body["rows"], format)

    @app.get("/v1/events/{event_id}", dependencies=v1, tags=["events"])
    def event_status(event_id: Text, conn: Conn) -> dict[str, Any]:
        """The fate of an upstream event: accepted, rejected (with its reason) or unknown."""
        return queries.event_status(conn, event_id)

    @app.get("/v1/rejections", dependencies=v1, tags=["events"])
    def rejection_counts(conn: Conn, format: Format = "json") -> Any:
        """Rejections counted by reason and by producing service."""
        body = queries.rejections(conn)
        return _table(body, body["rows"], format)

    @app.get("/v1/audit/trial-balance", dependencies=v1, tags=["audit"])
    def trial_balance(conn: Conn, as_of: AsOf = None, format: Format = "json") -> Any:
        """Every account's balance at `as_of`; the total is zero."""
        body = queries.trial_balance(conn, _aware(as_of))
        return _table(body, body["accounts"], format)

    # -- the annual fund statement (issue 10) --------------------------------------------------
    @app.get("/v1/statements/{year}", dependencies=v1, tags=["statements"])
    def annual_statement(
        year: YearPath, conn: Conn,
        city: Annotated[str | None, Query(max_length=PATH_VALUE_LENGTH_MAX, pattern=PRINTABLE,
                                          description="One city's code.")] = None,
        scheme: Scheme | None = None, format: Format = "json",
    ) -> Any:
        """The annual fund statement (final accounts) of a fiscal year: per city and scheme the pooling
        fund and the employee personal accounts (RULES E6), and (without `city`) per scheme the
        provincial adjustment fund and the consolidated province, where extractions and allocations
        cancel (X6). Lines in integer fen with their yuan text; `csv` gives one row per line. The
        same statement as `pooling-ledger statement` (projections/statement.py)."""
        from projections import statement

        body = statement.read_statement(conn, year, city=city, scheme=scheme)
        return _table(body, statement.csv_rows(body), format)

    return app


def _aware(as_of: datetime | None) -> datetime | None:
    if as_of is None:
        return None
    if as_of.tzinfo is None:
        raise HTTPException(422, "as_of needs an offset, e.g. 2025-12-20T00:00:00+08:00")
    if not YEAR_MIN < as_of.year < YEAR_MAX:  # strictly: the offset may move it a day either way
        raise HTTPException(422, f"as_of must fall in the years {YEAR_MIN + 1}-{YEAR_MAX - 1}")
    as_of.astimezone(UTC)  # cannot overflow within those years
    return as_of


def _day(day: date | None, name: str) -> date | None:
    if day is not None and not YEAR_MIN <= day.year <= YEAR_MAX:
        raise HTTPException(422, f"{name} must fall in the years {YEAR_MIN}-{YEAR_MAX}")
    return day


def _flat_budget(row: dict[str, Any]) -> dict[str, Any]:
    planned = row["budget"] or {}
    return {
        "city": row["city"], "name": row["name"], "scheme": row["scheme"], "fiscal_year": row["fiscal_year"],
        "budget_income_fen": planned.get("income_fen"), "budget_expenditure_fen": planned.get("expenditure_fen"),
        "actual_income_fen": row["actual"]["income_fen"], "actual_expenditure_fen": row["actual"]["expenditure_fen"],
        "execution_bp": row["execution_bp"], "flag": row["flag"],
    }


def _table(body: dict[str, Any], rows: list[dict[str, Any]], format: str) -> Any:
    if format != "csv":
        return body
    out = io.StringIO()
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8")


def _cell(value: Any) -> Any:
    return "" if value is None else value


