"""From an upstream event to the transfer it asks for: the money edges of DESIGN §3.

Pure functions: which accounts an event debits and credits, by how much, and under
which category the funds total it. A transfer checks the one rule that reads only
itself, the earmarking edges (E2/E3/E4); the funds check theirs (aggregates).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ledger import accounts, formulas
from ledger.aggregates import (
    ALLOCATION_CATEGORY as ALLOCATION,
)
from ledger.aggregates import (
    CLAIM_PREFIX,
    CONTRIBUTION_PREFIX,
    PRIOR_YEAR_PREFIX,
    RECOVERY_PREFIX,
    SUBSIDY_PREFIX,
)
from ledger.aggregates import (
    EXTRACTION_CATEGORY as EXTRACTION,
)
from ledger.aggregates import (
    INTEREST_CATEGORY as INTEREST,
)
from ledger.aggregates import (
    OPENING_CATEGORY as OPENING,
)
from ledger.aggregates import (
    PREMIUM_CATEGORY as PREMIUM,
)
from ledger.clock import fiscal_year_of
from ledger.errors import Reason, Rejected
from schemas.events import (
    AdjustmentFundAllocated,
    AdjustmentFundExtracted,
    ClaimPaid,
    ContributionReceived,
    CriticalIllnessPremiumPaid,
    Envelope,
    InterestCredited,
    OpeningBalanceRecorded,
    RecoveryReceived,
    SubsidyDisbursed,
)
from schemas.policy import PaidFrom


@dataclass(frozen=True)
class Transfer:
    """One movement of money: from the debit account to the credit account (M3)."""

    event_id: str
    kind: str
    debit_account: str
    credit_account: str
    amount_fen: int
    category: str
    fiscal_year: int
    occurred_at: str
    reversal_of: str | None = None
    prior_year_adjustment: bool = False

    @classmethod
    def from_booking(cls, booking: Mapping[str, Any]) -> Transfer:
        """The transfer a receipt or a fund's event recorded (`as_booking`'s fields)."""
        return cls(
            event_id=booking["event_id"],
            kind=booking["kind"],
            debit_account=booking["debit_account"],
            credit_account=booking["credit_account"],
            amount_fen=booking["amount_fen"],
            category=booking["category"],
            fiscal_year=booking["fiscal_year"],
            occurred_at=booking["occurred_at"],
            reversal_of=booking.get("reversal_of"),
            prior_year_adjustment=booking.get("prior_year_adjustment", False),
        )

    def as_booking(self) -> dict[str, Any]:
        return dict(self.__dict__)  # flat fields only: dataclasses.asdict's deep copy is slow

    @property
    def debit(self) -> accounts.AccountName:
        return accounts.AccountName.parse(self.debit_account)

    @property
    def credit(self) -> accounts.AccountName:
        return accounts.AccountName.parse(self.credit_account)

    @property
    def is_reversal(self) -> bool:
        return self.reversal_of is not None

    def fund_accounts(self) -> list[str]:
        """The accounts of this transfer the ledger holds money in, debit first."""
        return [a for a, name in ((self.debit_account, self.debit), (self.credit_account, self.credit))
                if name.is_fund]

    def check_edge_allowed(self) -> None:
        """E3 (with E2, E4): money moves only along the edges of DESIGN §3, within one scheme and city.

        E2: never across schemes. E3: only the chart's edges (backwards only for a reversal,
        P2); no city pays another city, no fund pays into a fiscal budget. E4 follows from
        the edges: the adjustment fund trades only with city pooling funds and bank interest.
        E7: a city fund pays the institutions of another city for treatment there (and a
        reversal brings it back); that is not one city paying another.
        """
        debit, credit = self.debit, self.credit
        edges = accounts.REVERSED_EDGES if self.is_reversal else accounts.FORWARD_EDGES
        if (debit.kind, credit.kind) not in edges:
            violation = f"no edge from {debit.kind} to {credit.kind} (E3)"
        elif debit.scheme and credit.scheme and debit.scheme != credit.scheme:
            violation = f"{self.debit_account} and {self.credit_account} are in different schemes (E2)"
        elif debit.city and credit.city and debit.city != credit.city and "institutions" not in (debit.kind, credit.kind):
            violation = f"{self.debit_account} and {self.credit_account} belong to different cities (E3)"
        else:
            return
        raise Rejected(Reason.earmark_violation, "E3", violation)

    def opposite(
        self, event_id: str, fiscal_year: int, occurred_at: str, prior_year_adjustment: bool
    ) -> Transfer:
        """P2: the exact opposite movement, booked as a new transfer.

        A reversal of a closed year's movement is booked in the open year under a
        `prior_year_adjustment.` category, so the closed year's figures stay as closed.
        """
        return Transfer(
            event_id=event_id,
            kind="EventReversed",
            debit_account=self.credit_account,
            credit_account=self.debit_account,
            amount_fen=self.amount_fen,
            category=f"{PRIOR_YEAR_PREFIX}{self.category}" if prior_year_adjustment else self.category,
            fiscal_year=fiscal_year,
            occurred_at=occurred_at,
            reversal_of=self.event_id,
            prior_year_adjustment=prior_year_adjustment,
        )


def _transfer(event: Envelope, debit: str, credit: str, amount_fen: int, category: str) -> Transfer:
    return Transfer(
        event_id=str(event.event_id),
        kind=event.type,
        debit_account=debit,
        credit_account=credit,
        amount_fen=amount_fen,
        category=category,
        fiscal_year=fiscal_year_of(event.occurred_at),
        occurred_at=event.occurred_at.isoformat(),
    )


def contribution(e: ContributionReceived, personal_account_share_bp: int) -> list[Transfer]:
    """E6: an employee's own contribution credits the personal accounts, `personal_account_share_bp`
    of it (floor, M1); the rest, and every other contribution, the pooling fund. One transfer,
    or two where the share splits it."""
    payers = accounts.contributors(e.city, e.scheme, e.payer_kind)
    category = CONTRIBUTION_PREFIX + e.payer_kind.value
    pooling_fen, transfers = e.amount_fen, []
    if e.scheme == "employee" and e.payer_kind == "individual":
        personal_fen = formulas.share_fen(e.amount_fen, personal_account_share_bp)
        if personal_fen:
            transfers.append(_transfer(e, payers, accounts.city_personal(e.city), personal_fen, category))
        pooling_fen -= personal_fen
    if pooling_fen:
        transfers.append(_transfer(e, payers, accounts.city_pooling(e.city, e.scheme), pooling_fen, category))
    return transfers


def subsidy(e: SubsidyDisbursed) -> Transfer:
    return _transfer(
        e,
        accounts.finance(e.level),
        accounts.city_pooling(e.city, e.scheme),
        e.amount_fen,
        SUBSIDY_PREFIX + e.level.value,
    )


def claim(e: ClaimPaid) -> Transfer:
    """E7: the insured city's fund pays the institutions of the city that treated (its own by default);
    E6: the pooling fund, or the employee personal accounts (`paid_from`)."""
    personal = e.paid_from == PaidFrom.personal_account
    if personal and e.scheme != "employee":
        raise Rejected(Reason.earmark_violation, "E6",
                       f"personal accounts exist in the employee scheme only, not {e.scheme.value}")
    return _transfer(
        e,
        accounts.city_personal(e.city) if personal else accounts.city_pooling(e.city, e.scheme),
        accounts.institutions(e.institution_city or e.city),
        e.amount_fen,
        CLAIM_PREFIX + e.category.value,
    )


def check_resident_scheme_only(e: ContributionReceived | CriticalIllnessPremiumPaid) -> None:
    """E8: medical assistance pays aid recipients' contributions, and the major-illness premium is
    paid, in the resident scheme only."""
    if e.scheme == "resident" or (isinstance(e, ContributionReceived) and e.payer_kind != "medical_assistance"):
        return
    what = "medical assistance pays contributions" if isinstance(e, ContributionReceived) else (
        "the major-illness insurance premium is paid")
    raise Rejected(Reason.earmark_violation, "E8", f"{what} in the resident scheme only, not {e.scheme.value}")


def premium(e: CriticalIllnessPremiumPaid) -> Transfer:
    """E8: the resident pooling fund pays the insurer; booked in the fiscal year it names (M2)."""
    transfer = _transfer(
        e, accounts.city_pooling(e.city, e.scheme), accounts.insurers(e.insurer_id), e.amount_fen, PREMIUM
    )
    return replace(transfer, fiscal_year=e.fiscal_year)


def recovery(e: RecoveryReceived) -> Transfer:
    """P4: from the institutions of the city that was paid back into the fund that paid."""
    return _transfer(
        e,
        accounts.institutions(e.institution_city or e.city),
        accounts.city_pooling(e.city, e.scheme),
        e.amount_fen,
        RECOVERY_PREFIX + e.reason.value,
    )


def interest(e: InterestCredited) -> Transfer:
    return _transfer(
        e, accounts.INTEREST, accounts.fund_account(e.city, e.scheme), e.amount_fen, INTEREST
    )


def check_dated_in_fiscal_year(fiscal_year: int, occurred_at: datetime) -> None:
    """M2: a movement that names its fiscal year is dated in it (CST): the accounts are on a
    cash basis, so next year's extraction is not taken early, nor a past year's booked late."""
    dated = fiscal_year_of(occurred_at)
    if dated != fiscal_year:
        raise Rejected(
            Reason.fiscal_year_mismatch,
            "M2",
            f"the event names fiscal year {fiscal_year} but is dated {occurred_at.isoformat()}, "
            f"in {dated} (China Standard Time); cash moves in the year it is booked in",
            {"fiscal_year": fiscal_year, "dated_in": dated},
        )


def opening(e: OpeningBalanceRecorded) -> Transfer:
    return _transfer(
        e, accounts.OPENING_EQUITY, accounts.fund_account(e.city, e.scheme), e.balance_fen, OPENING
    )


def extraction(e: AdjustmentFundExtracted) -> Transfer:
    transfer = _transfer(
        e,
        accounts.city_pooling(e.city, e.scheme),
        accounts.province_adjustment(e.scheme),
        e.amount_fen,
        EXTRACTION,
    )
    # The extraction belongs to the fiscal year the event names (X2), not the booking day's.
    return replace(transfer, fiscal_year=e.fiscal_year)


def allocation(e: AdjustmentFundAllocated) -> Transfer:
    transfer = _transfer(
        e,
        accounts.province_adjustment(e.scheme),
        accounts.city_pooling(e.city, e.scheme),
        e.amount_fen,
        ALLOCATION,
    )
    return replace(transfer, fiscal_year=e.fiscal_year)
