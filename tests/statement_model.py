"""The test's own model of an annual fund statement (`projections.statement`): every line as a sum
of the journal's categories, from the journal export's rows. Independent of the code under test;
tests/test_statement.py and tests/test_province_pipeline.py hold the statements to it."""

from __future__ import annotations

from collections import Counter
from typing import Any

CONTRIBUTIONS = [f"contribution.{k}" for k in ("employer", "individual", "medical_assistance")]
SUBSIDIES = [f"subsidy.{k}" for k in ("central", "provincial", "city", "county")]
RECOVERIES = [f"recovery.{k}" for k in ("fraud", "overpayment", "audit_adjustment")]
BENEFITS = [f"claim.{k}" for k in ("inpatient", "outpatient", "chronic_special", "maternity")] + [
    "premium.critical_illness"]
PRIOR = "prior_year_adjustment."
KNOWN = {*CONTRIBUTIONS, *SUBSIDIES, *RECOVERIES, *BENEFITS, "interest", "opening", "extraction", "allocation"}


def is_fund(account: str) -> bool:
    return account.startswith(("city:", "province:"))


def effects(journal: list[dict[str, str]]) -> Counter[tuple[int, str, str]]:
    """(fiscal year, fund account, category) -> the net effect of the journal's transfers on the
    account's balance: credits +, debits -."""
    out: Counter[tuple[int, str, str]] = Counter()
    for row in journal:
        year, fen, category = int(row["fiscal_year"]), int(row["amount_fen"]), row["category"]
        for account, sign in ((row["credit_account"], 1), (row["debit_account"], -1)):
            if is_fund(account):
                out[(year, account, category)] += sign * fen
    return out


def expected_lines(moved: Counter[tuple[int, str, str]], year: int, funds: set[str], consolidated: bool) -> dict[str, int]:
    """Every line of the statement of `funds` in `year`, as the sums of the journal's categories."""
    this: Counter[tuple[str, str]] = Counter()
    carried = 0
    for (y, account, category), fen in moved.items():
        if account in funds and y < year:
            carried += fen
        elif account in funds and y == year:
            this[(account, category)] += fen
    assert {c for _, c in this if not c.startswith(PRIOR)} <= KNOWN, set(this)

    def total(test: Any) -> int:
        return sum(fen for (a, c), fen in this.items() if test(a, c))

    def category(name: str) -> int:
        return total(lambda a, c: c == name)

    def province(account: str) -> bool:
        return account.startswith("province:")

    lines = {"opening_balance.brought_forward": carried, "opening_balance.recorded": category("opening")}
    lines["opening_balance"] = carried + lines["opening_balance.recorded"]
    for group, names in (("income.contributions", CONTRIBUTIONS), ("income.subsidies", SUBSIDIES),
                         ("income.other", RECOVERIES)):
        for name in names:
            lines[name] = category(name)
        lines[group] = sum(lines[name] for name in names)
    lines["interest"] = category("interest")
    for name in BENEFITS:  # money going out, shown positive
        lines[name] = -category(name)
    lines["expenditure.benefits"] = sum(lines[name] for name in BENEFITS)
    lines["extraction.remitted"] = -total(lambda a, c: c == "extraction" and not province(a))
    lines["extraction.received"] = total(lambda a, c: c == "extraction" and province(a))
    lines["allocation.paid"] = -total(lambda a, c: c == "allocation" and province(a))
    lines["allocation.received"] = total(lambda a, c: c == "allocation" and not province(a))
    income = lines["income.contributions"] + lines["income.subsidies"] + lines["interest"] + lines["income.other"]
    expenditure = lines["expenditure.benefits"]
    if consolidated:  # X6: internal, out of the totals
        lines["x6.extraction_net"] = lines["extraction.received"] - lines["extraction.remitted"]
        lines["x6.allocation_net"] = lines["allocation.received"] - lines["allocation.paid"]
    else:
        income += lines["allocation.received"] + lines["extraction.received"]
        expenditure += lines["extraction.remitted"] + lines["allocation.paid"]
    lines["income.total"], lines["expenditure.total"] = income, expenditure
    lines["surplus"] = income - expenditure
    for (_, c), fen in this.items():
        if c.startswith(PRIOR):
            lines[c] = lines.get(c, 0) + fen
    lines["prior_year_adjustment"] = total(lambda a, c: c.startswith(PRIOR))
    lines["closing_balance"] = carried + sum(this.values())
    return lines
