"""Reads of the treasury's tables, in the shapes of DESIGN §5 (JSON-able dicts, integer fen).

Everything here reads only the `pl_*` tables (and the event table's positions for the
lag), so it runs under the read-only role.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from ledger import accounts, formulas
from ledger.aggregates import (
    ALLOCATION_CATEGORY,
    CLAIM_PREFIX,
    CONTRIBUTION_PREFIX,
    EXTRACTION_CATEGORY,
    INTEREST_CATEGORY,
    PREMIUM_CATEGORY,
    PRIOR_YEAR_PREFIX,
    SUBSIDY_PREFIX,
)
from ledger.clock import CHINA_STANDARD_TIME, business_date_of
from projections.projector import lag

#: The rejection reason of a message the ledger's own code failed on (counted by /health).
UNPROCESSABLE = "unprocessable"
from schemas.policy import ExtractionBase, Policy, Scheme, SubsidyLevel

Conn = psycopg.Connection[Any]

INCOME_PREFIXES = (CONTRIBUTION_PREFIX, SUBSIDY_PREFIX, INTEREST_CATEGORY, ALLOCATION_CATEGORY)
#: The major-illness premium (E8) is a benefit expenditure of the resident pooling fund.
EXPENDITURE_PREFIXES = (CLAIM_PREFIX, EXTRACTION_CATEGORY, PREMIUM_CATEGORY)
RISK_WINDOW_MONTHS = 12


class NotFound(LookupError):
    """The thing asked for is not in the ledger (HTTP 404)."""


def now() -> datetime:
    return datetime.now(CHINA_STANDARD_TIME)


# -- policy -------------------------------------------------------------------


def policy_in_force(conn: Conn, day: date) -> Policy | None:
    row = conn.execute(
        "SELECT policy FROM pl_policies WHERE effective_from <= %s"
        " ORDER BY effective_from DESC, notification_id DESC LIMIT 1",
        (day,),
    ).fetchone()
    if row is None:
        row = conn.execute(
            "SELECT policy FROM pl_policies ORDER BY effective_from, notification_id LIMIT 1"
        ).fetchone()
    return Policy.model_validate(row[0]) if row else None


def cities(conn: Conn, day: date | None = None) -> dict[str, str]:
    policy = policy_in_force(conn, day or now().date())
    return dict(policy.cities) if policy else {}


# -- balances -------------------------------------------------------------------


def trial_balance(conn: Conn, as_of: datetime | None = None) -> dict[str, Any]:
    if as_of is None:
        rows = conn.execute("SELECT account, balance_fen FROM pl_account_balances ORDER BY account").fetchall()
    else:
        rows = conn.execute(
            "SELECT account, sum(amount_fen) FROM pl_postings WHERE occurred_at <= %s"
            " GROUP BY account ORDER BY account",
            (as_of,),
        ).fetchall()
    accounts_ = [{"account": a, "balance_fen": int(b)} for a, b in rows]
    return {
        "as_of": (as_of or now()).isoformat(),
        "accounts": accounts_,
        "total_fen": sum(a["balance_fen"] for a in accounts_),
    }


def balance_fen(conn: Conn, account: str, as_of: datetime | None = None) -> int:
    if as_of is None:
        row = conn.execute("SELECT balance_fen FROM pl_account_balances WHERE account = %s", (account,)).fetchone()
    else:
        return balances_at_fen(conn, [account], as_of).get(account, 0)
    return int(row[0]) if row and row[0] is not None else 0


def balances_at_fen(conn: Conn, accounts_: list[str], as_of: datetime) -> dict[str, int]:
    """The balances of `accounts_` at `as_of`: today's, less what was posted after `as_of`."""
    rows = conn.execute(
        "SELECT account, sum(amount_fen) FROM (SELECT account, balance_fen AS amount_fen"
        " FROM pl_account_balances WHERE account = ANY(%s) UNION ALL SELECT account, -amount_fen"
        " FROM pl_postings WHERE account = ANY(%s) AND occurred_at > %s) AS t GROUP BY account",
        (accounts_, accounts_, as_of),
    ).fetchall()
    return {a: int(b) for a, b in rows}


def _side(category: str) -> str | None:
    """Which side of a fund's year a category belongs to (prior-year adjustments by their own)."""
    base = category.removeprefix(PRIOR_YEAR_PREFIX)
    if base.startswith(INCOME_PREFIXES):
        return "income"
    if base.startswith(EXPENDITURE_PREFIXES):
        return "expenditure"
    return None  # the opening balance is neither


def fund_year(conn: Conn, account: str, fiscal_year: int, as_of: datetime | None = None) -> dict[str, dict[str, int]]:
    """Income and expenditure of a fund in a fiscal year by category, net of reversals."""
    return funds_year(conn, [account], fiscal_year, as_of).get(account) or {"income": {}, "expenditure": {}}


def funds_year(
    conn: Conn, accounts_: list[str], fiscal_year: int, as_of: datetime | None = None
) -> dict[str, dict[str, dict[str, int]]]:
    """`fund_year` of several funds in one query: the year's totals, less what was posted after
    `as_of` (a category counts when any of its postings was made by then)."""
    rows = conn.execute(
        "SELECT account, category, nullif(subcategory, '') AS sub, sum(amount_fen) FROM ("
        " SELECT account, category, subcategory, amount_fen, postings FROM pl_account_year_totals"
        " WHERE fiscal_year = %s AND account = ANY(%s) UNION ALL"
        " SELECT account, category, coalesce(subcategory, ''), -amount_fen, -1 FROM pl_postings"
        " WHERE account = ANY(%s) AND occurred_at > %s AND fiscal_year = %s) AS t"
        " GROUP BY account, category, subcategory HAVING sum(postings) > 0"
        " ORDER BY account, category, sub",
        (fiscal_year, accounts_, accounts_, as_of or now(), fiscal_year),
    ).fetchall()
    flows: dict[str, dict[str, dict[str, int]]] = {}
    for account, category, subcategory, total in rows:
        result = flows.setdefault(account, {"income": {}, "expenditure": {}})
        side = _side(category)
        if side is None:
            continue
        key = f"{category}.{subcategory}" if subcategory else category
        result[side][key] = result[side].get(key, 0) + (int(total) if side == "income" else -int(total))
    return flows


def city_balances(conn: Conn, city: str, scheme: str | None, as_of: datetime | None) -> dict[str, Any]:
    known = cities(conn)
    if city not in known:
        raise NotFound(f"city {city} is not in the policy's city list")
    moment = as_of or now()
    year = business_date_of(moment).year
    schemes = [scheme] if scheme else [s.value for s in Scheme]
    per_scheme = {}
    for s in schemes:
        account = accounts.city_pooling(city, s)
        flows = fund_year(conn, account, year, moment)
        per_scheme[s] = {
            "account": account,
            "balance_fen": balance_fen(conn, account, as_of),
            "income_fen": flows["income"],
            "expenditure_fen": flows["expenditure"],
        }
    if scheme:
        body = per_scheme[scheme]
    else:  # both books side by side, and their sums (the schemes stay separate books)
        body = {
            "balance_fen": sum(v["balance_fen"] for v in per_scheme.values()),
            "income_fen": _sum_dicts(v["income_fen"] for v in per_scheme.values()),
            "expenditure_fen": _sum_dicts(v["expenditure_fen"] for v in per_scheme.values()),
            "schemes": per_scheme,
        }
    return {"city": city, "name": known[city], "scheme": scheme, "as_of": moment.isoformat(),
            "fiscal_year": year, **body}


def _sum_dicts(dicts: Any) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for d in dicts:
        for k, v in d.items():
            total[k] += v
    return dict(sorted(total.items()))


def daily(conn: Conn, account: str, start: date | None = None, end: date | None = None) -> dict[str, Any]:
    """Closing balance of `account` on every business day it moved, from `start` to `end`."""
    rows = conn.execute(
        "SELECT business_date, sum(net_fen) OVER (ORDER BY business_date)"
        " FROM pl_account_daily WHERE account = %s ORDER BY business_date",
        (account,),
    ).fetchall()
    days = [
        {"date": d.isoformat(), "balance_fen": int(b)}
        for d, b in rows
        if (start is None or d >= start) and (end is None or d <= end)
    ]
    return {"account": account, "days": days}


# -- province --------------------------------------------------------------------


def extraction_bases_fen(conn: Conn, fiscal_year: int, with_subsidies: bool) -> dict[str, int]:
    """Every fund's extraction base for `fiscal_year` (its collected income of the year before),
    by `formulas.extraction_base_fen` from the three figures the read tables keep."""
    prefixes = [CONTRIBUTION_PREFIX + "%"] + ([SUBSIDY_PREFIX + "%"] if with_subsidies else [])
    collected = _figures(
        conn,
        "SELECT account, sum(amount_fen) FROM pl_account_year_totals WHERE fiscal_year = %s"
        " AND category LIKE ANY(%s) GROUP BY account",
        (fiscal_year - 1, prefixes),
    )
    closed = _figures(
        conn, "SELECT account, income_fen FROM pl_closed_years WHERE fiscal_year = %s", (fiscal_year - 1,)
    )
    openings = _figures(
        conn,
        "SELECT account, previous_year_income_fen FROM pl_openings WHERE fiscal_year = %s",
        (fiscal_year,),
    )
    return {
        account: formulas.extraction_base_fen(
            openings.get(account), closed.get(account), collected.get(account, 0)
        )
        for account in collected.keys() | closed.keys() | openings.keys()
    }


def _figures(conn: Conn, sql: str, params: tuple[Any, ...]) -> dict[str, int]:
    """An `account -> fen` map from a query of two columns."""
    return {account: int(fen) for account, fen in conn.execute(sql, params)}


def fund_balances_fen(conn: Conn, as_of: datetime | None) -> dict[str, int]:
    """Every fund account's balance at `as_of` (now when None)."""
    if as_of is None:
        rows = conn.execute(
            "SELECT account, balance_fen FROM pl_account_balances"
            " WHERE account LIKE 'city:%%' OR account LIKE 'province:%%'"
        ).fetchall()
        return {a: int(b) for a, b in rows}
    funds = [
        a for (a,) in conn.execute(
            "SELECT account FROM pl_account_balances WHERE account LIKE 'city:%%' OR account LIKE 'province:%%'"
        )
    ]
    return balances_at_fen(conn, funds, as_of)


def province_summary(conn: Conn, year: int | None, as_of: datetime | None) -> dict[str, Any]:
    moment = as_of or now()
    year = year or business_date_of(moment).year
    policy = policy_in_force(conn, business_date_of(moment))
    if policy is None:
        return {"year": year, "as_of": moment.isoformat(), "schemes": []}
    with_subsidies = policy.extraction_base == ExtractionBase.contributions_and_subsidies
    balances = fund_balances_fen(conn, as_of)
    bases = extraction_bases_fen(conn, year, with_subsidies)
    closed = _figures(
        conn, "SELECT account, income_fen FROM pl_closed_years WHERE fiscal_year = %s", (year - 1,)
    )
    schemes = []
    for scheme in Scheme:
        province = accounts.province_adjustment(scheme)
        city_accounts = [accounts.city_pooling(c, scheme) for c in policy.cities]
        income = formulas.province_income_fen(closed.get(province), (bases.get(a, 0) for a in city_accounts))
        ceiling = formulas.adjustment_fund_ceiling_fen(income, policy.pause_ratio_bp)
        fund_fen = balances.get(province, 0)
        city_fen = sum(balances.get(a, 0) for a in city_accounts)
        flows = fund_year(conn, province, year, moment)
        schemes.append(
            {
                "scheme": scheme.value,
                "city_balances_fen": city_fen,
                "adjustment_fund_fen": fund_fen,
                "province_income_fen": income,
                "pause_ratio_bp": policy.pause_ratio_bp,
                "ceiling_fen": ceiling,
                "headroom_fen": max(0, ceiling - fund_fen),
                "extraction_paused": formulas.extraction_paused(fund_fen, ceiling),
                "extracted_fen": flows["income"].get(EXTRACTION_CATEGORY, 0)
                - flows["expenditure"].get(EXTRACTION_CATEGORY, 0),
                "allocated_fen": flows["expenditure"].get(ALLOCATION_CATEGORY, 0)
                - flows["income"].get(ALLOCATION_CATEGORY, 0),
                # X6: extractions (up) and allocations (down) are internal: they cancel here.
                "consolidated_fen": city_fen + fund_fen,
            }
        )
    return {"year": year, "as_of": moment.isoformat(), "schemes": schemes}


# -- budgets -----------------------------------------------------------------------


def budget(conn: Conn, city: str, scheme: str, year: int, names: dict[str, str] | None = None) -> dict[str, Any]:
    names = names if names is not None else cities(conn)
    if city not in names:
        raise NotFound(f"city {city} is not in the policy's city list")
    row = conn.execute(
        "SELECT income_fen, expenditure_fen, kind FROM pl_budgets WHERE city = %s AND scheme = %s"
        " AND fiscal_year = %s",
        (city, scheme, year),
    ).fetchone()
    flows = fund_year(conn, accounts.city_pooling(city, scheme), year, now())
    return _budget_row(city, names[city], scheme, year, row, flows)


def _budget_row(
    city: str, name: str, scheme: str, year: int, row: Any, flows: dict[str, dict[str, int]]
) -> dict[str, Any]:
    """One fund's budget execution: `row` is its pl_budgets (income, expenditure, kind) or None."""
    income = sum(v for k, v in flows["income"].items() if not k.startswith((ALLOCATION_CATEGORY, PRIOR_YEAR_PREFIX)))
    claims = sum(v for k, v in flows["expenditure"].items() if k.startswith(CLAIM_PREFIX))
    # B3/B5: the major-illness premium counts against the expenditure budget with the claims (E8)
    premium = flows["expenditure"].get(PREMIUM_CATEGORY, 0)
    paid = claims + premium
    planned = {"income_fen": int(row[0]), "expenditure_fen": int(row[1]), "kind": row[2]} if row else None
    execution_bp = formulas.budget_execution_bp(paid, planned["expenditure_fen"]) if planned else None
    flag = "no_budget" if planned is None else ("over_budget" if formulas.is_over_budget(execution_bp) else None)
    return {
        "city": city,
        "name": name,
        "scheme": scheme,
        "fiscal_year": year,
        "budget": planned,
        "actual": {"income_fen": income, "expenditure_fen": paid, "claims_fen": claims, "premium_fen": premium},
        "execution_bp": execution_bp,
        "execution_pct": formulas.percent_text(execution_bp) if execution_bp is not None else None,
        "flag": flag,
    }


def budgets(conn: Conn, year: int) -> dict[str, Any]:
    names = cities(conn)
    planned = {
        (city, scheme): (income, expenditure, kind)
        for city, scheme, income, expenditure, kind in conn.execute(
            "SELECT city, scheme, income_fen, expenditure_fen, kind FROM pl_budgets WHERE fiscal_year = %s",
            (year,),
        )
    }
    funds = [accounts.city_pooling(c, s) for c in names for s in Scheme]
    flows = funds_year(conn, funds, year, now())
    empty: dict[str, dict[str, int]] = {"income": {}, "expenditure": {}}
    rows = [
        _budget_row(
            c, names[c], s.value, year, planned.get((c, s.value)),
            flows.get(accounts.city_pooling(c, s), empty),
        )
        for c in names
        for s in Scheme
    ]
    return {
        "year": year,
        "rows": rows,
        "without_budget": [{"city": r["city"], "scheme": r["scheme"]} for r in rows if r["budget"] is None],
    }


# -- risk ----------------------------------------------------------------------------


def risk(conn: Conn, as_of: datetime | None = None) -> dict[str, Any]:
    """Months of expenditure each fund's balance covers (B4), against the policy's band.

    Average monthly expenditure = claims and the major-illness premium (E8: B3 counts it with
    the claims) paid over the last 12 months divided by the months of that window the fund has
    existed in the ledger (at least one), so a new ledger is not flattered by months it has no
    history of.
    """
    moment = as_of or now()
    day = business_date_of(moment)
    policy = policy_in_force(conn, day)
    if policy is None:
        return {"as_of": moment.isoformat(), "band": None, "rows": []}
    low, high = policy.risk_band.low_months, policy.risk_band.high_months
    window_start = _months_before(day, RISK_WINDOW_MONTHS - 1)  # 12 months, this one included
    funds = [accounts.city_pooling(city, scheme) for city in policy.cities for scheme in Scheme]
    spent = _expenditure_in_window(conn, funds, window_start, moment)
    balances = balances_at_fen(conn, funds, moment)
    rows = []
    for city, name in policy.cities.items():
        for scheme in Scheme:
            account = accounts.city_pooling(city, scheme)
            spent_fen, first_month = spent.get(account, (0, None))
            months = _months_spanned(first_month, day) if first_month else RISK_WINDOW_MONTHS
            monthly = formulas.monthly_expenditure_fen(spent_fen, months)
            balance = balances.get(account, 0)
            covered = formulas.months_covered_hundredths(balance, monthly)
            rows.append(
                {
                    "city": city,
                    "name": name,
                    "scheme": scheme.value,
                    "balance_fen": balance,
                    "monthly_expenditure_fen": monthly,
                    "months_covered_hundredths": covered,
                    "months_covered": formulas.hundredths_text(covered) if covered is not None else None,
                    "level": formulas.risk_level(covered, low, high),
                }
            )
    return {"as_of": moment.isoformat(), "band": {"low_months": low, "high_months": high}, "rows": rows}


def _expenditure_in_window(
    conn: Conn, funds: list[str], window_start: date, as_of: datetime
) -> dict[str, tuple[int, date | None]]:
    """Per fund, the claims and the major-illness premium paid on business days after
    `window_start` and by `as_of`, and the first month that has any: the claims' monthly totals
    less the claim postings after `as_of`, and the premium's postings (a few a year per fund,
    found through their partial index, pl_postings_premium: hence PREMIUM_CATEGORY's value as a
    literal)."""
    rows = conn.execute(
        "SELECT account, month, sum(amount_fen), sum(postings) FROM ("
        " SELECT account, month, amount_fen, postings FROM pl_account_monthly_claims"
        " WHERE account = ANY(%s) AND month > %s UNION ALL"
        " SELECT account, date_trunc('month', business_date)::date, -amount_fen, -1 FROM pl_postings"
        " WHERE account = ANY(%s) AND occurred_at > %s AND category LIKE %s AND business_date > %s UNION ALL"
        " SELECT account, date_trunc('month', business_date)::date, amount_fen, 1 FROM pl_postings"
        " WHERE category = 'premium.critical_illness' AND account = ANY(%s) AND business_date > %s"
        " AND occurred_at <= %s"
        ") AS t GROUP BY account, month",
        (funds, window_start, funds, as_of, CLAIM_PREFIX + "%", window_start, funds, window_start, as_of),
    ).fetchall()
    spent: dict[str, tuple[int, date | None]] = {}
    for account, month, amount_fen, postings in rows:
        paid_fen, first = spent.get(account, (0, None))
        if postings > 0:
            first = month if first is None else min(first, month)
        spent[account] = (paid_fen - int(amount_fen), first)
    return spent


def _months_before(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 - months
    return date(index // 12, index % 12 + 1, 1) - timedelta(days=1)


def _months_spanned(first: date, last: date) -> int:
    return max(1, min(RISK_WINDOW_MONTHS, (last.year - first.year) * 12 + last.month - first.month + 1))


# -- events ------------------------------------------------------------------------


def event_status(conn: Conn, event_id: str) -> dict[str, Any]:
    try:  # the spelling the ledger keeps, whatever case the producer sent
        event_id = str(UUID(event_id))
    except ValueError:
        pass
    row = conn.execute(
        "SELECT status, reason, detail, event_type, source_service, kafka_topic, kafka_partition,"
        " kafka_offset FROM pl_events WHERE event_id = %s",
        (event_id,),
    ).fetchone()
    if row is None:
        return {"event_id": event_id, "status": "unknown", "reason": None}
    status, reason, detail, event_type, service, topic, partition, offset = row
    return {
        "event_id": event_id,
        "status": status,
        "reason": reason,
        "detail": detail,
        "type": event_type,
        "source": service,
        "position": {"topic": topic, "partition": partition, "offset": offset} if topic else None,
    }


def rejections(conn: Conn) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT reason, source_service, count FROM pl_rejections ORDER BY reason, source_service"
    ).fetchall()
    return {"rows": [{"reason": r, "source": s, "count": int(n)} for r, s, n in rows]}


def health(conn: Conn) -> dict[str, Any]:
    """Liveness, the projection's lag and position, and how many messages were `unprocessable`
    (the ledger's code failed on them: each wants an operator's look)."""
    position = conn.execute("SELECT notification_id FROM pl_tracking LIMIT 1").fetchone()
    unprocessable = conn.execute(
        "SELECT coalesce(sum(count), 0) FROM pl_rejections WHERE reason = %s", (UNPROCESSABLE,)
    ).fetchone()
    return {
        "status": "ok",
        "projection_lag": lag(conn),
        "projection_position": int(position[0]) if position else 0,
        "unprocessable": int(unprocessable[0]) if unprocessable else 0,
    }


def metrics_text(conn: Conn) -> str:
    """The read side's figures in Prometheus' text format: `/health`'s, and the fates by reason."""
    registry = CollectorRegistry()
    figures = health(conn)
    Gauge(
        "pooling_projection_lag_notifications",
        "Notifications the ledger recorded and the read tables have not applied yet.",
        registry=registry,
    ).set(figures["projection_lag"])
    Gauge(
        "pooling_projection_position", "Notification id the read tables have applied up to.",
        registry=registry,
    ).set(figures["projection_position"])
    Gauge(
        "pooling_unprocessable_events",
        "Messages rejected `unprocessable` (the ledger's code failed on them), as projected.",
        registry=registry,
    ).set(figures["unprocessable"])
    rejected = Gauge(
        "pooling_rejected_events", "Rejected messages by reason, as projected.", ("reason",),
        registry=registry,
    )
    for reason, count in conn.execute(
        "SELECT reason, sum(count) FROM pl_rejections GROUP BY reason ORDER BY reason"
    ).fetchall():
        rejected.labels(reason).set(int(count))
    return generate_latest(registry).decode()


def out_of_city(conn: Conn, year: int) -> dict[str, Any]:
    """E7: what each city's funds paid for treatment in another city, per scheme (net of
    reversals): the insured city x treatment city matrix of a fiscal year. The employee scheme's
    cells count the claims paid from the city's personal accounts (E6) with its pooling fund's."""
    rows = conn.execute(
        "SELECT split_part(account, ':', 2), split_part(account, ':', 3),"
        " split_part(counter_account, ':', 3), -sum(amount_fen), count(*) FROM pl_postings"
        " WHERE fiscal_year = %s AND (account LIKE 'city:%%:pooling' OR account LIKE 'city:%%:employee:personal')"
        " AND counter_account LIKE 'external:institutions:%%' AND category LIKE 'claim.%%'"
        " AND split_part(counter_account, ':', 3) <> split_part(account, ':', 2)"
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        (year,),
    ).fetchall()
    return {
        "fiscal_year": year,
        "rows": [
            {"insured_city": insured, "scheme": scheme, "treatment_city": treated,
             "amount_fen": int(fen), "postings": int(n)}
            for insured, scheme, treated, fen, n in rows
        ],
    }


def recoveries(conn: Conn, year: int) -> dict[str, Any]:
    """P4: money recovered from institutions, per city, scheme and reason, in a fiscal year."""
    rows = conn.execute(
        "SELECT account, category, sum(amount_fen), sum(postings) FROM pl_account_year_totals"
        " WHERE fiscal_year = %s AND account LIKE 'city:%%:pooling' AND category LIKE 'recovery.%%'"
        " GROUP BY 1, 2 ORDER BY 1, 2",
        (year,),
    ).fetchall()
    out = []
    for account, category, fen, n in rows:
        name = accounts.AccountName.parse(account)
        out.append({"city": name.city, "scheme": name.scheme, "reason": category.removeprefix("recovery."),
                    "amount_fen": int(fen), "postings": int(n)})
    return {"fiscal_year": year, "rows": out}


# -- revision 2: personal accounts, subsidy reconciliation ------------------------------


def personal_accounts(conn: Conn, year: int, as_of: datetime | None = None) -> dict[str, Any]:
    """E6: per city, the employee personal accounts' balance at `as_of` (now when None), the
    contributions credited to them in fiscal year `year` (`income_fen`) and the claims paid from
    them in it (`payouts_fen`), both net of reversals and as of `as_of`."""
    moment = as_of or now()
    names = cities(conn)
    funds = [accounts.city_personal(c) for c in names]
    flows = funds_year(conn, funds, year, moment)
    balances = (
        balances_at_fen(conn, funds, as_of) if as_of is not None else
        _figures(conn, "SELECT account, balance_fen FROM pl_account_balances WHERE account = ANY(%s)", (funds,))
    )
    rows = []
    for city, name in names.items():
        account = accounts.city_personal(city)
        year_flows = flows.get(account, {"income": {}, "expenditure": {}})
        rows.append({
            "city": city,
            "name": name,
            "account": account,
            "balance_fen": balances.get(account, 0),
            "income_fen": sum(v for k, v in year_flows["income"].items() if k.startswith(CONTRIBUTION_PREFIX)),
            "payouts_fen": sum(v for k, v in year_flows["expenditure"].items() if k.startswith(CLAIM_PREFIX)),
        })
    return {
        "fiscal_year": year,
        "as_of": moment.isoformat(),
        "rows": rows,
        "total": {key: sum(r[key] for r in rows) for key in ("balance_fen", "income_fen", "payouts_fen")},
    }


#: A group of subsidies: (city, scheme, finance level).
SubsidyKey = tuple[str, str, str]


def subsidy_reconciliation(conn: Conn, year: int) -> dict[str, Any]:
    """I3 as a view (GX: subsidies "paid in full and on time"): per city, scheme and finance level,
    what the subsidies of fiscal year `year` paid (net of reversals) against headcount x the
    per-capita standard of the policy in force at the year's end.

    The headcount is `SubsidyDisbursed.headcount`, summed per group net of reversals
    (pl_subsidy_headcounts). A group has one only when every payment in it carried one (and
    every payment is counted there: subsidies projected before that table existed are not);
    `headcounts_known` says whether every group that was paid has one.
    """
    policy = policy_in_force(conn, date(year, 12, 31))
    paid: dict[SubsidyKey, tuple[int, int]] = {}
    for account, category, fen, n in conn.execute(
        "SELECT account, category, sum(amount_fen), sum(postings) FROM pl_account_year_totals"
        " WHERE fiscal_year = %s AND account LIKE 'city:%%:pooling' AND category LIKE %s GROUP BY 1, 2",
        (year, SUBSIDY_PREFIX + "%"),
    ):
        name = accounts.AccountName.parse(account)
        paid[(name.city or "", name.scheme or "", category.removeprefix(SUBSIDY_PREFIX))] = (int(fen), int(n))
    headcounts: dict[SubsidyKey, int] = {}
    for city, scheme, level, headcount, payments, without in conn.execute(
        "SELECT city, scheme, level, headcount, payments, payments_without_headcount"
        " FROM pl_subsidy_headcounts WHERE fiscal_year = %s",
        (year,),
    ):
        key = (city, scheme, level)
        if without == 0 and payments == paid.get(key, (0, 0))[1]:
            headcounts[key] = int(headcount)
    known = all(key in headcounts for key, (_, postings) in paid.items() if postings)
    return reconcile_subsidies(policy, year, paid, headcounts, known)


def reconcile_subsidies(
    policy: Policy | None, year: int, paid: dict[SubsidyKey, tuple[int, int]],
    headcounts: dict[SubsidyKey, int] | None, headcounts_known: bool | None = None,
) -> dict[str, Any]:
    """The reconciliation of `subsidy_reconciliation` from its inputs: `paid` (net fen and postings
    per city, scheme and level) and `headcounts` (the people the payments were for, per city,
    scheme and level, where known; None: not known at all, so no expectation can be formed).
    `headcounts_known` is reported as given (None: whether `headcounts` is not None).

    A row for every city of the policy and level that has a standard for `year`, and for every
    group that was paid. `expected_low_fen`/`expected_high_fen` are headcount x the lowest and the
    highest per-capita figure of the standard (equal when it has one figure); `difference_fen` is
    paid less expected, and with several figures how far paid lies outside that range (0 inside).
    `totals` does the same for the standards of several levels together (`subsidy_totals`): paid
    is the sum of those levels, and the headcount the largest any of them reported (the levels
    pay for the same insured people)."""
    names = dict(policy.cities) if policy else {}
    standards = {
        (s.scheme.value, s.level.value): s.per_capita_fen
        for s in (policy.subsidy_standards if policy else []) if s.fiscal_year == year
    }
    totals = [t for t in (policy.subsidy_totals if policy else []) if t.fiscal_year == year]
    levels = [lv.value for lv in SubsidyLevel]
    keys = set(paid) | {(c, scheme, level) for c in names for scheme, level in standards}
    order = {c: i for i, c in enumerate(names)}

    def sort_key(key: SubsidyKey) -> tuple[int, str, str, int, str]:
        city, scheme, level = key
        return (order.get(city, len(order)), city, scheme,
                levels.index(level) if level in levels else len(levels), level)

    rows = []
    for key in sorted(keys, key=sort_key):
        city, scheme, level = key
        fen, postings = paid.get(key, (0, 0))
        headcount = None if headcounts is None else headcounts.get(key)
        rows.append({
            "city": city, "name": names.get(city), "scheme": scheme, "level": level,
            "paid_fen": fen, "postings": postings, "headcount": headcount,
            **_expected(fen, headcount, standards.get((scheme, level))),
        })
    total_rows = []
    for total in totals:
        group = [lv.value for lv in total.levels]
        for city in names:
            members = [(city, total.scheme.value, level) for level in group]
            counts = [headcounts[k] for k in members if headcounts is not None and k in headcounts]
            fen = sum(paid.get(k, (0, 0))[0] for k in members)
            total_rows.append({
                "city": city, "name": names[city], "scheme": total.scheme.value, "levels": group,
                "paid_fen": fen, "postings": sum(paid.get(k, (0, 0))[1] for k in members),
                "headcount": max(counts) if counts else None,
                **_expected(fen, max(counts) if counts else None, total.per_capita_fen),
            })
    return {
        "fiscal_year": year,
        "policy": {"name": policy.name, "effective_from": policy.effective_from.isoformat()} if policy else None,
        "headcounts_known": headcounts is not None if headcounts_known is None else headcounts_known,
        "rows": rows,
        "totals": total_rows,
    }


def _expected(paid_fen: int, headcount: int | None, per_capita_fen: list[int] | None) -> dict[str, Any]:
    """The standard's figures, headcount x them, and paid's difference from them (see
    `reconcile_subsidies`); None where the standard or the headcount is missing."""
    low = min(per_capita_fen) if per_capita_fen else None
    high = max(per_capita_fen) if per_capita_fen else None
    if low is None or high is None or headcount is None:
        expected_low = expected_high = difference = None
    else:
        expected_low, expected_high = headcount * low, headcount * high
        difference = (paid_fen - expected_low if paid_fen < expected_low
                      else paid_fen - expected_high if paid_fen > expected_high else 0)
    return {
        "per_capita_low_fen": low, "per_capita_high_fen": high,
        "expected_low_fen": expected_low, "expected_high_fen": expected_high, "difference_fen": difference,
    }
