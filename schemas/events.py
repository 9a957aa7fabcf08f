"""Wire contract of topic `pooling.events.v1`: one JSON object (UTF-8) per message.

Every message carries the envelope (`Envelope`) plus the fields of its `type`.
Validation is strict where the ledger's correctness depends on it:

* money is an integer number of fen (`*_fen`); a JSON float (`100.0`), a string
  (`"100"`) or a boolean is rejected;
* timestamps are RFC 3339 strings with an offset; dates are `YYYY-MM-DD`;
  `event_id` is a hyphenated UUID string;
* unknown fields are rejected (`extra="forbid"`), so a typo cannot pass silently.

`parse_event` turns raw bytes into a typed event, raising `InvalidJson` or
`InvalidSchema` (both `ValueError`) with a human-readable `detail`, and nothing
else, whatever the bytes: JSON is read within limits (`schemas.bounded_json`),
money is at most `MAX_FEN`, business time lies in 2000..2100, and a detail is
at most `DETAIL_CHARS_MAX` characters.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from schemas import bounded_json
from schemas.policy import (
    AllocationReason,
    ClaimCategory,
    DivisionCode,
    HospitalLevel,
    NonNegativeFen,
    PaidFrom,
    PayerKind,
    Policy,
    PositiveFen,
    RecoveryReason,
    Scheme,
    SubsidyLevel,
)

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "AdjustmentFundAllocated",
    "AdjustmentFundExtracted",
    "BudgetAdjusted",
    "BudgetApproved",
    "ClaimPaid",
    "ContributionReceived",
    "Envelope",
    "EventReversed",
    "FiscalYearClosed",
    "InterestCredited",
    "InvalidJson",
    "InvalidSchema",
    "MessageTooLarge",
    "OpeningBalanceRecorded",
    "PolicyAdopted",
    "SubsidyDisbursed",
    "UpstreamEvent",
    "parse_event",
]

SCHEMA_VERSION = 1
#: Business time (`occurred_at`) is refused outside these years: no fund of this ledger
#: moved before 2000, and far-off dates with extreme offsets overflow date arithmetic.
OCCURRED_YEAR_MIN = 2000
OCCURRED_YEAR_MAX = 2100
#: People behind one contribution or subsidy: more than any province has.
HEADCOUNT_MAX = 10**9
#: A rejection's detail names at most this many problems, each cut to ITEM characters.
DETAIL_PROBLEMS_MAX = 10
DETAIL_ITEM_CHARS_MAX = 300
DETAIL_CHARS_MAX = 4000
#: An event_id or type read from a rejected message is kept only up to this length.
IDENTIFYING_CHARS_MAX = 100

# --------------------------------------------------------------------------- types

_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_UUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")


def _rfc3339(value: Any) -> Any:
    # pydantic alone would also take Unix timestamps (numbers or numeric strings)
    # and a space separator; the contract says RFC 3339.
    if isinstance(value, datetime):
        year = value.year
    elif isinstance(value, str) and _RFC3339.match(value):
        year = int(value[:4])
    else:
        raise ValueError("must be an RFC 3339 timestamp with an offset, e.g. 2025-01-31T09:30:00+08:00")
    if not OCCURRED_YEAR_MIN <= year <= OCCURRED_YEAR_MAX:
        raise ValueError(
            f"must lie between {OCCURRED_YEAR_MIN}-01-01 and {OCCURRED_YEAR_MAX}-12-31, not in year {year}"
        )
    return value


def _iso_date(value: Any) -> Any:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.match(value):
        return value
    raise ValueError("must be a date in the form YYYY-MM-DD")


def _uuid(value: Any) -> Any:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str) and _UUID.match(value):
        return value
    raise ValueError("must be a UUID string, e.g. 0b9c6f2e-3d1a-4c56-9e7f-1a2b3c4d5e6f")


def _strict_int(value: Any) -> Any:
    # `Literal[1]` alone accepts 1.0 and true.
    if type(value) is not int:
        raise ValueError("must be an integer")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
IsoDate = Annotated[date, BeforeValidator(_iso_date)]
EventId = Annotated[UUID, BeforeValidator(_uuid)]
SchemaVersion = Annotated[Literal[1], BeforeValidator(_strict_int)]
Headcount = Annotated[int, Field(strict=True, gt=0, le=HEADCOUNT_MAX)]
FiscalYear = Annotated[int, Field(strict=True, ge=2000, le=2100)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"\S")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=r"\S")]


# -------------------------------------------------------------------------- models


class Envelope(BaseModel):
    """Fields every message carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: EventId = Field(description="Producer's idempotency key.")
    type: str = Field(description="Event type (discriminator).")
    schema_version: SchemaVersion = Field(description="Wire-contract version; must be 1.")
    occurred_at: Timestamp = Field(description="Business time, RFC 3339 with an offset.")
    source: Source = Field(description="Producing service, e.g. tax.anhui.")
    province: DivisionCode = Field(description="6-digit division code, e.g. 340000.")

    def payload(self) -> dict[str, Any]:
        """The canonical JSON-able dict of this event."""
        return self.model_dump(mode="json")


class ContributionReceived(Envelope):
    """A contribution (employer or individual) collected into a city's fund."""

    type: Literal["ContributionReceived"]
    city: DivisionCode
    scheme: Scheme
    payer_kind: PayerKind
    amount_fen: PositiveFen
    headcount: Headcount | None = None


class SubsidyDisbursed(Envelope):
    """A fiscal subsidy paid into a city's fund (resident scheme by policy)."""

    type: Literal["SubsidyDisbursed"]
    city: DivisionCode
    scheme: Scheme
    level: SubsidyLevel
    amount_fen: PositiveFen
    headcount: Headcount | None = None


class ClaimPaid(Envelope):
    """A benefit paid out for one claim; `amount_fen` never exceeds `eligible_fen`."""

    type: Literal["ClaimPaid"]
    city: DivisionCode
    scheme: Scheme
    claim_id: Identifier
    institution_id: Identifier
    hospital_level: HospitalLevel
    category: ClaimCategory
    eligible_fen: PositiveFen
    amount_fen: PositiveFen
    institution_city: DivisionCode | None = Field(
        default=None,
        description="City of the institution that treated the insured (RULES E7, one-stop "
        "settlement); absent: the insured's own `city`.",
    )
    paid_from: PaidFrom = Field(
        default=PaidFrom.pooling,
        description="The fund that pays (RULES E6): the pooling fund, or (employee scheme) the "
        "city's employee personal accounts.",
    )

    @model_validator(mode="after")
    def _payout_within_eligible(self) -> ClaimPaid:
        if self.amount_fen > self.eligible_fen:
            raise ValueError(
                f"amount_fen ({self.amount_fen}) must not exceed eligible_fen ({self.eligible_fen})"
            )
        return self


class InterestCredited(Envelope):
    """Interest credited to a city's fund, or (no `city`) to the provincial adjustment fund."""

    type: Literal["InterestCredited"]
    city: DivisionCode | None = None
    scheme: Scheme
    amount_fen: PositiveFen


class OpeningBalanceRecorded(Envelope):
    """The balance a fund starts a fiscal year with (no `city`: the province fund)."""

    type: Literal["OpeningBalanceRecorded"]
    city: DivisionCode | None = None
    scheme: Scheme
    balance_fen: NonNegativeFen
    previous_year_income_fen: NonNegativeFen
    fiscal_year: FiscalYear


class BudgetApproved(Envelope):
    """A city's approved budget for a fiscal year."""

    type: Literal["BudgetApproved"]
    city: DivisionCode
    scheme: Scheme
    fiscal_year: FiscalYear
    income_fen: NonNegativeFen
    expenditure_fen: NonNegativeFen


class BudgetAdjusted(Envelope):
    """A city's adjusted budget for a fiscal year (replaces the approved figures)."""

    type: Literal["BudgetAdjusted"]
    city: DivisionCode
    scheme: Scheme
    fiscal_year: FiscalYear
    income_fen: NonNegativeFen
    expenditure_fen: NonNegativeFen


class AdjustmentFundExtracted(Envelope):
    """Money moved from a city's fund into the provincial adjustment fund."""

    type: Literal["AdjustmentFundExtracted"]
    city: DivisionCode
    scheme: Scheme
    fiscal_year: FiscalYear
    amount_fen: PositiveFen


class AdjustmentFundAllocated(Envelope):
    """Money moved from the provincial adjustment fund to a city with a gap."""

    type: Literal["AdjustmentFundAllocated"]
    city: DivisionCode
    scheme: Scheme
    fiscal_year: FiscalYear
    gap_fen: PositiveFen
    reason: AllocationReason
    amount_fen: PositiveFen


class FiscalYearClosed(Envelope):
    """A fund's fiscal year is closed (no `city`: the province fund)."""

    type: Literal["FiscalYearClosed"]
    city: DivisionCode | None = None
    scheme: Scheme
    fiscal_year: FiscalYear


class EventReversed(Envelope):
    """Cancels an earlier event, identified by its `event_id`."""

    type: Literal["EventReversed"]
    original_event_id: EventId
    reason: Reason


class RecoveryReceived(Envelope):
    """Money clawed back from a medical institution into the fund that paid (RULES P4): for
    fraud, an overpayment or an audit adjustment, wholly or in part, against a named claim or not."""

    type: Literal["RecoveryReceived"]
    city: DivisionCode
    scheme: Scheme
    institution_id: Identifier
    institution_city: DivisionCode | None = Field(
        default=None, description="City of the institution; absent: `city` (RULES E7)."
    )
    reason: RecoveryReason
    claim_event_id: EventId | None = Field(
        default=None, description="The ClaimPaid recovered from; its total recovered never exceeds its amount."
    )
    amount_fen: PositiveFen


class CriticalIllnessPremiumPaid(Envelope):
    """The major-illness insurance premium a city's resident pooling fund pays an insurer (RULES
    E8): a benefit expenditure, counted against the approved budget (B3)."""

    type: Literal["CriticalIllnessPremiumPaid"]
    city: DivisionCode
    scheme: Scheme
    insurer_id: Identifier
    fiscal_year: FiscalYear
    amount_fen: PositiveFen


class PolicyAdopted(Envelope):
    """A policy in force from `effective_from` (China Standard Time)."""

    type: Literal["PolicyAdopted"]
    policy: Policy
    effective_from: IsoDate


UpstreamEvent = Annotated[
    (
        ContributionReceived
        | SubsidyDisbursed
        | ClaimPaid
        | InterestCredited
        | OpeningBalanceRecorded
        | BudgetApproved
        | BudgetAdjusted
        | AdjustmentFundExtracted
        | AdjustmentFundAllocated
        | FiscalYearClosed
        | EventReversed
        | PolicyAdopted
        | RecoveryReceived
        | CriticalIllnessPremiumPaid
    ),
    Field(discriminator="type"),
]

EVENT_TYPES: dict[str, type[Envelope]] = {
    cls.__name__: cls
    for cls in (
        ContributionReceived,
        SubsidyDisbursed,
        ClaimPaid,
        InterestCredited,
        OpeningBalanceRecorded,
        BudgetApproved,
        BudgetAdjusted,
        AdjustmentFundExtracted,
        AdjustmentFundAllocated,
        FiscalYearClosed,
        EventReversed,
        PolicyAdopted,
        RecoveryReceived,
        CriticalIllnessPremiumPaid,
    )
}

_ADAPTER: TypeAdapter[UpstreamEvent] = TypeAdapter(UpstreamEvent)

# ---------------------------------------------------------------------- parsing


class InvalidJson(ValueError):
    """The message is not UTF-8 JSON (or not JSON the ledger reads: see `schemas.bounded_json`)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidSchema(ValueError):
    """The message is JSON but does not match the contract."""

    def __init__(
        self, detail: str, *, event_id: str | None = None, event_type: str | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.event_id = event_id
        self.event_type = event_type


class MessageTooLarge(ValueError):
    """The message is above the size limit; it is refused without being parsed."""

    def __init__(self, size_bytes: int, size_max_bytes: int) -> None:
        detail = (
            f"the message is {size_bytes:,} bytes, above the limit of {size_max_bytes:,} bytes "
            "(POOLING_MESSAGE_SIZE_MAX); it was not parsed, its receipt keeps its sha256 and its "
            "first bytes"
        )
        super().__init__(detail)
        self.detail = detail
        self.size_bytes = size_bytes
        self.size_max_bytes = size_max_bytes


def _cut(text: str, chars_max: int) -> str:
    return text if len(text) <= chars_max else text[: chars_max - 3] + "..."


def _describe(error: ErrorDetails) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "union_tag_not_found":
        return "type: Field required"
    if kind == "union_tag_invalid":
        tag = _cut(str(error.get("ctx", {}).get("tag")), IDENTIFYING_CHARS_MAX)
        allowed = ", ".join(EVENT_TYPES)
        return f"type: unknown event type {tag!r}; expected one of: {allowed}"
    if not loc and kind in ("dict_type", "model_type", "model_attributes_type"):
        return "message is not a JSON object"
    if loc and loc[0] in EVENT_TYPES:  # the discriminated union's tag
        loc = loc[1:]
    msg = error["msg"]
    if kind == "value_error" and msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    path = ".".join(_cut(str(part), IDENTIFYING_CHARS_MAX) for part in loc)
    return _cut(f"{path}: {msg}" if path else msg, DETAIL_ITEM_CHARS_MAX)


def _bounded_detail(problems: list[str]) -> str:
    shown = problems[:DETAIL_PROBLEMS_MAX]
    more = len(problems) - len(shown)
    detail = "; ".join(shown) + (f"; and {more} more" if more else "")
    return _cut(detail, DETAIL_CHARS_MAX)


def _identifying(obj: Any, key: str) -> str | None:
    """A rejected message's own event_id or type, when it is a short string."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, str) and len(value) <= IDENTIFYING_CHARS_MAX:
        return value
    return None


def _schema_error(obj: Any, exc: ValidationError) -> InvalidSchema:
    detail = _bounded_detail([_describe(error) for error in exc.errors(include_url=False)])
    return InvalidSchema(
        detail, event_id=_identifying(obj, "event_id"), event_type=_identifying(obj, "type")
    )


def parse_event(raw: bytes) -> UpstreamEvent:
    """Parse one message of `pooling.events.v1`.

    Raises `InvalidJson` when `raw` is not UTF-8 JSON within the limits of
    `schemas.bounded_json` (nesting, number length, duplicate keys, valid Unicode), and
    `InvalidSchema` when it is JSON but not a valid event (including a JSON value that is
    not an object, a string holding NUL, an amount above `MAX_FEN`).
    """
    try:
        obj = bounded_json.loads(raw)
    except bounded_json.JsonSyntaxError as error:
        raise InvalidJson(f"invalid JSON: {_cut(error.detail, DETAIL_CHARS_MAX)}") from None
    except bounded_json.JsonContentError as error:
        raise InvalidSchema(_cut(error.detail, DETAIL_CHARS_MAX)) from None
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise _schema_error(obj, exc) from None


def json_object_or_none(raw: bytes) -> dict[str, Any] | None:
    """The JSON object of `raw` when it is one the ledger can keep, else None."""
    try:
        value = bounded_json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
