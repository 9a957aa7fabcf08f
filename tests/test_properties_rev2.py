"""Property tests for the event types and flows of RULES.md revision 2, against a reference model.

Hypothesis generates, over 2 Anhui cities x 2 schemes and their employee personal accounts:
contributions of employers, individuals (E6: an employee's own contribution credits the
personal accounts with the policy's `personal_account_share_bp`, drawn per example, and the
pooling fund with the rest) and medical assistance (E8: resident only); claims paid from the
pooling fund or (E6) the personal accounts, some treated in another city (E7) or in an unknown
one; recoveries (P4) against earlier claims, some above what is left of them, some naming a
claim that is unknown, rejected, reversed or another fund's, some naming none; major-illness
premiums (E8: resident only, dated in their fiscal year, within the budget with the claims,
B3); approved budgets; reversals of contributions (both legs of a split), claims, premiums and
recoveries (P2; a reversed recovery may be recovered again, P4); exact re-deliveries. They are split into random batches, in any order of business time.

After every batch: the model predicts every fate; the trial balance sums to zero and every
account holds what the model says (the treating city's institutions, the insurers and the
contributors included); no fund is negative as of any event's instant (E1 in business time);
and the auditor's replay of the notification log into a fresh in-memory ledger gives the same
fates and balances. The model decides from the messages the test sent, never with ledger code.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import audit
from ledger.policy import load_packaged_policy
from pooling_ledger.replay import replay
from tests.upstream import (
    BENGBU,
    HEFEI,
    WUHU,
    budget,
    claim,
    contribution,
    feed,
    new_ledger,
    personal,
    pooling,
    premium,
    recovery,
    reversal,
    split,
    trial_balance,
)

SOURCE = "test.properties.rev2"
CITIES = (HEFEI, WUHU)
SCHEMES = ("resident", "employee")
#: A city of the province that treats insured people of the others here (E7) and holds no fund.
TREATING_CITY = BENGBU
UNKNOWN_CITY = "349900"
POOLING_FUNDS = tuple(pooling(c, s) for c in CITIES for s in SCHEMES)
PERSONAL_FUNDS = tuple(personal(c) for c in CITIES)
FUNDS = POOLING_FUNDS + PERSONAL_FUNDS
CST = timezone(timedelta(hours=8))
#: Business times around the new year in Beijing and elsewhere, and through 2025.
TIMES = (
    "2024-12-31T15:59:59Z",
    "2024-12-31T16:00:00Z",
    "2025-01-01T00:30:00+09:00",
    "2025-03-01T09:00:00+08:00",
    "2025-03-01T10:00:00+08:00",
    "2025-06-01T12:00:00-05:00",
)
INSURERS = ("PICC-AH", "CPIC-AH")


@dataclass(frozen=True)
class Op:
    kind: str  # contribution | claim | recovery | premium | budget | reverse | redeliver
    city: str = HEFEI
    scheme: str = "resident"
    amount_fen: int = 0
    occurred_at: str = TIMES[4]
    payer_kind: str = "individual"  # contribution
    from_personal: bool = False  # claim: paid_from personal_account
    treated_in: str | None = None  # claim, recovery: institution_city
    pick: int = 0  # claim: the fund of an earlier message; recovery, reverse, redeliver: which one
    share_bp: int = 0  # recovery: this share of the named claim's amount (up to 150 %)
    names: str = "claim"  # recovery: "claim" (an earlier paid one), "any" (any earlier one), "none", "unknown"
    elsewhere: bool = False  # recovery: into the other city's fund, not the one that paid
    fiscal_year_offset: int = 0  # premium: fiscal_year minus the year it is dated in
    fiscal_year: int = 2025  # budget


cities = st.sampled_from(CITIES)
schemes = st.sampled_from(SCHEMES)
times = st.sampled_from(TIMES)
amounts = st.integers(1, 10_000)
#: Mostly claims a fund can pay, some larger than any fund is likely to hold.
claim_amounts = st.tuples(st.sampled_from((False, False, False, True)), st.integers(1, 2_500), st.integers(2_501, 60_000)).map(
    lambda drawn: drawn[2] if drawn[0] else drawn[1]
)
picks = st.integers(0, 10_000)

contributions = st.builds(
    Op, st.just("contribution"), cities, schemes, amounts, times,
    payer_kind=st.sampled_from(("employer", "individual", "individual", "medical_assistance")),
)
claims = st.builds(
    Op, st.just("claim"), cities, schemes, claim_amounts, times,
    from_personal=st.sampled_from((False, False, True)),
    treated_in=st.sampled_from((None, None, None, TREATING_CITY, WUHU, HEFEI, UNKNOWN_CITY)),
    pick=picks,
)
recoveries = st.builds(
    Op, st.just("recovery"), cities, schemes, amounts, times,
    treated_in=st.sampled_from((None, None, None, None, TREATING_CITY, UNKNOWN_CITY)),
    pick=picks,
    share_bp=st.tuples(st.integers(0, 2), st.integers(1, 5_000)).map(lambda drawn: drawn[0] * 5_000 + drawn[1]),
    names=st.sampled_from(("claim", "claim", "claim", "any", "none", "unknown")),
    elsewhere=st.sampled_from((False, False, False, False, True)),
)
premiums = st.builds(
    Op, st.just("premium"), cities, st.sampled_from(("resident", "resident", "resident", "employee")),
    st.integers(1, 3_000), times, fiscal_year_offset=st.sampled_from((0, 0, 0, 0, 1, -1)), pick=picks,
)
budgets = st.builds(
    Op, st.just("budget"), cities, schemes, st.integers(0, 20_000), times,
    fiscal_year=st.sampled_from((2024, 2025)),
)
ops = st.one_of(
    contributions,
    contributions,
    contributions,
    claims,
    claims,
    recoveries,
    recoveries,
    premiums,
    budgets,
    st.builds(Op, st.just("reverse"), occurred_at=times, pick=picks),
    st.builds(Op, st.just("redeliver"), pick=picks),
)


def instant(occurred_at: str) -> datetime:
    return datetime.fromisoformat(occurred_at)


def fiscal_year(occurred_at: str) -> int:
    return instant(occurred_at).astimezone(CST).year


# ---------------------------------------------------------------------------- the script


def after_earlier(
    op: Op, sent: list[dict[str, Any]], like: Callable[[dict[str, Any]], bool], *, keep_scheme: bool = False
) -> Op:
    """`op` (pick > 0) moved to the fund of an earlier message `like` and to no earlier an
    instant: likelier to find money there (pick 0: as drawn, often not)."""
    earlier = [m for m in sent if like(m)]
    if not op.pick or not earlier:
        return op
    chosen = earlier[op.pick % len(earlier)]
    at = max(op.occurred_at, chosen["occurred_at"], key=instant)
    return replace(op, city=chosen["city"], scheme=op.scheme if keep_scheme else chosen["scheme"], occurred_at=at)


def messages(script: list[Op], share_bp: int) -> list[dict[str, Any]]:
    """The messages of `script`, in order; a re-delivery repeats an earlier message as is.

    A reversal names an earlier contribution, claim, premium or recovery, never a claim an
    earlier recovery named (whether a claim partly recovered may be reversed whole is not
    settled). A recovery names an earlier claim: one a scout model
    paid (most claims of random funds at random instants are refused, and a recovery of a
    refused one only ever finds `unknown_original`), or (`names` "any") any."""
    sent: list[dict[str, Any]] = []
    recovered: set[str] = set()
    scout = Model(share_bp)

    def envelope(op: Op) -> dict[str, Any]:
        return {"event_id": str(uuid.UUID(int=len(sent) + 1)), "occurred_at": op.occurred_at, "source": SOURCE}

    for op in script:
        if op.kind == "redeliver":
            if sent:
                sent.append(sent[op.pick % len(sent)])
            continue
        if op.kind == "contribution":
            sent.append(contribution(op.city, op.scheme, op.amount_fen, payer_kind=op.payer_kind, **envelope(op)))
        elif op.kind == "claim":
            if op.from_personal:  # an employee's own contribution funds the personal accounts
                op = after_earlier(op, sent, lambda m: m.get("payer_kind") == "individual" and m["scheme"] == "employee")
            else:
                op = after_earlier(op, sent, lambda m: m["type"] == "ContributionReceived")
            m = claim(op.city, op.scheme, op.amount_fen, claim_id=f"c{len(sent)}", institution_id="h1",
                      hospital_level="secondary", category="outpatient", **envelope(op))
            if op.from_personal:
                m["paid_from"] = "personal_account"
            if op.treated_in is not None:
                m["institution_city"] = op.treated_in
            sent.append(m)
        elif op.kind == "recovery":
            paid = [m for m in sent if m["type"] == "ClaimPaid"]
            if op.names == "claim":
                paid = [m for m in paid if scout.fates.get(m["event_id"]) == ("accepted", None)] or paid
            names = op.names if paid or op.names not in ("claim", "any") else "none"
            city, scheme, amount, claim_event_id, treated_in = op.city, op.scheme, op.amount_fen, None, op.treated_in
            if names in ("claim", "any"):
                named = paid[op.pick % len(paid)]
                city, scheme = named["city"], named["scheme"]
                if op.elsewhere:
                    city = WUHU if city == HEFEI else HEFEI
                amount = max(1, named["amount_fen"] * op.share_bp // 10_000)
                claim_event_id = named["event_id"]
                treated_in = treated_in or named.get("institution_city")
                recovered.add(claim_event_id)
            elif names == "unknown":
                claim_event_id = str(uuid.UUID(int=10**9 + len(sent)))
            reason = ("fraud", "overpayment", "audit_adjustment")[len(sent) % 3]
            sent.append(recovery(city, scheme, amount, claim_event_id=claim_event_id, institution_id="h1",
                                 institution_city=treated_in, reason=reason, **envelope(op)))
        elif op.kind == "premium":
            op = after_earlier(op, sent, lambda m: m["type"] == "ContributionReceived" and m["scheme"] == "resident",
                               keep_scheme=True)
            year = fiscal_year(op.occurred_at) + op.fiscal_year_offset
            sent.append(premium(op.city, op.scheme, op.amount_fen, insurer_id=INSURERS[len(sent) % 2],
                                fiscal_year=year, **envelope(op)))
        elif op.kind == "budget":
            sent.append(budget(op.amount_fen, op.amount_fen, city=op.city, scheme=op.scheme,
                               fiscal_year=op.fiscal_year, **envelope(op)))
        else:
            assert op.kind == "reverse"
            reversible = [
                m for m in sent
                if m["type"] in ("ContributionReceived", "ClaimPaid", "CriticalIllnessPremiumPaid", "RecoveryReceived")
                and m["event_id"] not in recovered
            ]
            if reversible:
                original = reversible[op.pick % len(reversible)]
                sent.append(reversal(original, **envelope(op)))
        if len(sent) > len(scout.fates) and sent[-1]["event_id"] not in scout.fates:
            scout.decide(sent[-1])
    return sent


# ----------------------------------------------------------------------------- the model


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Booked:
    """An accepted event as the model keeps it."""

    type: str
    at: datetime
    legs: list[tuple[str, str, int]]  # (debit account, credit account, fen)
    fund: str = ""  # a claim's or premium's paying fund
    fiscal_year: int = 0
    amount_fen: int = 0
    recovered_fen: int = 0
    reversed: bool = False
    recovers: Booked | None = None  # a recovery's claim


@dataclass
class Model:
    """The reference: every account's legs in business time, the budgets and what each fund paid."""

    share_bp: int
    legs: list[tuple[datetime, str, str, int]] = field(default_factory=list)
    fates: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    booked: dict[str, Booked] = field(default_factory=dict)
    budgets: dict[tuple[str, int], int] = field(default_factory=dict)  # (pooling fund, year) -> expenditure
    paid: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))  # claims + premiums

    def balance_as_of(self, account: str, at: datetime | None = None) -> int:
        return sum(
            (fen if credit == account else -fen)
            for when, debit, credit, fen in self.legs
            if account in (debit, credit) and (at is None or when <= at)
        )

    def balances(self, at: datetime | None = None) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for when, debit, credit, fen in self.legs:
            if at is None or when <= at:
                out[debit] -= fen
                out[credit] += fen
        return {a: b for a, b in out.items() if b}

    def lowest_from(self, fund: str, at: datetime) -> int:
        """E1 in business time: the lowest balance of `fund` from instant `at` on."""
        later = [when for when, debit, credit, _ in self.legs if fund in (debit, credit) and when > at]
        return min(self.balance_as_of(fund, when) for when in [at, *later])

    def pays(self, fund: str, fen: int, at: datetime) -> None:
        if self.lowest_from(fund, at) < fen:
            raise Refused("insufficient_funds")

    def within_budget(self, fund: str, year: int, fen: int) -> None:
        if (fund, year) in self.budgets and self.paid[(fund, year)] + fen > self.budgets[(fund, year)]:
            raise Refused("over_budget")

    def decide(self, m: dict[str, Any]) -> tuple[str, str | None]:
        event_id = m["event_id"]
        if event_id in self.fates:
            return ("duplicate", None)  # re-delivered byte for byte
        try:
            booked = self._decide(m)
        except Refused as refused:
            fate: tuple[str, str | None] = ("rejected", refused.reason)
        else:
            fate = ("accepted", None)
            self.booked[event_id] = booked
            self.legs.extend((booked.at, debit, credit, fen) for debit, credit, fen in booked.legs)
        self.fates[event_id] = fate
        return fate

    def _decide(self, m: dict[str, Any]) -> Booked:
        kind, at = m["type"], instant(m["occurred_at"])
        city, scheme, fen = m.get("city"), m.get("scheme"), m.get("amount_fen", 0)
        if m.get("institution_city") == UNKNOWN_CITY:
            raise Refused("unknown_city")  # I2, before any rule of the event's own
        if kind == "ContributionReceived":
            payer = m["payer_kind"]
            if payer == "medical_assistance" and scheme != "resident":
                raise Refused("earmark_violation")  # E8
            own = fen * self.share_bp // 10_000 if (scheme, payer) == ("employee", "individual") else 0
            contributors = f"external:contributors:{city}:{scheme}:{payer}"
            legs = [(contributors, personal(city), own), (contributors, pooling(city, scheme), fen - own)]
            return Booked(kind, at, [leg for leg in legs if leg[2]])  # E6: one transfer, or two
        if kind == "ClaimPaid":
            from_personal = m.get("paid_from") == "personal_account"
            if from_personal and scheme != "employee":
                raise Refused("earmark_violation")  # E6: personal accounts are the employees'
            fund, year = personal(city) if from_personal else pooling(city, scheme), fiscal_year(m["occurred_at"])
            if not from_personal:
                self.within_budget(fund, year, fen)  # B3 binds the pooling fund only
            self.pays(fund, fen, at)
            if not from_personal:
                self.paid[(fund, year)] += fen
            institutions = f"external:institutions:{m.get('institution_city') or city}"  # E7
            return Booked(kind, at, [(fund, institutions, fen)], fund=fund, fiscal_year=year, amount_fen=fen)
        if kind == "RecoveryReceived":
            fund = pooling(city, scheme)
            named = m.get("claim_event_id")
            if named is not None:
                paid = self.booked.get(named)
                if paid is None or paid.type != "ClaimPaid" or paid.reversed or paid.fund != fund:
                    raise Refused("unknown_original")
                if paid.recovered_fen + fen > paid.amount_fen:
                    raise Refused("recovery_exceeds_claim")
                paid.recovered_fen += fen
            institutions = f"external:institutions:{m.get('institution_city') or city}"
            return Booked(kind, at, [(institutions, fund, fen)], amount_fen=fen,
                          recovers=None if named is None else self.booked[named])
        if kind == "CriticalIllnessPremiumPaid":
            if scheme != "resident":
                raise Refused("earmark_violation")  # E8
            fund, year = pooling(city, scheme), m["fiscal_year"]
            if year != fiscal_year(m["occurred_at"]):
                raise Refused("fiscal_year_mismatch")  # M2
            self.within_budget(fund, year, fen)  # B3: counted with the claims
            self.pays(fund, fen, at)
            self.paid[(fund, year)] += fen
            insurers = f"external:insurers:{m['insurer_id']}"
            return Booked(kind, at, [(fund, insurers, fen)], fund=fund, fiscal_year=year, amount_fen=fen)
        if kind == "BudgetApproved":
            key = (pooling(city, scheme), m["fiscal_year"])
            if key in self.budgets:
                raise Refused("budget_exists")  # B5
            self.budgets[key] = m["expenditure_fen"]
            return Booked(kind, at, [])
        assert kind == "EventReversed", kind
        original = self.booked.get(m["original_event_id"])
        if original is None or not original.legs:
            raise Refused("unknown_original")  # P2: never accepted, or no movement
        if original.reversed:
            raise Refused("already_reversed")
        if at < original.at:
            raise Refused("reversal_before_original")
        for debit, credit, fen in original.legs:  # each leg backwards, each fund checked (E1)
            if credit in FUNDS:
                self.pays(credit, fen, at)
        original.reversed = True
        if original.recovers is not None:  # P4: may be recovered again
            original.recovers.recovered_fen -= original.amount_fen
        if original.fund in POOLING_FUNDS:
            self.paid[(original.fund, original.fiscal_year)] -= original.amount_fen
        return Booked(kind, at, [(credit, debit, fen) for debit, credit, fen in original.legs])


# ------------------------------------------------------------------------------ the tests


def book_and_check(sent: list[dict[str, Any]], sizes: list[int], share_bp: int) -> Model:
    """Feeds `sent` in batches of `sizes` to a ledger seeded with the share, checking after each."""
    policy = load_packaged_policy().model_copy(update={"personal_account_share_bp": share_bp})
    ledger = new_ledger(policy)
    model = Model(share_bp)
    instants = sorted({instant(m["occurred_at"]) for m in sent})

    for batch in split(sent, sizes):
        outcomes = feed(ledger, *batch)

        # the model predicts every fate
        expected = [model.decide(m) for m in batch]
        assert [(o.status, o.reason) for o in outcomes] == expected, (batch, [o.detail for o in outcomes])

        # money is conserved, and every account holds what the model says
        tb = trial_balance(ledger)
        assert tb.total_fen == 0
        assert tb.transfer_count == len(model.legs)
        assert {a: b for a, b in tb.balances_fen.items() if b} == model.balances()
        for account in FUNDS:
            fund = ledger.fund(account)
            assert (0 if fund is None else fund.balance_fen) == model.balance_as_of(account), account

        # no fund is negative as of any event's instant, whatever the arrival order (E1)
        stored = [e for _, e in ledger.notifications(audit.FUND_EVENT_TOPICS)]
        for at in instants:
            as_of = audit.fold(stored, as_of=at)
            assert as_of.total_fen == 0, at
            for account in FUNDS:
                assert as_of.balances_fen.get(account, 0) >= 0, (account, at)
            assert {a: b for a, b in as_of.balances_fen.items() if b} == model.balances(at), at

        # the auditor's replay of the notification log decides every event the same way
        replayed = replay(ledger)
        assert replayed.ok, replayed.differences
        assert replayed.decisions == len(model.fates)

    # every fate is on its receipt
    for event_id, (status, _) in model.fates.items():
        receipt = ledger.receipt(event_id)
        assert receipt is not None and receipt.status == status, event_id
    return model


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    script=st.lists(ops, min_size=12, max_size=60),
    sizes=st.lists(st.integers(1, 10), min_size=1, max_size=10),
    share_bp=st.sampled_from((10_000, 10_000, 8_000, 3_333, 0)),
)
def test_revision_2_flows_conserve_money_keep_funds_non_negative_replay_and_match_the_model(
    script: list[Op], sizes: list[int], share_bp: int
) -> None:
    sent = messages(script, share_bp)
    if sent:
        book_and_check(sent, sizes, share_bp)


def test_every_fate_of_the_revision_2_flows_at_least_once() -> None:
    """A literal script through the same checks, so that each reason is met whatever Hypothesis
    draws; the fates are literals too (and so check the model). 80 % of an employee's own
    contribution goes to the personal accounts."""
    march, later = "2025-03-01T10:00:00+08:00", "2025-06-01T10:00:00+08:00"
    UNKNOWN_ORIGINAL = ("rejected", "unknown_original")
    before = "2025-03-01T09:00:00+08:00"

    def at(when: str) -> dict[str, Any]:
        return {"occurred_at": when, "source": SOURCE}

    own = contribution(HEFEI, "employee", 10_000, payer_kind="individual", **at(before))  # 8,000 + 2,000
    treated_elsewhere = {**claim(HEFEI, "resident", 4_000, **at(march)), "institution_city": TREATING_CITY}
    from_own = {**claim(HEFEI, "employee", 5_000, **at(march)), "paid_from": "personal_account"}
    rejected_claim = {**claim(HEFEI, "resident", 10, **at(march)), "institution_city": UNKNOWN_CITY}
    last_claim = claim(HEFEI, "resident", 500, **at(march))

    def recover(fen: int, named: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
        claim_event_id = None if named is None else named["event_id"]
        return recovery(HEFEI, "resident", fen, claim_event_id=claim_event_id, **fields, **at(march))

    all_of_it = recover(2_000, treated_elsewhere, institution_city=TREATING_CITY)  # what is left

    script: list[tuple[dict[str, Any], tuple[str, str | None]]] = [
        (own, ("accepted", None)),
        (contribution(HEFEI, "resident", 10_000, **at(before)), ("accepted", None)),
        (contribution(HEFEI, "employee", 500, payer_kind="medical_assistance", **at(before)),
         ("rejected", "earmark_violation")),
        (contribution(HEFEI, "resident", 3_000, payer_kind="medical_assistance", **at(before)), ("accepted", None)),
        (from_own, ("accepted", None)),  # personal accounts: 3,000 left
        ({**claim(HEFEI, "resident", 100, **at(march)), "paid_from": "personal_account"},
         ("rejected", "earmark_violation")),
        ({**claim(HEFEI, "employee", 3_001, **at(march)), "paid_from": "personal_account"},
         ("rejected", "insufficient_funds")),
        (treated_elsewhere, ("accepted", None)),  # resident pool: 13,000 - 4,000
        (rejected_claim, ("rejected", "unknown_city")),
        (recover(2_000, treated_elsewhere, institution_city=TREATING_CITY), ("accepted", None)),
        (recover(2_001, treated_elsewhere, institution_city=TREATING_CITY), ("rejected", "recovery_exceeds_claim")),
        (all_of_it, ("accepted", None)),
        (recover(1, from_own), UNKNOWN_ORIGINAL),  # paid by the personal accounts, not the pool
        (recover(1, rejected_claim), UNKNOWN_ORIGINAL),
        (recover(1, {"event_id": str(uuid.uuid4())}), UNKNOWN_ORIGINAL),  # never sent
        (recover(700, None), ("accepted", None)),  # no claim named: resident pool 13,700
        (recovery(WUHU, "resident", 1, claim_event_id=treated_elsewhere["event_id"], **at(march)),
         UNKNOWN_ORIGINAL),  # another city's claim
        (premium(HEFEI, "resident", 1_000, **at(march)), ("accepted", None)),
        (premium(HEFEI, "employee", 1_000, **at(march)), ("rejected", "earmark_violation")),
        (premium(HEFEI, "resident", 1_000, fiscal_year=2026, **at(march)), ("rejected", "fiscal_year_mismatch")),
        (budget(5_500, 5_500, city=HEFEI, scheme="resident", **at(march)), ("accepted", None)),  # 5,000 paid
        (budget(9_000, 9_000, city=HEFEI, scheme="resident", **at(march)), ("rejected", "budget_exists")),
        (claim(HEFEI, "resident", 501, **at(march)), ("rejected", "over_budget")),
        (premium(HEFEI, "resident", 501, **at(march)), ("rejected", "over_budget")),
        (last_claim, ("accepted", None)),
        (reversal(own, **at(later)), ("rejected", "insufficient_funds")),  # 5,000 of its 8,000 were paid
        (contribution(HEFEI, "employee", 10_000, payer_kind="individual", **at(later)), ("accepted", None)),
        (reversal(own, **at(later)), ("accepted", None)),  # both legs back, from June on
        (reversal(own, **at(later)), ("rejected", "already_reversed")),
        (reversal(last_claim, **at(before)), ("rejected", "reversal_before_original")),
        (reversal(last_claim, **at(later)), ("accepted", None)),
        (claim(HEFEI, "resident", 500, **at(later)), ("accepted", None)),  # B3: its 500 fen are free again
        (reversal(rejected_claim, **at(later)), UNKNOWN_ORIGINAL),
        (reversal(all_of_it, **at(later)), ("accepted", None)),  # its 2,000 may be recovered again
        ({**recover(2_001, treated_elsewhere, institution_city=TREATING_CITY), **at(later)},
         ("rejected", "recovery_exceeds_claim")),
        ({**recover(2_000, treated_elsewhere, institution_city=TREATING_CITY), **at(later)}, ("accepted", None)),
        (own, ("duplicate", None)),
    ]
    model = book_and_check([m for m, _ in script], [7, 1, 9, 3, 20], share_bp=8_000)
    assert [model.fates[m["event_id"]] for m, _ in script[:-1]] == [fate for _, fate in script[:-1]]
    assert model.balance_as_of(personal(HEFEI)) == 8_000 - 5_000 + 8_000 - 8_000
    assert model.balance_as_of(pooling(HEFEI, "employee")) == 2_000 + 2_000 - 2_000
    assert model.balance_as_of(f"external:institutions:{TREATING_CITY}") == 4_000 - 4_000  # all recovered
