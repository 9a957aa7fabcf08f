"""E1 in business time: a fund's balance, day by day, so that a late debit is checked against
every later instant, not only against the balance at the end of arrival order.

A fund keeps its *day book*: for each business day (CST, ISO date) it moved on, one
`array('q')` laid out as

    [net_fen, low_fen, at_1, delta_1, at_2, delta_2, ...]

`net_fen` is the day's net change, `low_fen` the lowest point the day reaches measured
from its start (<= 0: the start itself counts, it is the balance from the previous day's
last movement on), and the pairs are the day's movements in business-time order, one pair
per instant (`at` in microseconds since the epoch; two movements at the same instant are
one pair, since a balance read `as_of` that instant sees both).

The days are kept in date order (the dict's own order), so:

- a debit dated at or after the fund's latest movement is checked against the balance, O(1);
- a debit dated earlier, on day D, against the lowest balance from its instant on: the
  lowest point of each day after D (its start, from the balance walked back, plus its
  `low_fen`), and D's own movements from that instant on. That is O(days after D +
  movements on D), not O(events).

A day of a closed fiscal year is dropped (`drop_year`): nothing can be dated there any more
(P1), and a check never looks before the day of its debit.
"""

from __future__ import annotations

import functools
from array import array
from datetime import UTC, datetime, timedelta

from ledger.clock import business_date_of

DayBook = dict[str, "array[int]"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
NET, LOW, PAIRS = 0, 1, 2


@functools.lru_cache(maxsize=4096)
def day_and_instant(occurred_at: str) -> tuple[str, int]:
    """The business day (CST, ISO) and the instant (microseconds since the epoch) of a time.

    Cached: a transfer's time is read for each fund it touches, when checked and when booked.
    """
    at = datetime.fromisoformat(occurred_at)
    return business_date_of(at).isoformat(), (at - _EPOCH) // _MICROSECOND


def latest_instant(days: DayBook) -> int | None:
    """The instant of the fund's latest movement, or None if it never moved (or only in closed years)."""
    if not days:
        return None
    return days[next(reversed(days))][-2]


def lowest_from(days: DayBook, balance_fen: int, day: str, at: int) -> int:
    """The lowest balance the fund has at any instant from `at` (on business day `day`) on."""
    latest = latest_instant(days)
    if latest is None or at >= latest:
        return balance_fen
    lowest = closing = balance_fen
    for key in reversed(days):  # walk back from today's balance, one day at a time
        entry = days[key]
        if key < day:
            break
        start = closing - entry[NET]
        if key > day:
            lowest = min(lowest, start + entry[LOW])
            closing = start
            continue
        running = start  # the day of the debit: exactly, from its instant on
        for i in range(PAIRS, len(entry), 2):
            if entry[i] <= at:
                running += entry[i + 1]
                continue
            lowest = min(lowest, running)
            running += entry[i + 1]
        lowest = min(lowest, running)
        break
    return lowest


def record(days: DayBook, day: str, at: int, delta_fen: int) -> None:
    """Adds one movement of `delta_fen` at instant `at` on business day `day`."""
    entry = days.get(day)
    if entry is None:
        later = bool(days) and day < next(reversed(days))
        days[day] = array("q", (delta_fen, min(0, delta_fen), at, delta_fen))
        if later:  # a day before the latest one: keep the dict in date order
            ordered = sorted(days.items())
            days.clear()
            days.update(ordered)
        return
    if at > entry[-2]:  # after the day's last movement: the common case
        entry[NET] += delta_fen
        entry[LOW] = min(entry[LOW], entry[NET])
        entry.extend((at, delta_fen))
        return
    i = PAIRS
    while i < len(entry) and entry[i] < at:
        i += 2
    if i < len(entry) and entry[i] == at:
        entry[i + 1] += delta_fen  # the same instant: one pair
    else:
        entry[i:i] = array("q", (at, delta_fen))
    _summarise(entry)


def _summarise(entry: array[int]) -> None:
    running = low = 0
    for i in range(PAIRS + 1, len(entry), 2):
        running += entry[i]
        low = min(low, running)
    entry[NET], entry[LOW] = running, low


def drop_year(days: DayBook, fiscal_year: int) -> None:
    """Forgets the days of a closed fiscal year (P1: nothing is dated there any more)."""
    prefix = f"{fiscal_year:04d}-"
    for key in [k for k in days if k.startswith(prefix)]:
        del days[key]


def to_plain(days: DayBook) -> dict[str, list[int]]:
    """The day book as JSON can hold it (a stored snapshot)."""
    return {day: entry.tolist() for day, entry in days.items()}


def from_plain(plain: dict[str, list[int]]) -> DayBook:
    return {day: array("q", entry) for day, entry in sorted(plain.items())}
