"""Every rule has its home: a `check_*` whose docstring starts with the rule's id.

Read from the source (`ast`), so a reader who searches `ledger/` for a rule id lands on
the check that enforces it, and the Application itself holds none.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

LEDGER = Path(__file__).resolve().parents[1] / "ledger"
#: Rules of RULES.md revision 1 enforced by a check (E2/E4 by the E3 edge check, X3 and M3
#: are definitions: collected income, and a transfer's one debit and one credit).
CHECKED_RULES = {
    "E1", "E3", "E5", "B1", "B2", "B3", "X1", "X2", "X4", "X5", "P1", "P2", "P3", "I1", "I2", "I3", "M1", "M2",
    "B5", "E8", "P4", "I4",  # revision 2
}
RULE_ID = re.compile(r"^([EBXPIM][0-9])\b")


def checks() -> dict[str, list[tuple[str, str]]]:
    """rule id -> (module, check name) of every `check_*` in ledger/."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(LEDGER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("check_"):
                doc = ast.get_docstring(node) or ""
                match = RULE_ID.match(doc)
                assert match, f"{path.name}: {node.name}'s docstring does not start with a rule id: {doc!r}"
                found.setdefault(match.group(1), []).append((path.name, node.name))
    return found


def test_every_checked_rule_has_a_check_in_the_ledger() -> None:
    assert set(checks()) == CHECKED_RULES


def test_each_check_is_defined_once_and_none_on_the_application() -> None:
    homes = [home for found in checks().values() for home in found]
    assert len(homes) == len(set(homes))
    assert not [home for home in homes if home[0] == "application.py"]
