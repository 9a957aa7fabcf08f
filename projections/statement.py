"""The annual fund statement (final accounts, 基金决算报表) of a fiscal year (issue 10).

In the categories of the social insurance fund accounting system: per city and scheme the
pooling fund, the employee scheme's personal accounts (RULES E6) as a statement of their own,
and for the province per scheme the adjustment fund and the consolidated statement (every city's
pooling fund with the adjustment fund, in which extractions and allocations cancel: X6), plus
the personal accounts of every city together.

One implementation for every reader: `annual_statement` is a pure function of per (fiscal year,
account, category) totals, as the projection table `pl_account_year_totals` holds them (signed
on the account: credits positive, debits negative; a reversal is the opposite posting under its
original's category, so it nets there). `read_statement` reads those totals (and the policy's
city names) and calls it; the read API (`GET /v1/statements/{year}`, read-only role) and the
CLI (`pooling-ledger statement`, `export statement`: they project first) both go through it.

Conventions (also in the statement's `basis`):

- **Opening balance** of year Y = what every posting of earlier fiscal years left
  (`opening_balance.brought_forward`) + the opening balances recorded in Y itself
  (`opening_balance.recorded`, the go-live figures of RULES P3). The closing balance of Y is
  therefore the brought-forward of Y+1, and its opening balance unless an opening is recorded in Y+1.
- **Prior-year adjustments** (`prior_year_adjustment.*`: a closed year's movement reversed) are
  figures of the year they are booked in, on their own lines after the surplus
  (`prior_year_adjustment.{original category}`, signed as their effect on the balance): the
  closed year's figures stay as closed, and the year's surplus is its own. Closing balance =
  opening + surplus + prior-year adjustments (+ in the consolidated statement the internal nets,
  which are 0).
- **Consolidated** statements show extractions and allocations both ways (remitted by the cities
  and received by the adjustment fund; paid by the adjustment fund and received by the cities)
  in a section of their own, `internal`, with their nets `x6.extraction_net` and
  `x6.allocation_net` (0 when they cancel), and leave them out of the income and expenditure totals.
- Categories the statement does not name (none today) are kept, under "other income"
  (`other.{category}`, signed as their effect on the balance), so nothing is dropped.

Money is integer fen; yuan is written from it with integer arithmetic (`yuan_text`), never a float.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg

from ledger import accounts
from ledger.aggregates import (
    ALLOCATION_CATEGORY,
    CLAIM_PREFIX,
    CONTRIBUTION_PREFIX,
    EXTRACTION_CATEGORY,
    INTEREST_CATEGORY,
    OPENING_CATEGORY,
    PREMIUM_CATEGORY,
    PRIOR_YEAR_PREFIX,
    RECOVERY_PREFIX,
    SUBSIDY_PREFIX,
)
from projections import queries
from projections.projector import PROJECTION_NAME
from projections.queries import NotFound
from schemas.policy import ClaimCategory, PayerKind, RecoveryReason, Scheme, SubsidyLevel
from storage.chain import latest_link

Conn = psycopg.Connection[Any]

STATEMENT_KIND = "annual_fund_statement"
#: The formats the statement is written in (`render`).
FORMATS = ("table", "csv", "xlsx", "json")
CSV_COLUMNS = (
    "fiscal_year", "scope", "city", "name", "scheme", "fund", "code", "label", "label_zh", "section",
    "level", "amount_fen", "amount_yuan",
)
#: The header row of every XLSX sheet's lines (the rows above it name the statement).
XLSX_HEADER = ("code", "line", "行次名称", "section", "level", "amount (fen)", "amount (yuan)")
XLSX_HEADER_ROW = 7
YUAN_FORMAT = "#,##0.00"


@dataclass(frozen=True)
class YearTotal:
    """The net of an account's postings of one category in one fiscal year (credits +, debits -)."""

    fiscal_year: int
    account: str
    category: str
    amount_fen: int


def yuan_text(fen: int) -> str:
    """Fen as yuan with two decimals, by integer arithmetic (-12345 -> "-123.45")."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole}.{cents:02d}"


# -- the lines ---------------------------------------------------------------------------------

PAYER_LABELS = {
    "employer": ("Employer contributions", "单位缴费收入"),
    "individual": ("Individual contributions", "个人缴费收入"),
    "medical_assistance": ("Contributions paid by medical assistance", "医疗救助资助参保收入"),
}
LEVEL_LABELS = {
    "central": ("Central government", "中央财政补助"),
    "provincial": ("Provincial government", "省级财政补助"),
    "city": ("City government", "市级财政补助"),
    "county": ("County government", "县级财政补助"),
}
CLAIM_LABELS = {
    "inpatient": ("Inpatient claims", "住院待遇支出"),
    "outpatient": ("Outpatient claims", "门诊待遇支出"),
    "chronic_special": ("Chronic and special disease outpatient claims", "门诊慢特病待遇支出"),
    "maternity": ("Maternity claims", "生育待遇支出"),
}
RECOVERY_LABELS = {
    "fraud": ("Recovered: fraud", "追回欺诈骗保基金"),
    "overpayment": ("Recovered: overpayments", "追回多支付基金"),
    "audit_adjustment": ("Recovered: audit adjustments", "审计调整追回基金"),
}


@dataclass(frozen=True)
class Line:
    code: str
    label: str
    label_zh: str
    section: str
    level: int = 0


def _line(code: str, labels: tuple[str, str], section: str, level: int = 0) -> Line:
    return Line(code, labels[0], labels[1], section, level)


def _children(prefix: str, values: Iterable[str], labels: Mapping[str, tuple[str, str]], section: str) -> list[Line]:
    return [_line(prefix + v, labels.get(v, (v, v)), section, 1) for v in values]


CONTRIBUTION_LINES = _children(CONTRIBUTION_PREFIX, [k.value for k in PayerKind], PAYER_LABELS, "income")
SUBSIDY_LINES = _children(SUBSIDY_PREFIX, [k.value for k in SubsidyLevel], LEVEL_LABELS, "income")
RECOVERY_LINES = _children(RECOVERY_PREFIX, [k.value for k in RecoveryReason], RECOVERY_LABELS, "income")
BENEFIT_LINES = [
    *_children(CLAIM_PREFIX, [k.value for k in ClaimCategory], CLAIM_LABELS, "expenditure"),
    _line(PREMIUM_CATEGORY, ("Major-illness insurance premium", "大病保险支出"), "expenditure", 1),
]
#: The category of every line that sums one category's postings (as its effect on the balance).
CATEGORY_LINES = frozenset(
    line.code for line in (*CONTRIBUTION_LINES, *SUBSIDY_LINES, *RECOVERY_LINES, *BENEFIT_LINES)
) | {INTEREST_CATEGORY}
#: Lines of money going out: shown as the negative of their effect on the balance.
OUTGOING = frozenset(line.code for line in BENEFIT_LINES) | {"extraction.remitted", "allocation.paid"}

#: A category's labels, for the prior-year adjustments of it.
LABELS = {
    **{line.code: (line.label, line.label_zh)
       for line in (*CONTRIBUTION_LINES, *SUBSIDY_LINES, *RECOVERY_LINES, *BENEFIT_LINES)},
    INTEREST_CATEGORY: ("Interest income", "利息收入"),
    OPENING_CATEGORY: ("Opening balance", "期初余额"),
    EXTRACTION_CATEGORY: ("Extractions", "上解"),
    ALLOCATION_CATEGORY: ("Allocations", "补助"),
}

OPENING = _line("opening_balance", ("Opening balance", "上年结余"), "balance")
BROUGHT_FORWARD = _line("opening_balance.brought_forward", ("Carried forward from earlier years", "上年滚存结余"),
                        "balance", 1)
RECORDED_OPENING = _line("opening_balance.recorded", ("Opening balance recorded in the year (go-live)",
                                                      "本年记录的期初余额"), "balance", 1)
ALLOCATION_RECEIVED = _line("allocation.received", ("Subsidy from the higher level (allocations received)",
                                                    "上级补助收入"), "income")
EXTRACTION_RECEIVED = _line("extraction.received", ("Remittances from lower levels (extractions received)",
                                                    "下级上解收入"), "income")
EXTRACTION_REMITTED = _line("extraction.remitted", ("Remittance to the higher level (extractions)", "上解上级支出"),
                            "expenditure")
ALLOCATION_PAID = _line("allocation.paid", ("Subsidy to lower levels (allocations paid)", "补助下级支出"),
                        "expenditure")
INTERNAL = (EXTRACTION_REMITTED, EXTRACTION_RECEIVED, ALLOCATION_PAID, ALLOCATION_RECEIVED)
PRIOR_YEAR = _line("prior_year_adjustment", ("Prior-year adjustments booked in the year (net)", "以前年度收支调整"),
                   "adjustment")


@dataclass(frozen=True)
class Fund:
    """What one statement covers."""

    scope: str  # city | province
    city: str | None
    name: str | None
    scheme: str
    fund: str  # pooling | personal_accounts | adjustment | consolidated
    accounts: tuple[str, ...]

    @property
    def consolidated(self) -> bool:
        return self.fund == "consolidated"

    @property
    def title(self) -> str:
        what = {"pooling": "pooling fund", "personal_accounts": "employee personal accounts",
                "adjustment": "provincial adjustment fund",
                "consolidated": "consolidated (city pooling funds and the adjustment fund)"}[self.fund]
        where = f"{self.name or 'City'} ({self.city})" if self.city else "Province"
        if self.scope == "province" and self.fund == "personal_accounts":
            what = "employee personal accounts of every city"
        return f"{where}, {self.scheme} scheme, {what}"


def _fund_kind(account: str) -> str | None:
    try:
        name = accounts.AccountName.parse(account)
    except ValueError:
        return None
    return name.kind if name.is_fund else None


def _effects(
    year_totals: Mapping[str, Mapping[str, int]], fund: Fund
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """The year's postings on `fund`'s accounts as effects on its balance: per line code, per
    prior-year adjustment's original category, per category the statement does not name."""
    lines: dict[str, int] = defaultdict(int)
    prior: dict[str, int] = defaultdict(int)
    other: dict[str, int] = defaultdict(int)
    for account in fund.accounts:
        province = _fund_kind(account) == "province_adjustment"
        for category, fen in year_totals.get(account, {}).items():
            if category.startswith(PRIOR_YEAR_PREFIX):
                prior[category.removeprefix(PRIOR_YEAR_PREFIX)] += fen
            elif category == OPENING_CATEGORY:
                lines[RECORDED_OPENING.code] += fen
            elif category == EXTRACTION_CATEGORY:
                lines[EXTRACTION_RECEIVED.code if province else EXTRACTION_REMITTED.code] += fen
            elif category == ALLOCATION_CATEGORY:
                lines[ALLOCATION_PAID.code if province else ALLOCATION_RECEIVED.code] += fen
            elif category in CATEGORY_LINES:
                lines[category] += fen
            else:
                other[category] += fen
    return lines, prior, other


def _fund_statement(
    fund: Fund, brought_forward: Mapping[str, int], year_totals: Mapping[str, Mapping[str, int]]
) -> dict[str, Any]:
    effects, prior, other = _effects(year_totals, fund)
    amounts: dict[str, int] = {}
    out: list[tuple[Line, int]] = []

    def add(line: Line, fen: int) -> int:
        amounts[line.code] = fen
        out.append((line, fen))
        return fen

    def category(line: Line) -> int:
        effect = effects.get(line.code, 0)
        return add(line, -effect if line.code in OUTGOING else effect)

    def group(head: Line, children: list[Line]) -> int:
        """A line summing its children (listed after it)."""
        at = len(out)
        total = sum(category(child) for child in children)
        out.insert(at, (head, total))
        amounts[head.code] = total
        return total

    carried = sum(brought_forward.get(a, 0) for a in fund.accounts)
    recorded = effects.get(RECORDED_OPENING.code, 0)
    opening = add(OPENING, carried + recorded)
    add(BROUGHT_FORWARD, carried)
    add(RECORDED_OPENING, recorded)

    income = group(_line("income.contributions", ("Contribution income", "社会保险费收入"), "income"),
                   CONTRIBUTION_LINES)
    income += group(_line("income.subsidies", ("Fiscal subsidy income", "财政补贴收入"), "income"), SUBSIDY_LINES)
    income += category(_line(INTEREST_CATEGORY, ("Interest income", "利息收入"), "income"))
    if not fund.consolidated:
        income += category(ALLOCATION_RECEIVED)
        income += category(EXTRACTION_RECEIVED)
    at = len(out)
    others = sum(category(line) for line in RECOVERY_LINES)
    for name, fen in sorted(other.items()):
        others += add(Line(f"other.{name}", f"Other: {name}", f"其他：{name}", "income", 1), fen)
    out.insert(at, (_line("income.other", ("Recoveries and other income", "其他收入"), "income"), others))
    amounts["income.other"] = others
    income += others
    add(_line("income.total", ("Total income of the year", "本年收入合计"), "income"), income)

    expenditure = group(_line("expenditure.benefits", ("Benefit expenditure", "待遇支出"), "expenditure"),
                        BENEFIT_LINES)
    if not fund.consolidated:
        expenditure += category(EXTRACTION_REMITTED)
        expenditure += category(ALLOCATION_PAID)
    add(_line("expenditure.total", ("Total expenditure of the year", "本年支出合计"), "expenditure"), expenditure)
    surplus = add(_line("surplus", ("Surplus of the year (income - expenditure)", "本年收支结余"), "result"),
                  income - expenditure)

    internal_net = 0
    checks: dict[str, bool] = {}
    if fund.consolidated:  # X6: shown both ways, and their nets
        internal = [Line(line.code, line.label, line.label_zh, "internal") for line in INTERNAL]
        remitted, received, paid, allocated = (category(line) for line in internal)
        extraction_net = add(Line("x6.extraction_net", "Extractions: received less remitted (X6)",
                                  "上解收支相抵", "internal"), received - remitted)
        allocation_net = add(Line("x6.allocation_net", "Allocations: received less paid (X6)", "补助收支相抵",
                                  "internal"), allocated - paid)
        internal_net = extraction_net + allocation_net
        checks["internal_transfers_cancel"] = extraction_net == 0 and allocation_net == 0

    prior_lines = [
        (Line(f"{PRIOR_YEAR.code}.{base}", f"Prior-year adjustment: {LABELS.get(base, (base, base))[0]}",
              f"以前年度调整：{LABELS.get(base, (base, base))[1]}", "adjustment", 1), fen)
        for base, fen in sorted(prior.items())
    ]
    adjustments = add(PRIOR_YEAR, sum(fen for _, fen in prior_lines))
    for line, fen in prior_lines:
        add(line, fen)

    closing = carried + sum(sum(year_totals.get(a, {}).values()) for a in fund.accounts)
    add(_line("closing_balance", ("Closing balance carried forward", "年末滚存结余"), "balance"), closing)
    checks["closing_balance_reconciles"] = opening + surplus + adjustments + internal_net == closing
    return {
        "scope": fund.scope,
        "city": fund.city,
        "name": fund.name,
        "scheme": fund.scheme,
        "fund": fund.fund,
        "title": fund.title,
        "accounts": list(fund.accounts),
        "lines": [
            {"code": line.code, "label": line.label, "label_zh": line.label_zh, "section": line.section,
             "level": line.level, "amount_fen": fen, "amount_yuan": yuan_text(fen)}
            for line, fen in out
        ],
        "checks": checks,
    }


BASIS = {
    "amounts": "integer fen (amount_fen); amount_yuan is the same figure in yuan with two decimals",
    "source": "the projection table pl_account_year_totals: per fiscal year, account and category, net of "
              "reversals (a reversal nets into its original's category)",
    "opening_balance": "brought forward from every posting of earlier fiscal years, plus the opening balances "
                       "recorded in the year (go-live)",
    "prior_year_adjustments": "reversals of a closed year's movements, booked in the year of this statement: "
                              "own lines after the surplus (prior_year_adjustment.*), signed as their effect on "
                              "the balance; closing = opening + surplus + prior-year adjustments",
    "consolidated": "every city's pooling fund of the scheme with the provincial adjustment fund; extractions and "
                    "allocations (X6) are shown both ways under section internal, with their nets, and left out "
                    "of the income and expenditure totals",
    "personal_accounts": "employee personal accounts (RULES E6) are statements of their own, never in the pooling "
                         "fund's or the consolidated figures",
}


def annual_statement(
    totals: Iterable[YearTotal],
    year: int,
    cities: Mapping[str, str],
    *,
    city: str | None = None,
    scheme: str | None = None,
    projection_position: int | None = None,
    chain_link: Any = None,
) -> dict[str, Any]:
    """The statement of fiscal year `year` from per (fiscal year, account, category) totals.

    `cities` names the cities (code -> name, in their order); a city with postings but no name
    is listed too. `city` limits it to one city's statements (then no province statements),
    `scheme` to one scheme. Raises NotFound for a city neither named nor posted to.
    """
    brought_forward: dict[str, int] = defaultdict(int)
    year_totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    seen: set[str] = set()
    for t in totals:
        if _fund_kind(t.account) is None or t.fiscal_year > year:
            continue
        seen.add(t.account)
        if t.fiscal_year < year:
            brought_forward[t.account] += t.amount_fen
        else:
            year_totals[t.account][t.category] += t.amount_fen
    posted_cities = sorted({a.split(":")[1] for a in seen if a.startswith("city:")} - set(cities))
    city_codes = [*cities, *posted_cities]
    if city is not None and city not in city_codes:
        raise NotFound(f"city {city} is neither in the policy's city list nor posted to")
    schemes = [s.value for s in Scheme if scheme is None or s.value == scheme]
    funds: list[Fund] = []
    for code in city_codes if city is None else [city]:
        for s in schemes:
            funds.append(Fund("city", code, cities.get(code), s, "pooling", (accounts.city_pooling(code, s),)))
            if s == Scheme.employee:
                funds.append(Fund("city", code, cities.get(code), s, "personal_accounts",
                                  (accounts.city_personal(code),)))
    if city is None:
        for s in schemes:
            adjustment = accounts.province_adjustment(s)
            funds.append(Fund("province", None, None, s, "adjustment", (adjustment,)))
            funds.append(Fund("province", None, None, s, "consolidated",
                              (*(accounts.city_pooling(c, s) for c in city_codes), adjustment)))
            if s == Scheme.employee:
                funds.append(Fund("province", None, None, s, "personal_accounts",
                                  tuple(accounts.city_personal(c) for c in city_codes)))
    return {
        "statement": STATEMENT_KIND,
        "fiscal_year": year,
        "city": city,
        "scheme": scheme,
        "currency": "CNY",
        "unit": "fen",
        "projection_position": projection_position,
        "chain_link": chain_link,
        "basis": BASIS,
        "statements": [_fund_statement(f, brought_forward, year_totals) for f in funds],
    }


# -- reading it --------------------------------------------------------------------------------


def read_totals(conn: Conn, year: int) -> tuple[int | None, list[YearTotal]]:
    """The projection's position and the funds' totals of fiscal years up to `year`, read in one
    statement (one snapshot: the position is the one the totals are as of)."""
    rows = conn.execute(
        "SELECT p.notification_id, t.fiscal_year, t.account, t.category, t.amount_fen"
        " FROM (SELECT notification_id FROM pl_tracking WHERE projection = %s) AS p"
        " LEFT JOIN LATERAL (SELECT fiscal_year, account, category, sum(amount_fen) AS amount_fen"
        "  FROM pl_account_year_totals WHERE fiscal_year <= %s"
        "  AND (account LIKE 'city:%%' OR account LIKE 'province:%%') GROUP BY 1, 2, 3) AS t ON true"
        " ORDER BY 2, 3, 4",
        (PROJECTION_NAME, year),
    ).fetchall()
    position = int(rows[0][0]) if rows else None
    return position, [YearTotal(int(y), a, c, int(f)) for _, y, a, c, f in rows if y is not None]


def chain_link_of(conn: Conn) -> dict[str, Any] | None:
    """The event store's latest hash-chain link (`storage.chain.latest_link`: link_id,
    last_notification_id, events, digest, previous_digest, recorded_at), or None where the store
    has no chain. It is the store's latest at the time of reading (it may cover notifications the
    read tables have not applied yet): `projection_position` says which ones the figures cover."""
    return latest_link(conn)


def read_statement(conn: Conn, year: int, city: str | None = None, scheme: str | None = None) -> dict[str, Any]:
    """The statement of `year` from the read tables (runs under the read-only role)."""
    policy = queries.policy_in_force(conn, date(year, 12, 31))
    position, totals = read_totals(conn, year)
    return annual_statement(
        totals, year, dict(policy.cities) if policy else {}, city=city, scheme=scheme,
        projection_position=position, chain_link=chain_link_of(conn),
    )


# -- writing it --------------------------------------------------------------------------------


def csv_rows(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"fiscal_year": body["fiscal_year"], **{k: s[k] for k in ("scope", "city", "name", "scheme", "fund")},
         **{k: line[k] for k in ("code", "label", "label_zh", "section", "level", "amount_fen", "amount_yuan")}}
        for s in body["statements"]
        for line in s["lines"]
    ]


def to_csv(body: Mapping[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(body):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def to_table(body: Mapping[str, Any]) -> str:
    """For people: one block per statement, fen and yuan right-aligned with thousands separators."""
    parts = []
    for s in body["statements"]:
        rows = [f"Annual fund statement {body['fiscal_year']}: {s['title']}", "=" * 96,
                f"{'':<56}{'fen':>20}{'yuan':>20}"]
        for line in s["lines"]:
            label = ("  " * line["level"] + line["label"])[:55]
            rows.append(f"{label:<56}{line['amount_fen']:>20,}{_grouped_yuan(line['amount_fen']):>20}")
        failed = [name for name, ok in s["checks"].items() if not ok]
        if failed:
            rows.append(f"CHECK FAILED: {', '.join(failed)}")
        parts.append("\n".join(rows))
    footer = f"projection position {body['projection_position']}; chain link {_link_text(body['chain_link']) or '-'}"
    return "\n\n".join([*parts, footer]) + "\n"


def _link_text(link: Any) -> str:
    """The chain link as one line of text ("" for none)."""
    if link is None:
        return ""
    return json.dumps(link, sort_keys=True, ensure_ascii=False) if isinstance(link, dict) else str(link)


def _grouped_yuan(fen: int) -> str:
    """Yuan with thousands separators, by integer arithmetic (-123456789 -> "-1,234,567.89")."""
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole:,}.{cents:02d}"


def to_xlsx(body: Mapping[str, Any]) -> bytes:
    """One sheet per statement: its title and source above the header row (row XLSX_HEADER_ROW),
    then one row per line with the integer fen and the yuan as an exact Decimal shown with two
    decimals."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    book.remove(book.worksheets[0])
    for s in body["statements"]:
        sheet = book.create_sheet(_sheet_name(s))
        sheet.append([f"Annual fund statement {body['fiscal_year']}: {s['title']}"])
        sheet.append(["fiscal_year", body["fiscal_year"]])
        sheet.append(["accounts", ", ".join(s["accounts"]) if len(s["accounts"]) <= 3
                      else f"{len(s['accounts'])} accounts: {', '.join(s['accounts'])}"])
        sheet.append(["projection_position", body["projection_position"]])
        sheet.append(["chain_link", _link_text(body["chain_link"])])
        sheet.append([])
        sheet.append(list(XLSX_HEADER))
        for cell in sheet[XLSX_HEADER_ROW]:
            cell.font = Font(bold=True)
        sheet["A1"].font = Font(bold=True)
        for line in s["lines"]:
            sheet.append([line["code"], "  " * line["level"] + line["label"], line["label_zh"], line["section"],
                          line["level"], line["amount_fen"], Decimal(line["amount_yuan"])])
            row = sheet.max_row
            sheet.cell(row, 6).number_format = "#,##0"
            sheet.cell(row, 7).number_format = YUAN_FORMAT
            if line["level"] == 0:
                for cell in sheet[row]:
                    cell.font = Font(bold=True)
        for column, width in zip("ABCDEFG", (34, 58, 24, 12, 6, 22, 22), strict=True):
            sheet.column_dimensions[column].width = width
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _sheet_name(s: Mapping[str, Any]) -> str:
    """Unique per statement and within Excel's 31 characters ("340100 employee personal")."""
    short = {"personal_accounts": "personal"}.get(s["fund"], s["fund"])
    return f"{s['city'] or 'province'} {s['scheme']} {short}"[:31]


def render(body: Mapping[str, Any], format: str) -> bytes:
    """The statement in `format` (one of FORMATS)."""
    if format == "json":
        return (json.dumps(body, ensure_ascii=False, indent=2) + "\n").encode()
    if format == "csv":
        return to_csv(body).encode()
    if format == "xlsx":
        return to_xlsx(body)
    if format == "table":
        return to_table(body).encode()
    raise ValueError(f"unknown statement format {format!r}: choose one of {', '.join(FORMATS)}")
