"""Policy data: loading policy files and choosing the policy in force on a day."""

from __future__ import annotations

import json
from bisect import bisect_right
from datetime import date
from importlib import resources
from pathlib import Path

from schemas.policy import Policy

DEFAULT_POLICY_NAME = "anhui"


def packaged_policy_names() -> list[str]:
    folder = resources.files("ledger") / "policies"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_packaged_policy(name: str = DEFAULT_POLICY_NAME) -> Policy:
    """A policy file shipped with the ledger (`ledger/policies/{name}.json`)."""
    text = (resources.files("ledger") / "policies" / f"{name}.json").read_text("utf-8")
    return Policy.model_validate_json(text)


def load_policy_file(path: Path) -> Policy:
    return Policy.model_validate(json.loads(path.read_text("utf-8")))


class PolicyTimeline:
    """Policies by effective date; the one in force on a day is the latest that started."""

    def __init__(self) -> None:
        self._starts: list[date] = []
        self._policies: list[Policy] = []

    def adopt(self, policy: Policy) -> None:
        index = bisect_right(self._starts, policy.effective_from)
        self._starts.insert(index, policy.effective_from)
        self._policies.insert(index, policy)

    def in_force(self, day: date) -> Policy | None:
        index = bisect_right(self._starts, day)
        return self._policies[index - 1] if index else None

    def __len__(self) -> int:
        return len(self._policies)
