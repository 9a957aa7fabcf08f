"""Rejections: every rule breach is one exception carrying its stable reason code."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Reason(StrEnum):
    """The stable reason codes of `pooling.rejections.v1` (DESIGN §3, contract)."""

    invalid_json = "invalid_json"
    invalid_schema = "invalid_schema"
    unknown_city = "unknown_city"
    insufficient_funds = "insufficient_funds"
    over_budget = "over_budget"
    deficit_budget = "deficit_budget"
    cumulative_deficit_budget = "cumulative_deficit_budget"
    extraction_cap_exceeded = "extraction_cap_exceeded"
    extraction_paused = "extraction_paused"
    phase_not_active = "phase_not_active"
    earmark_violation = "earmark_violation"
    period_closed = "period_closed"
    unknown_original = "unknown_original"
    already_reversed = "already_reversed"
    event_id_conflict = "event_id_conflict"
    policy_violation = "policy_violation"
    allocation_exceeds_share = "allocation_exceeds_share"
    opening_balance_exists = "opening_balance_exists"
    # since RULES.md revision 2
    fiscal_year_mismatch = "fiscal_year_mismatch"
    period_not_ended = "period_not_ended"
    earlier_year_open = "earlier_year_open"
    reversal_before_original = "reversal_before_original"
    budget_exists = "budget_exists"
    no_approved_budget = "no_approved_budget"
    budget_below_actual = "budget_below_actual"
    recovery_exceeds_claim = "recovery_exceeds_claim"
    policy_retroactive = "policy_retroactive"
    #: A booking would take a fund's balance, or a year's total of one category, above MAX_FEN.
    amount_out_of_range = "amount_out_of_range"
    #: Above POOLING_MESSAGE_SIZE_MAX bytes: refused unparsed, only an excerpt and the sha256 kept.
    message_too_large = "message_too_large"
    #: Deciding the message raised an unexpected error (a bug): nothing of it is booked, and the
    #: fate is not final, so the same message published again is decided again.
    unprocessable = "unprocessable"


class Rejected(Exception):
    """An event breaks a rule: nothing of it is booked.

    `rule` is the id in RULES.md; `detail` tells a person what to do about it;
    `facts` carries the figures behind the decision (e.g. the allowed maximum).
    """

    def __init__(
        self, reason: Reason, rule: str, detail: str, facts: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(f"{reason.value} ({rule}): {detail}")
        self.reason = reason
        self.rule = rule
        self.detail = detail
        self.facts = dict(facts or {})
