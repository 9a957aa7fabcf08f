"""Policy data: loading policy files, choosing the policy in force on a day, and the rules that
read only the policy (I2 codes, E5, I3, X1)."""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path

from ledger.clock import business_date_of, fiscal_year_of
from ledger.errors import Reason, Rejected
from schemas.events import (
    AdjustmentFundAllocated,
    AdjustmentFundExtracted,
    SubsidyDisbursed,
    UpstreamEvent,
)
from schemas.policy import ExtractionBase, Policy

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


@dataclass(frozen=True)
class PolicyTerms:
    """The policy in force on an event's business day, with the rules that read only it.

    Each `check_*` is one rule of RULES.md (its id starts the docstring) and raises
    `Rejected` with that rule's reason code.
    """

    policy: Policy

    @property
    def extraction_base_with_subsidies(self) -> bool:
        """X3: whether collected income counts subsidies besides contributions."""
        return self.policy.extraction_base == ExtractionBase.contributions_and_subsidies

    def check_known_codes(self, event: UpstreamEvent) -> None:
        """I2: the province and city codes are the policy's."""
        policy = self.policy
        if event.province != policy.province:
            raise Rejected(
                Reason.unknown_city,
                "I2",
                f"province {event.province} is not {policy.province}, the province of policy {policy.name!r}",
            )
        fields = vars(event)  # an event type without the field: pydantic's __getattr__ would raise
        city = fields.get("city")
        if city is not None and city not in policy.cities:
            raise Rejected(Reason.unknown_city, "I2", f"city {city} is not in policy {policy.name!r}")
        treated_in = fields.get("institution_city")  # E7
        if treated_in is not None and treated_in not in policy.cities:
            raise Rejected(
                Reason.unknown_city, "I2", f"institution_city {treated_in} is not in policy {policy.name!r}"
            )

    def check_subsidised_scheme(self, event: SubsidyDisbursed) -> None:
        """E5: fiscal subsidies go to the subsidised schemes only (resident by default)."""
        if event.scheme not in self.policy.subsidised_schemes:
            allowed = ", ".join(s.value for s in self.policy.subsidised_schemes)
            raise Rejected(
                Reason.earmark_violation,
                "E5",
                f"subsidies may go to the {allowed} scheme only, not {event.scheme.value}",
            )

    def check_subsidy_standard(self, event: SubsidyDisbursed) -> None:
        """I3: with a headcount, a subsidy matches the per-capita standard of its level and year,
        and comes to no more a head than the standard of all the levels it is one of."""
        if event.headcount is None:
            return
        year = fiscal_year_of(event.occurred_at)
        for total in self.policy.subsidy_totals:
            if total.fiscal_year == year and event.level in total.levels and total.scheme == event.scheme:
                most_fen = event.headcount * max(total.per_capita_fen) + total.rounding_tolerance_fen
                if event.amount_fen > most_fen:
                    raise Rejected(
                        Reason.policy_violation,
                        "I3",
                        f"{event.amount_fen} fen for {event.headcount} people is more a head than all "
                        f"levels ({', '.join(lv.value for lv in total.levels)}) pay together in {year} "
                        f"(at most {max(total.per_capita_fen)} fen a head: {most_fen} fen)",
                        {"most_fen": most_fen},
                    )
        standards = [
            s for s in self.policy.subsidy_standards
            if s.fiscal_year == year and s.level == event.level and s.scheme == event.scheme
        ]
        if not standards:
            return
        expected = sorted({event.headcount * fen for s in standards for fen in s.per_capita_fen})
        tolerance = max(s.rounding_tolerance_fen for s in standards)
        if not any(abs(event.amount_fen - fen) <= tolerance for fen in expected):
            raise Rejected(
                Reason.policy_violation,
                "I3",
                f"{event.amount_fen} fen for {event.headcount} people does not match the "
                f"{event.level.value} standard of {year} "
                f"({', '.join(str(f) for s in standards for f in s.per_capita_fen)} "
                f"fen a head): expected one of {expected} (within {tolerance} fen)",
                {"expected_fen": expected},
            )

    def check_phase_active(self, event: AdjustmentFundExtracted | AdjustmentFundAllocated) -> None:
        """X1: the adjustment fund of a scheme works only from its phase date."""
        start = self.policy.adjustment_from.get(event.scheme)
        day = business_date_of(event.occurred_at)
        # Both the day it happens and the fiscal year it is for must be in the phase.
        if start is None or day < start or event.fiscal_year < start.year:
            when = f"from {start}" if start else "not at all under this policy"
            raise Rejected(
                Reason.phase_not_active,
                "X1",
                f"the {event.scheme.value} adjustment fund operates {when}; the event is dated {day} "
                f"(China Standard Time) for fiscal year {event.fiscal_year}",
                {"adjustment_from": str(start) if start else None, "business_date": str(day)},
            )
