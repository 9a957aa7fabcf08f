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


def city_personal(city: str) -> str:
    """The employee personal accounts of a city, as one fund (RULES E6)."""
    return f"city:{city}:employee:personal"


def province_adjustment(scheme: Scheme | str) -> str:
    return f"province:{Scheme(scheme).value}:adjustment"


def contributors(city: str, scheme: Scheme | str, payer_kind: PayerKind | str) -> str:
    return f"external:contributors:{city}:{Scheme(scheme).value}:{PayerKind(payer_kind).value}"


def finance(level: SubsidyLevel | str) -> str:
    return f"external:finance:{SubsidyLevel(level).value}"


def institutions(city: str) -> str:
    return f"external:institutions:{city}"


def insurers(insurer_id: str) -> str:
    """Major-illness insurers paid premiums (RULES E8)."""
    return f"external:insurers:{insurer_id}"


def fund_account(city: str | None, scheme: Scheme | str) -> str:
    """The pooling fund of `city`, or the provincial adjustment fund when `city` is None."""
    return province_adjustment(scheme) if city is None else city_pooling(city, scheme)


def is_fund(account: str) -> bool:
    """Funds are the accounts the ledger holds money in; they may never go negative (E1)."""
    return AccountName.parse(account).is_fund


def may_go_negative(account: str) -> bool:
    return not is_fund(account)


@lru_cache(maxsize=4096)
def fund_id(account: str) -> UUID:
    """The aggregate id of a fund account."""
    assert is_fund(account), account
    return uuid5(LEDGER_NAMESPACE, account)


@dataclass(frozen=True)
class AccountName:
    """An account name split into its parts: what a fund is, and the earmarking checks (E2, E3)."""

    kind: str  # city_pooling, province_adjustment, contributors, finance, institutions, ...
    city: str | None = None
    scheme: str | None = None

    @property
    def is_fund(self) -> bool:
        return self.kind in FUND_KINDS

    @classmethod
    def parse(cls, account: str) -> AccountName:
        return _parse(account)


@lru_cache(maxsize=4096)
def _parse(account: str) -> AccountName:
    """An account name of the chart split into its parts (cached: a few thousand accounts)."""
    match account.split(":"):
        case ["city", city, scheme, "pooling"]:
            return AccountName("city_pooling", city, scheme)
        case ["city", city, "employee", "personal"]:
            return AccountName("city_personal", city, "employee")
        case ["province", scheme, "adjustment"]:
            return AccountName("province_adjustment", None, scheme)
        case ["external", "contributors", city, scheme, _payer]:
            return AccountName("contributors", city, scheme)
        case ["external", "finance", _level]:
            return AccountName("finance")
        case ["external", "institutions", city]:
            return AccountName("institutions", city)
        case ["external", "insurers", _insurer]:
            return AccountName("insurers")
        case ["external", "interest"]:
            return AccountName("interest")
        case ["equity", "opening"]:
            return AccountName("opening_equity")
    raise ValueError(f"not an account of the chart: {account!r}")


#: The kinds of account the ledger holds money in (funds, never negative: E1).
FUND_KINDS = frozenset({"city_pooling", "city_personal", "province_adjustment"})
#: The only edges money may take (DESIGN §3, E3, E4), as (debit kind, credit kind).
FORWARD_EDGES = frozenset(
    {
        ("contributors", "city_pooling"),
        ("contributors", "city_personal"),  # an employee's own contribution (E6)
        ("city_personal", "institutions"),  # a claim paid from the personal accounts (E6)
        ("finance", "city_pooling"),
        ("city_pooling", "institutions"),
        ("institutions", "city_pooling"),  # a recovery (P4)
        ("city_pooling", "insurers"),  # the major-illness premium (E8)
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
