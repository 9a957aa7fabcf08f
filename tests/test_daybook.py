"""The day book behind E1 in business time (`ledger.daybook`), against a brute-force model:
the balance read as of every instant, from a plain list of (instant, delta)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import daybook
from ledger.aggregates import Fund
from ledger.application import Ledger
from ledger.clock import CHINA_STANDARD_TIME
from ledger.movements import Transfer

START = datetime(2025, 3, 1, tzinfo=CHINA_STANDARD_TIME)

#: (minutes after START, delta): a few days, several movements at the same instant.
moves = st.lists(st.tuples(st.integers(0, 4 * 24 * 60).map(lambda m: m - m % 90), st.integers(-500, 800)),
                 min_size=1, max_size=40)


def brute_lowest_from(history: list[tuple[datetime, int]], at: datetime) -> int:
    def as_of(t: datetime) -> int:
        return sum(d for when, d in history if when <= t)
    return min(as_of(t) for t in [at, *(when for when, _ in history if when > at)])


@settings(max_examples=200, deadline=None)
@given(moves=moves, probes=st.lists(st.integers(0, 5 * 24 * 60), min_size=1, max_size=10))
def test_the_lowest_balance_from_any_instant_on_is_the_brute_force_one(
    moves: list[tuple[int, int]], probes: list[int]
) -> None:
    days: daybook.DayBook = {}
    history: list[tuple[datetime, int]] = []
    for minutes, delta in moves:  # in arrival order, which is not business order
        when = START + timedelta(minutes=minutes)
        daybook.record(days, *daybook.day_and_instant(when.isoformat()), delta)
        history.append((when, delta))
    assert list(days) == sorted(days)
    balance = sum(d for _, d in history)
    for minutes in probes:
        at = START + timedelta(minutes=minutes)
        day, instant = daybook.day_and_instant(at.isoformat())
        assert daybook.lowest_from(days, balance, day, instant) == brute_lowest_from(history, at), at


def test_an_instant_written_in_another_offset_is_the_same_pair() -> None:
    days: daybook.DayBook = {}
    daybook.record(days, *daybook.day_and_instant("2025-03-01T10:00:00+08:00"), 700)
    daybook.record(days, *daybook.day_and_instant("2025-03-01T02:00:00+00:00"), -200)
    assert daybook.to_plain(days) == {"2025-03-01": [500, 0, 1740794400000000, 500]}


def leg(n: int, amount_fen: int, occurred_at: str, *, claim: bool = False) -> Transfer:
    city, other = "city:340100:resident:pooling", "external:contributors:340100:resident:individual"
    return Transfer(
        event_id=f"e{n}", kind="ClaimPaid" if claim else "ContributionReceived",
        debit_account=city if claim else other, credit_account="external:institutions:340100" if claim else city,
        amount_fen=amount_fen, category="claim.inpatient" if claim else "contribution.individual",
        fiscal_year=int(occurred_at[:4]), occurred_at=occurred_at,
    )


def test_a_funds_day_book_survives_its_snapshot_and_a_closed_year_leaves_it() -> None:
    ledger = Ledger(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    fund = Fund.open("city:340100:resident:pooling")
    fund.book(leg(1, 9_000, "2025-12-30T10:00:00+08:00"))
    fund.book(leg(2, 4_000, "2025-12-31T10:00:00+08:00", claim=True))
    fund.book(leg(3, 1_000, "2026-01-02T10:00:00+08:00"))
    ledger.save(fund)
    ledger.take_snapshot(fund.id)
    again = ledger.repository.get(fund.id)  # from the snapshot
    assert isinstance(again, Fund)
    assert daybook.to_plain(again.days) == daybook.to_plain(fund.days)
    assert list(again.days) == ["2025-12-30", "2025-12-31", "2026-01-02"]
    again.close_year(2025, 9_000, "close-2025", datetime(2026, 1, 5).date())
    assert list(again.days) == ["2026-01-02"]
    at = daybook.day_and_instant("2026-01-01T10:00:00+08:00")
    assert daybook.lowest_from(again.days, again.balance_fen, *at) == 5_000


def test_a_snapshot_from_before_the_day_book_refuses_what_it_cannot_check() -> None:
    """Sound, not exact: a store snapshotted before revision 2 knows no history of its days."""
    ledger = Ledger(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    fund = Fund.open("city:340100:resident:pooling")
    fund.book(leg(1, 9_000, "2025-03-01T10:00:00+08:00"))
    ledger.save(fund)
    snapshot = Fund.Snapshot.take(fund)
    del snapshot.state["days"]
    old = snapshot.mutate(None)
    assert isinstance(old, Fund)
    after_its_day = daybook.day_and_instant("2025-03-02T00:00:00+08:00")
    on_its_day = daybook.day_and_instant("2025-03-01T12:00:00+08:00")
    assert daybook.lowest_from(old.days, old.balance_fen, *after_its_day) == 9_000
    assert daybook.lowest_from(old.days, old.balance_fen, *on_its_day) == 0


def test_many_days_in_random_order_stay_in_date_order() -> None:
    rng = random.Random(7)
    days: daybook.DayBook = {}
    stamps = [START + timedelta(days=n, hours=rng.randrange(24)) for n in range(60)]
    rng.shuffle(stamps)
    for when in stamps:
        daybook.record(days, *daybook.day_and_instant(when.isoformat()), 1)
    assert list(days) == sorted(days) and len(days) == 60
