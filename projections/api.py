"""The treasury's read API (DESIGN §5) and its dashboard, served by one process.

Every `/v1` path needs `Authorization: Bearer <POOLING_API_TOKEN>`; the process reads
through the read-only role. `?format=csv` returns the table of an endpoint as CSV.
"""

from __future__ import annotations

import csv
import hmac
import io
from collections.abc import Iterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from importlib import resources
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from psycopg_pool import ConnectionPool

from projections import queries
from projections.queries import NotFound

POOL_SIZE_MAX = 8
POOL_TIMEOUT_S = 10.0

Format = Annotated[Literal["json", "csv"], Query(description="`csv` returns the endpoint's table as CSV.")]
AsOf = Annotated[
    datetime | None,
    Query(description="Business time, RFC 3339 with offset (e.g. 2025-12-20T00:00:00+08:00); default now."),
]


def connection(request: Request) -> Iterator[psycopg.Connection[Any]]:
    pool: ConnectionPool[Any] = request.app.state.pool
    with pool.connection() as conn:
        conn.read_only = True
        yield conn


Conn = Annotated[psycopg.Connection[Any], Depends(connection)]
From = Annotated[date | None, Query(alias="from", description="First business day (YYYY-MM-DD).")]
To = Annotated[date | None, Query(alias="to", description="Last business day (YYYY-MM-DD).")]


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
    )

    def authorised(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_token.encode()):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    app.state.pool = pool
    v1 = [Depends(authorised)]

    @app.exception_handler(NotFound)
    async def not_found(_: Request, error: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.get("/health", tags=["operations"])
    def health(conn: Conn) -> dict[str, Any]:
        """Liveness and the projection lag (notifications the read tables have not applied yet)."""
        return queries.health(conn)

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return (resources.files("projections") / "static" / "dashboard.html").read_text("utf-8")

    @app.get("/v1/cities", dependencies=v1, tags=["balances"])
    def list_cities(conn: Conn, format: Format = "json") -> Any:
        rows = [{"city": c, "name": n} for c, n in queries.cities(conn).items()]
        return _table({"cities": rows}, rows, format)

    @app.get("/v1/cities/{city}/balances", dependencies=v1, tags=["balances"])
    def city_balances(
        city: str, conn: Conn, scheme: Literal["employee", "resident"] | None = None,
        as_of: AsOf = None, format: Format = "json",
    ) -> Any:
        """A city's pooling fund: balance at `as_of`, and the fiscal year's income and expenditure by category."""
        body = queries.city_balances(conn, city, scheme, _aware(as_of))
        rows = [{"side": side, "category": k, "amount_fen": v}
                for side in ("income", "expenditure") for k, v in body[f"{side}_fen"].items()]
        return _table(body, rows, format)

    @app.get("/v1/accounts/{account}/daily", dependencies=v1, tags=["balances"])
    def account_daily(
        account: str, conn: Conn, start: From = None, end: To = None, format: Format = "json",
    ) -> Any:
        """Closing balance of an account on each business day it moved (for charts)."""
        body = queries.daily(conn, account, start, end)
        return _table(body, body["days"], format)

    @app.get("/v1/province/summary", dependencies=v1, tags=["province"])
    def province_summary(conn: Conn, year: int | None = None, as_of: AsOf = None, format: Format = "json") -> Any:
        """Per scheme: city balances, the adjustment fund against its 10 % ceiling, extractions and allocations."""
        body = queries.province_summary(conn, year, _aware(as_of))
        return _table(body, body["schemes"], format)

    @app.get("/v1/budgets", dependencies=v1, tags=["budgets"])
    def all_budgets(conn: Conn, year: int, format: Format = "json") -> Any:
        """Budget execution of every city and scheme in a year, and who has no approved budget."""
        body = queries.budgets(conn, year)
        return _table(body, [_flat_budget(r) for r in body["rows"]], format)

    @app.get("/v1/budgets/{city}/{scheme}/{year}", dependencies=v1, tags=["budgets"])
    def one_budget(city: str, scheme: Literal["employee", "resident"], year: int, conn: Conn, format: Format = "json") -> Any:
        """Budget against actual and the execution percentage (claims paid / budgeted expenditure)."""
        body = queries.budget(conn, city, scheme, year)
        return _table(body, [_flat_budget(body)], format)

    @app.get("/v1/risk", dependencies=v1, tags=["risk"])
    def risk(conn: Conn, as_of: AsOf = None, format: Format = "json") -> Any:
        """Months of expenditure each fund's balance covers, with a warning level against the policy's band."""
        body = queries.risk(conn, _aware(as_of))
        return _table(body, body["rows"], format)

    @app.get("/v1/events/{event_id}", dependencies=v1, tags=["events"])
    def event_status(event_id: str, conn: Conn) -> dict[str, Any]:
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

    return app


def _aware(as_of: datetime | None) -> datetime | None:
    if as_of is not None and as_of.tzinfo is None:
        raise HTTPException(422, "as_of needs an offset, e.g. 2025-12-20T00:00:00+08:00")
    return as_of


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


