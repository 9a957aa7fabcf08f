"""The auditor's view: every account's balance, folded from the recorded transfers alone.

This does not trust any running total: it replays the fund events from the
notification log and posts both legs of each transfer (a fund's own leg from its
own event; a counterparty that is not a fund with it), so the result can be
compared with the aggregates and must sum to zero (M3).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from ledger import accounts
from ledger.aggregates import Fund
from ledger.movements import Transfer

FUND_EVENT_TOPICS = (
    get_topic(Fund.Booked), get_topic(Fund.TransferBooked), get_topic(Fund.OpeningRecorded)
)


@dataclass
class TrialBalance:
    as_of: datetime | None = None
    balances_fen: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    transfer_count: int = 0

    def post(self, fund_id: UUID, transfer: Transfer) -> None:
        """Posts the legs of `transfer` recorded by the fund `fund_id`."""
        for account, sign in ((transfer.debit_account, -1), (transfer.credit_account, 1)):
            if not accounts.is_fund(account) or accounts.fund_id(account) == fund_id:
                self.balances_fen[account] += sign * transfer.amount_fen
        self.transfer_count += 1

    @property
    def total_fen(self) -> int:
        return sum(self.balances_fen.values())

    def as_json(self) -> dict[str, Any]:
        """The shape of `GET /v1/audit/trial-balance` (DESIGN §5)."""
        return {
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "accounts": [
                {"account": account, "balance_fen": balance}
                for account, balance in sorted(self.balances_fen.items())
            ],
            "total_fen": self.total_fen,
        }


def legs(events: Iterable[Any]) -> Iterator[tuple[UUID, Transfer]]:
    """Each leg the fund events `events` recorded, with the id of the fund that booked it."""
    for event in events:
        if isinstance(event, Fund.Booked):
            for leg in event.legs:
                yield event.originator_id, Transfer.from_booking(leg)
        elif isinstance(event, Fund.TransferBooked):
            yield event.originator_id, Transfer.from_booking(vars(event))


def fold(events: Iterable[Any], as_of: datetime | None = None) -> TrialBalance:
    """The trial balance of the fund events `events`, up to business time `as_of`."""
    result = TrialBalance(as_of=as_of)
    for fund_id, leg in legs(events):
        if as_of is not None and datetime.fromisoformat(leg.occurred_at) > as_of:
            continue
        result.post(fund_id, leg)
    return result
