"""From an upstream event to the transfer it asks for: the money edges of DESIGN §3.

Pure functions: which accounts an event debits and credits, by how much, and under
which category the funds total it. The rules are checked elsewhere (aggregates).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ledger import accounts
from ledger.aggregates import (
    ALLOCATION_CATEGORY as ALLOCATION,
)
from ledger.aggregates import (
    CLAIM_PREFIX,
    CONTRIBUTION_PREFIX,
    PRIOR_YEAR_PREFIX,
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
from ledger.clock import fiscal_year_of
from schemas.events import (
    AdjustmentFundAllocated,
    AdjustmentFundExtracted,
    ClaimPaid,
    ContributionReceived,
    Envelope,
    InterestCredited,
    OpeningBalanceRecorded,
    SubsidyDisbursed,
)


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

    def as_booking(self) -> dict[str, object]:
        return dict(self.__dict__)  # flat fields only: dataclasses.asdict's deep copy is slow

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


def contribution(e: ContributionReceived) -> Transfer:
    return _transfer(
        e,
        accounts.contributors(e.city, e.scheme, e.payer_kind),
        accounts.city_pooling(e.city, e.scheme),
        e.amount_fen,
        CONTRIBUTION_PREFIX + e.payer_kind.value,
    )


def subsidy(e: SubsidyDisbursed) -> Transfer:
    return _transfer(
        e,
        accounts.finance(e.level),
        accounts.city_pooling(e.city, e.scheme),
        e.amount_fen,
        SUBSIDY_PREFIX + e.level.value,
    )


def claim(e: ClaimPaid) -> Transfer:
    return _transfer(
        e,
        accounts.city_pooling(e.city, e.scheme),
        accounts.institutions(e.city),
        e.amount_fen,
        CLAIM_PREFIX + e.category.value,
    )


def interest(e: InterestCredited) -> Transfer:
    return _transfer(
        e, accounts.INTEREST, accounts.fund_account(e.city, e.scheme), e.amount_fen, INTEREST
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
    return Transfer(**{**asdict(transfer), "fiscal_year": e.fiscal_year})


def allocation(e: AdjustmentFundAllocated) -> Transfer:
    transfer = _transfer(
        e,
        accounts.province_adjustment(e.scheme),
        accounts.city_pooling(e.city, e.scheme),
        e.amount_fen,
        ALLOCATION,
    )
    return Transfer(**{**asdict(transfer), "fiscal_year": e.fiscal_year})
