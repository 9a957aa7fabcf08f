"""Export the wire contract as JSON Schema files (one per event type).

The files in `schemas/json/` are committed; `tests/test_schemas.py` fails when
they are stale. Regenerate with `pooling-ledger schemas export`
(or `python -m schemas`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.events import EVENT_TYPES, Envelope
from schemas.policy import Policy

SUFFIX = ".schema.json"


def default_schema_dir() -> Path:
    """The `schemas/json` folder inside the package."""
    return Path(__file__).resolve().parent / "json"


def _models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {"Envelope": Envelope, "Policy": Policy}
    models.update(EVENT_TYPES)
    return models


def render_json_schemas() -> dict[str, str]:
    """File name → file text of every JSON Schema file, deterministic."""
    return {
        f"{name}{SUFFIX}": json.dumps(
            model.model_json_schema(mode="validation"),
            sort_keys=True,
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
        for name, model in sorted(_models().items())
    }


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one `{Type}.schema.json` per model into `directory`; return the paths.

    Stale `*.schema.json` files (no longer matching a model) are removed.
    Files whose content is unchanged are not rewritten.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render_json_schemas()
    for stale in sorted(directory.glob(f"*{SUFFIX}")):
        if stale.name not in rendered:
            stale.unlink()
    written: list[Path] = []
    for name, text in rendered.items():
        path = directory / name
        data = text.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else default_schema_dir()
    for path in export_json_schemas(directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
