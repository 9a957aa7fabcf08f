"""The chart of accounts (DESIGN §4): every account name is built here and nowhere else.

A transfer moves `amount_fen` from its debit account to its credit account
(TigerBeetle's convention): an account's balance is credits minus debits, so the
sum of all balances is zero after every transfer (M3). Fund accounts carry the
declared limit "debits must not exceed credits" (E1); counterparties may go
negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from uuid import NAMESPACE_URL, UUID, uuid5

from schemas.policy import PayerKind, Scheme, SubsidyLevel

#: Namespace of every id the ledger derives from a name (funds, receipts, policy book).
LEDGER_NAMESPACE = uuid5(NAMESPACE_URL, "urn:pooling-ledger")

INTEREST = "external:interest"
OPENING_EQUITY = "equity:opening"


def city_pooling(city: str, scheme: Scheme | str) -> str:
    return f"city:{city}:{Scheme(scheme).value}:pooling"


def province_adjustment(scheme: Scheme | str) -> str:
    return f"province:{Scheme(scheme).value}:adjustment"


def contributors(city: str, scheme: Scheme | str, payer_kind: PayerKind | str) -> str:
    return f"external:contributors:{city}:{Scheme(scheme).value}:{PayerKind(payer_kind).value}"


def finance(level: SubsidyLevel | str) -> str:
    return f"external:finance:{SubsidyLevel(level).value}"


def institutions(city: str) -> str:
    return f"external:institutions:{city}"


def fund_account(city: str | None, scheme: Scheme | str) -> str:
    """The pooling fund of `city`, or the provincial adjustment fund when `city` is None."""
    return province_adjustment(scheme) if city is None else city_pooling(city, scheme)


def is_fund(account: str) -> bool:
    """Funds are the accounts the ledger holds money in; they may never go negative (E1)."""
    return account.startswith(("city:", "province:"))


def may_go_negative(account: str) -> bool:
    return not is_fund(account)


@lru_cache(maxsize=4096)
def fund_id(account: str) -> UUID:
    """The aggregate id of a fund account."""
    assert is_fund(account), account
    return uuid5(LEDGER_NAMESPACE, account)


@dataclass(frozen=True)
class AccountName:
    """An account name split into its parts, for the earmarking checks (E2, E3)."""

    kind: str  # city_pooling, province_adjustment, contributors, finance, institutions, ...
    city: str | None = None
    scheme: str | None = None

    @classmethod
    def parse(cls, account: str) -> AccountName:
        parts = account.split(":")
        match parts:
            case ["city", city, scheme, "pooling"]:
                return cls("city_pooling", city, scheme)
            case ["province", scheme, "adjustment"]:
                return cls("province_adjustment", None, scheme)
            case ["external", "contributors", city, scheme, _payer]:
                return cls("contributors", city, scheme)
            case ["external", "finance", _level]:
                return cls("finance")
            case ["external", "institutions", city]:
                return cls("institutions", city)
            case ["external", "interest"]:
                return cls("interest")
            case ["equity", "opening"]:
                return cls("opening_equity")
        raise ValueError(f"not an account of the chart: {account!r}")


#: The only edges money may take (DESIGN §3, E3, E4), as (debit kind, credit kind).
FORWARD_EDGES = frozenset(
    {
        ("contributors", "city_pooling"),
        ("finance", "city_pooling"),
        ("city_pooling", "institutions"),
        ("interest", "city_pooling"),
        ("interest", "province_adjustment"),
        ("opening_equity", "city_pooling"),
        ("opening_equity", "province_adjustment"),
        ("city_pooling", "province_adjustment"),
        ("province_adjustment", "city_pooling"),
    }
)
#: A reversal (P2) takes an edge backwards, e.g. a city fund returning a subsidy paid by mistake.
REVERSED_EDGES = frozenset((credit, debit) for debit, credit in FORWARD_EDGES)


def edge_violation(debit_account: str, credit_account: str, *, reversal: bool = False) -> str | None:
    """Why money may not move from `debit_account` to `credit_account`, or None if it may.

    E2: never across schemes. E3: only the edges of DESIGN §3 (backwards only for a
    reversal); no city pays another city, no fund pays into a fiscal budget.
    """
    debit, credit = AccountName.parse(debit_account), AccountName.parse(credit_account)
    edges = REVERSED_EDGES if reversal else FORWARD_EDGES
    if (debit.kind, credit.kind) not in edges:
        return f"no edge from {debit.kind} to {credit.kind} (E3)"
    if debit.scheme and credit.scheme and debit.scheme != credit.scheme:
        return f"{debit_account} and {credit_account} are in different schemes (E2)"
    if debit.city and credit.city and debit.city != credit.city:
        return f"{debit_account} and {credit_account} belong to different cities (E3)"
    return None
