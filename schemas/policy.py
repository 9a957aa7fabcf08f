"""The policy model: every parameter RULES.md names, as effective-dated data.

A policy is adopted by a `PolicyAdopted` event (or seeded from a policy file) and
is in force from its `effective_from` date (China Standard Time) until the next
adoption. Ratios are integer basis points (5 % = 500), money is integer fen.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

DivisionCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
BasisPoints = Annotated[int, Field(strict=True, ge=0, le=10_000)]
#: The largest amount of money anything may carry: 10**15 fen (10 trillion yuan) is far above any
#: fund of a province and far below 2**63, so no sum of a few thousand of them overflows a bigint.
MAX_FEN = 10**15
PositiveFen = Annotated[int, Field(strict=True, gt=0, le=MAX_FEN)]
NonNegativeFen = Annotated[int, Field(strict=True, ge=0, le=MAX_FEN)]
#: Months a balance may be asked to cover (risk band): a century.
RISK_MONTHS_MAX = 1200

EXTRACTION_RATE_BP_MAX = 500  # AH §2: "no more than 5 %"


class Scheme(StrEnum):
    employee = "employee"
    resident = "resident"


class PayerKind(StrEnum):
    employer = "employer"
    individual = "individual"
    #: medical assistance pays the individual contribution of aid recipients (RULES E8)
    medical_assistance = "medical_assistance"


class PaidFrom(StrEnum):
    """Which fund pays a claim (RULES E6): the pooling fund, or the employee personal accounts."""

    pooling = "pooling"
    personal_account = "personal_account"


class SubsidyLevel(StrEnum):
    central = "central"
    provincial = "provincial"
    city = "city"
    county = "county"


class HospitalLevel(StrEnum):
    primary = "primary"
    secondary = "secondary"
    tertiary = "tertiary"


class ClaimCategory(StrEnum):
    inpatient = "inpatient"
    outpatient = "outpatient"
    chronic_special = "chronic_special"
    maternity = "maternity"


class AllocationReason(StrEnum):
    policy_adjustment = "policy_adjustment"
    major_epidemic = "major_epidemic"
    other_reasonable = "other_reasonable"
    benefit_increase = "benefit_increase"


class RecoveryReason(StrEnum):
    """Why money is clawed back from an institution (RULES P4)."""

    fraud = "fraud"
    overpayment = "overpayment"
    audit_adjustment = "audit_adjustment"


class ExtractionBase(StrEnum):
    contributions = "contributions"
    contributions_and_subsidies = "contributions_and_subsidies"


class RiskBand(BaseModel):
    """Months of expenditure the balance should cover (B4; not from the seeds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low_months: Annotated[int, Field(strict=True, ge=0, le=RISK_MONTHS_MAX)] = 6
    high_months: Annotated[int, Field(strict=True, ge=0, le=RISK_MONTHS_MAX)] = 9


class SubsidyStandard(BaseModel):
    """Per-capita fiscal subsidy of one finance level in one fiscal year (I3).

    `per_capita_fen` lists every allowed figure (e.g. Guangxi's region share is
    9,150 fen in formerly poor counties and 6,100 elsewhere).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    fiscal_year: int
    level: SubsidyLevel
    per_capita_fen: list[PositiveFen] = Field(min_length=1)
    scheme: Scheme = Scheme.resident
    #: How far an amount may stray from headcount x standard: the fen rounding of a split.
    rounding_tolerance_fen: NonNegativeFen = 1
    note: str = ""


class SubsidyTotalStandard(BaseModel):
    """Per-capita fiscal subsidy of several finance levels together in one fiscal year (I3).

    Tianjin's 610 / 1,100 yuan a head is what all levels pay together; no one level's payment
    may come to more a head than the highest figure. Whether the levels together paid it in
    full is the reconciliation view's question, not a block.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    fiscal_year: int
    levels: list[SubsidyLevel] = Field(min_length=1)
    per_capita_fen: list[PositiveFen] = Field(min_length=1)
    scheme: Scheme = Scheme.resident
    rounding_tolerance_fen: NonNegativeFen = 1
    note: str = ""


def _default_adjustment_from() -> dict[Scheme, date]:
    return {Scheme.resident: date(2025, 1, 1), Scheme.employee: date(2026, 1, 1)}


def _default_gap_share() -> dict[AllocationReason, BasisPoints]:
    return {reason: 5000 for reason in AllocationReason}


class Policy(BaseModel):
    """The parameters in force from `effective_from`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    effective_from: date
    province: DivisionCode
    cities: dict[DivisionCode, str] = Field(min_length=1)
    subsidised_schemes: list[Scheme] = Field(default_factory=lambda: [Scheme.resident])
    adjustment_from: dict[Scheme, date] = Field(default_factory=_default_adjustment_from)
    extraction_rate_bp: Annotated[int, Field(strict=True, ge=0, le=EXTRACTION_RATE_BP_MAX)] = 500
    extraction_base: ExtractionBase = ExtractionBase.contributions
    pause_ratio_bp: BasisPoints = 1000
    gap_share_bp: dict[AllocationReason, BasisPoints] = Field(default_factory=_default_gap_share)
    require_budget: bool = False
    #: E6: the share of an employee's individual contribution that credits the personal
    #: accounts (the rest, and all employer contributions, go to the pooling fund).
    personal_account_share_bp: BasisPoints = 10000
    risk_band: RiskBand = Field(default_factory=RiskBand)
    subsidy_standards: list[SubsidyStandard] = Field(default_factory=list)
    #: Standards of several levels together (Tianjin's all-levels figure; Guangxi's 610 total).
    subsidy_totals: list[SubsidyTotalStandard] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
