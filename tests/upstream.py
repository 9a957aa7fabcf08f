"""Upstream event messages for the tests, and feeding them to an in-memory ledger.

Each builder returns one upstream message (the envelope and the event's own fields) as a
JSON-able dict. The envelope is `event`'s: a fresh uuid4 event_id, schema_version 1,
province 340000, `occurred_at` and `source` as given. Every builder passes the envelope's
keywords (`occurred_at`, `source`, `event_id`) on to `event`, so a test file with
messages of its own date, producer or ids says so at its call sites or in a thin wrapper.

The defaults are those of the rule tests (test_ledger_rules, test_budget_and_adjustment_rules):
Hefei's resident scheme, fiscal 2025, occurred on 1 March 2025 (an opening on go-live day,
a budget, an allocation, a year close on dates of their own), source "test.anhui".
A city of None leaves the `city` field out (the province's adjustment fund). Money is
integer fen.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from consumers.booking import record_batch
from consumers.inbound import Inbound
from ledger import accounts, audit
from ledger.application import Ledger, Outcome
from schemas.policy import Policy

PROVINCE = "340000"
HEFEI, WUHU, BENGBU = "340100", "340200", "340300"
OCCURRED_AT = "2025-03-01T10:00:00+08:00"
GO_LIVE = "2025-01-01T00:00:00+08:00"
SOURCE = "test.anhui"


# --------------------------------------------------------------------------- messages


def event(
    type_: str,
    *,
    occurred_at: str = OCCURRED_AT,
    source: str = SOURCE,
    event_id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One upstream message (envelope + `fields`) as a JSON-able dict."""
    return {
        "event_id": str(uuid.uuid4()) if event_id is None else event_id,
        "type": type_,
        "schema_version": 1,
        "occurred_at": occurred_at,
        "source": source,
        "province": PROVINCE,
        **fields,
    }


def _located(city: str | None) -> dict[str, str]:
    return {} if city is None else {"city": city}


def contribution(
    city: str | None = HEFEI,
    scheme: str = "resident",
    amount_fen: int = 10_000,
    *,
    payer_kind: str = "individual",
    **envelope: Any,
) -> dict[str, Any]:
    return event(
        "ContributionReceived",
        **envelope,
        **_located(city),
        scheme=scheme,
        payer_kind=payer_kind,
        amount_fen=amount_fen,
    )


def subsidy(
    city: str | None = HEFEI,
    scheme: str = "resident",
    amount_fen: int = 10_000,
    *,
    level: str = "central",
    **envelope: Any,
) -> dict[str, Any]:
    return event(
        "SubsidyDisbursed",
        **envelope,
        **_located(city),
        scheme=scheme,
        level=level,
        amount_fen=amount_fen,
    )


def claim(
    city: str | None = HEFEI,
    scheme: str = "resident",
    amount_fen: int = 1_000,
    *,
    claim_id: str | None = None,
    institution_id: str = "hosp-1",
    hospital_level: str = "tertiary",
    category: str = "inpatient",
    **envelope: Any,
) -> dict[str, Any]:
    """A paid claim, eligible for its whole amount; `claim_id` by default a fresh one."""
    return event(
        "ClaimPaid",
        **envelope,
        **_located(city),
        scheme=scheme,
        claim_id=f"claim-{uuid.uuid4().hex[:8]}" if claim_id is None else claim_id,
        institution_id=institution_id,
        hospital_level=hospital_level,
        category=category,
        eligible_fen=amount_fen,
        amount_fen=amount_fen,
    )


def interest(
    scheme: str = "resident",
    amount_fen: int = 100,
    *,
    city: str | None = None,
    **envelope: Any,
) -> dict[str, Any]:
    """Interest on a city's fund, or (city None) on the province fund."""
    return event(
        "InterestCredited", **envelope, scheme=scheme, amount_fen=amount_fen, **_located(city)
    )


def opening(
    city: str | None = None,
    scheme: str = "resident",
    balance_fen: int = 10_000_000,
    *,
    previous_year_income_fen: int = 0,
    fiscal_year: int = 2025,
    occurred_at: str = GO_LIVE,
    **envelope: Any,
) -> dict[str, Any]:
    """The opening balance of a city's fund, or (city None) of the province fund."""
    return event(
        "OpeningBalanceRecorded",
        occurred_at=occurred_at,
        **envelope,
        scheme=scheme,
        balance_fen=balance_fen,
        previous_year_income_fen=previous_year_income_fen,
        fiscal_year=fiscal_year,
        **_located(city),
    )


def budget(
    income_fen: int,
    expenditure_fen: int,
    *,
    city: str | None = HEFEI,
    scheme: str = "resident",
    fiscal_year: int = 2025,
    type_: str = "BudgetApproved",
    occurred_at: str = "2025-01-10T10:00:00+08:00",
    **envelope: Any,
) -> dict[str, Any]:
    """BudgetApproved, or (`type_`) BudgetAdjusted."""
    return event(
        type_,
        occurred_at=occurred_at,
        **envelope,
        **_located(city),
        scheme=scheme,
        fiscal_year=fiscal_year,
        income_fen=income_fen,
        expenditure_fen=expenditure_fen,
    )


def extraction(
    amount_fen: int,
    *,
    city: str | None = HEFEI,
    scheme: str = "resident",
    fiscal_year: int = 2025,
    **envelope: Any,
) -> dict[str, Any]:
    return event(
        "AdjustmentFundExtracted",
        **envelope,
        **_located(city),
        scheme=scheme,
        fiscal_year=fiscal_year,
        amount_fen=amount_fen,
    )


def allocation(
    gap_fen: int,
    amount_fen: int,
    *,
    city: str | None = HEFEI,
    scheme: str = "resident",
    fiscal_year: int = 2025,
    reason: str = "policy_adjustment",
    occurred_at: str = "2025-10-01T10:00:00+08:00",
    **envelope: Any,
) -> dict[str, Any]:
    return event(
        "AdjustmentFundAllocated",
        occurred_at=occurred_at,
        **envelope,
        **_located(city),
        scheme=scheme,
        fiscal_year=fiscal_year,
        gap_fen=gap_fen,
        reason=reason,
        amount_fen=amount_fen,
    )


def close(
    city: str | None,
    fiscal_year: int,
    *,
    scheme: str = "resident",
    occurred_at: str = "2026-01-10T10:00:00+08:00",
    **envelope: Any,
) -> dict[str, Any]:
    """FiscalYearClosed of a city's fund, or (city None) of the province fund."""
    return event(
        "FiscalYearClosed",
        occurred_at=occurred_at,
        **envelope,
        scheme=scheme,
        fiscal_year=fiscal_year,
        **_located(city),
    )


def reversal(
    original: dict[str, Any] | str, *, reason: str = "entered in error", **envelope: Any
) -> dict[str, Any]:
    """EventReversed of `original` (a message, or its event_id)."""
    original_id = original if isinstance(original, str) else original["event_id"]
    return event("EventReversed", **envelope, original_event_id=original_id, reason=reason)


# --------------------------------------------------------------------- the ledger


def new_ledger(policy: Policy | None = None) -> Ledger:
    """A ledger on the in-memory store, seeded with `policy` (None: the packaged one)."""
    return Ledger(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, seed_policy=policy)


def raw(message: dict[str, Any] | bytes) -> bytes:
    return message if isinstance(message, bytes) else json.dumps(message).encode()


def feed(ledger: Ledger, *messages: dict[str, Any] | bytes) -> list[Outcome]:
    """Records `messages` as one batch."""
    return record_batch(ledger, [Inbound.parse(raw(m)) for m in messages])


def statuses(outcomes: list[Outcome]) -> list[tuple[str, str | None]]:
    return [(o.status, o.reason) for o in outcomes]


def trial_balance(ledger: Ledger) -> audit.TrialBalance:
    return audit.fold(e for _, e in ledger.notifications(audit.FUND_EVENT_TOPICS))


def pooling(city: str = HEFEI, scheme: str = "resident") -> str:
    return accounts.city_pooling(city, scheme)


def balance(ledger: Ledger, account: str) -> int:
    fund = ledger.fund(account)
    return 0 if fund is None else fund.balance_fen


def split(items: list[Any], sizes: list[int]) -> list[list[Any]]:
    """`items` in consecutive batches of `sizes`; whatever is left over in one last batch."""
    batches, start = [], 0
    for size in sizes:
        if start >= len(items):
            break
        batches.append(items[start : start + size])
        start += size
    if start < len(items):
        batches.append(items[start:])
    return batches


# ------------------------------------------------------------ RULES.md revision 2 messages


def recovery(
    city: str = HEFEI,
    scheme: str = "resident",
    amount_fen: int = 1_000,
    *,
    claim_event_id: str | None = None,
    institution_id: str = "hosp-1",
    institution_city: str | None = None,
    reason: str = "fraud",
    **envelope: Any,
) -> dict[str, Any]:
    """RecoveryReceived (P4): `claim_event_id` and `institution_city` left out when None."""
    return event(
        "RecoveryReceived",
        **envelope,
        city=city,
        scheme=scheme,
        institution_id=institution_id,
        **({} if institution_city is None else {"institution_city": institution_city}),
        reason=reason,
        **({} if claim_event_id is None else {"claim_event_id": claim_event_id}),
        amount_fen=amount_fen,
    )


def premium(
    city: str = HEFEI,
    scheme: str = "resident",
    amount_fen: int = 1_000,
    *,
    insurer_id: str = "PICC-AH",
    fiscal_year: int = 2025,
    **envelope: Any,
) -> dict[str, Any]:
    """CriticalIllnessPremiumPaid (E8)."""
    return event(
        "CriticalIllnessPremiumPaid",
        **envelope,
        city=city,
        scheme=scheme,
        insurer_id=insurer_id,
        fiscal_year=fiscal_year,
        amount_fen=amount_fen,
    )


def personal(city: str = HEFEI) -> str:
    """The account of a city's employee personal accounts (E6)."""
    return f"city:{city}:employee:personal"
