"""JSON text to Python values, within limits, or a reason why not.

Python's `json` alone accepts what the ledger must refuse: a duplicate key (the last
value silently wins), `NaN` and `Infinity`, a number of thousands of digits, a lone
surrogate (`"\\ud800"`, text no UTF-8 encoder can write back), and nesting deep
enough to exhaust the stack. `loads` refuses each with a sentence a person can act on.

Problems of the JSON text itself raise `JsonSyntaxError` (reason `invalid_json`);
well-formed JSON whose strings the ledger cannot keep (a NUL byte, a text longer than
any field allows) raises `JsonContentError` (reason `invalid_schema`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

__all__ = [
    "JSON_DEPTH_MAX",
    "JSON_NUMBER_CHARS_MAX",
    "JSON_STRING_CHARS_MAX",
    "JsonContentError",
    "JsonSyntaxError",
    "loads",
]

#: Arrays and objects nested deeper than this are refused (a policy document needs 4).
JSON_DEPTH_MAX = 32
#: Characters of one number literal: 10**15 fen has 16; 100 leaves room and bounds the cost.
JSON_NUMBER_CHARS_MAX = 100
#: Characters of one string (key or value); the longest field of the contract allows 1,000.
JSON_STRING_CHARS_MAX = 10_000

_NUL = "\x00"
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonSyntaxError(ValueError):
    """Not UTF-8 JSON the ledger can read (reason `invalid_json`)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class JsonContentError(ValueError):
    """Well-formed JSON holding a string the ledger refuses (reason `invalid_schema`)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonSyntaxError(f"duplicate key {_shown(key)} in one object")
            seen.add(key)
    return obj


def _int(text: str) -> int:
    if len(text) > JSON_NUMBER_CHARS_MAX:
        raise JsonSyntaxError(f"a number of {len(text):,} characters (at most {JSON_NUMBER_CHARS_MAX})")
    return int(text)


def _float(text: str) -> float:
    if len(text) > JSON_NUMBER_CHARS_MAX:
        raise JsonSyntaxError(f"a number of {len(text):,} characters (at most {JSON_NUMBER_CHARS_MAX})")
    value = float(text)
    if not math.isfinite(value):
        raise JsonSyntaxError(f"the number {text} is out of range")
    return value


def _constant(name: str) -> Any:
    raise JsonSyntaxError(f"{name} is not JSON")


def _shown(text: str, chars_max: int = 40) -> str:
    shown = text if len(text) <= chars_max else text[:chars_max] + "..."
    return json.dumps(shown)  # escapes NUL and surrogates: safe in any log or detail


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_int=_int, parse_float=_float, parse_constant=_constant
)


def loads(raw: bytes) -> Any:
    """The JSON value of `raw` (UTF-8), within the limits above."""
    flat = _flat_object(raw)
    if flat is not None:
        return flat
    return _loads_checked(raw)


_FLAT_SCALARS = (str, int, bool, type(None))
#: The end of a key: a closing quote, JSON whitespace, a colon.
_KEY_END = re.compile(rb'"[ \t\n\r]*:')


def _flat_object(raw: bytes) -> dict[str, Any] | None:
    """The common case, fast: a flat object of strings, integers, booleans and nulls.

    orjson parses it; the result is trusted only where orjson cannot have accepted what
    `_loads_checked` refuses. Without a backslash in the text, no string holds an escape (so no
    NUL, no lone surrogate, no quote), so every quote followed by a colon ends a key: as many of
    them as keys parsed means no key was repeated. orjson refuses NaN, invalid UTF-8 and integers past
    64 bits itself. Anything else (escapes, nesting, a float, spacing before a colon, an
    error) is left to the exact parser, which also words the refusal.
    """
    if b"\\" in raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict or len(_KEY_END.findall(raw)) != len(value):
        return None
    for key, item in value.items():
        if type(item) not in _FLAT_SCALARS or len(key) > JSON_STRING_CHARS_MAX:
            return None
        if type(item) is str and len(item) > JSON_STRING_CHARS_MAX:
            return None
    return value


def _loads_checked(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonSyntaxError(f"not UTF-8: {error.reason} at byte {error.start}") from None
    if not text.strip():
        raise JsonSyntaxError("the message is empty; expected one JSON object")
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise JsonSyntaxError(f"nested deeper than {JSON_DEPTH_MAX} levels") from None
    except (JsonSyntaxError, JsonContentError):
        raise
    except ValueError as error:  # json.JSONDecodeError, or int() refusing a number
        raise JsonSyntaxError(str(error)) from None
    _check_tree(value)
    return value


def _check_tree(value: Any) -> None:
    """Depth and strings, without recursion (the depth is what is being checked)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            if depth > JSON_DEPTH_MAX:
                raise JsonSyntaxError(f"nested deeper than {JSON_DEPTH_MAX} levels")
            for key, item in node.items():
                _check_string(key, f"{path}{key if _clean(key) else '(key)'}")
                stack.append((item, depth + 1, f"{path}{key}." if _clean(key) else path))
        elif isinstance(node, list):
            if depth > JSON_DEPTH_MAX:
                raise JsonSyntaxError(f"nested deeper than {JSON_DEPTH_MAX} levels")
            for index, item in enumerate(node):
                stack.append((item, depth + 1, f"{path}{index}."))
        elif isinstance(node, str):
            _check_string(node, path.rstrip(".") or "(value)")


def _clean(key: str) -> bool:
    return len(key) <= 100 and _NUL not in key and not _SURROGATE.search(key)


def _check_string(text: str, where: str) -> None:
    if _SURROGATE.search(text):
        raise JsonSyntaxError(f"{where.rstrip('.')}: not valid Unicode (a lone surrogate such as \\ud800)")
    if _NUL in text:
        raise JsonContentError(f"{where.rstrip('.')}: text must not contain NUL (\\u0000)")
    if len(text) > JSON_STRING_CHARS_MAX:
        raise JsonContentError(
            f"{where.rstrip('.')}: a text of {len(text):,} characters (at most {JSON_STRING_CHARS_MAX:,})"
        )
