"""Dependencies point inward: the packages' import boundaries, read from their source.

Every module of a package is parsed (`ast`, nothing imported), and every import in it counts:
at the top, inside functions, under `TYPE_CHECKING`, relative ones, and
`importlib.import_module("...")` / `__import__("...")` with a literal name.

- `ledger/` is the domain: no Kafka, no PostgreSQL, no bytes hashed or encoded (those are the
  adapters' business), and none of the packages built around it;
- `projections/` (the read side) and `storage/` (the PostgreSQL wiring) do not reach into the
  consumers, and storage knows nothing of the read side either;
- `schemas/` (the wire models) depends on nothing of the ledger's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> top-level modules it must not import.
FORBIDDEN_IMPORTS: dict[str, frozenset[str]] = {
    "ledger": frozenset({
        "kafka", "psycopg", "psycopg_pool", "hashlib", "base64",
        "consumers", "projections", "storage", "pooling_ledger",
    }),
    "projections": frozenset({"consumers"}),
    "storage": frozenset({"consumers", "projections"}),
    "schemas": frozenset({"ledger", "consumers", "projections", "storage"}),
}
DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _package_parts(path: Path) -> list[str]:
    """The package a module belongs to, as dotted parts (a package's `__init__` is its own)."""
    return list(path.relative_to(ROOT).parent.parts)


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = _package_parts(path)
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _dynamic_import(node: ast.Call) -> str | None:
    """The literal module name of `importlib.import_module("m")` or `__import__("m")`."""
    if isinstance(node.func, ast.Attribute):
        name = node.func.attr
    elif isinstance(node.func, ast.Name):
        name = node.func.id
    else:
        return None
    if name not in DYNAMIC_IMPORTERS or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(source: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in `source`, the module at `path`."""
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            yield module, node.lineno
            if not node.module:  # `from . import x`: x is a module of that package
                for alias in node.names:
                    yield f"{module}.{alias.name}", node.lineno
        elif isinstance(node, ast.Call):
            dynamic = _dynamic_import(node)
            if dynamic is not None:
                yield dynamic, node.lineno


def violations(package: str) -> list[str]:
    forbidden = FORBIDDEN_IMPORTS[package]
    found = []
    for path in modules_of(package):
        for module, line in imports_of(path.read_text(encoding="utf-8"), path):
            if module.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_package_imports_nothing_it_must_not(package: str) -> None:
    assert modules_of(package), f"{package}/ has no modules: the check would pass on nothing"
    found = violations(package)
    assert not found, (
        f"{package}/ must not import {', '.join(sorted(FORBIDDEN_IMPORTS[package]))}; found:\n  "
        + "\n  ".join(found)
    )


def test_every_kind_of_import_is_seen() -> None:
    source = (
        "import kafka.errors\n"
        "from psycopg import sql\n"
        "from . import accounts\n"
        "from ..consumers import store\n"
        "def f():\n"
        "    import hashlib\n"
        "    importlib.import_module('base64')\n"
        "    return __import__('psycopg_pool')\n"
    )
    seen = {module for module, _ in imports_of(source, ROOT / "ledger" / "sub" / "mod.py")}
    assert seen == {
        "kafka.errors", "psycopg", "ledger.sub", "ledger.sub.accounts", "ledger.consumers",
        "hashlib", "base64", "psycopg_pool",
    }

