"""Concurrent writers on one PostgreSQL event store (X2, X4, I1, M3).

Several `Ledger` instances, each in its own process (multiprocessing 'spawn', each
opening its own ledger), book at the same time. `Ledger.record_batch` relies on
optimistic concurrency: a batch whose aggregates another writer saved first fails
with `IntegrityError` and is decided again on fresh state. These tests check that,
under real contention, the provincial adjustment fund never passes its ceiling, no
city passes its own cap, every event gets exactly one receipt and money is conserved;
that a writer is not starved into giving a batch up; that writers starting together
can all open the ledger; and that a long-lived writer decides on what the others booked.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from ledger import accounts
from ledger.aggregates import Receipt
from ledger.application import Ledger
from ledger.policy import load_packaged_policy
from schemas.policy import Policy
from storage import open_ledger
from tests import upstream
from tests.upstream import feed, statuses, trial_balance

pytestmark = pytest.mark.integration

SCHEME = "resident"
SOURCE = "test.concurrency"  # the producer its messages name
#: city -> previous_year_income_fen of its go-live opening (fiscal 2025). The last city has no
#: writer: its base only adds to the province's income.
BASES_FEN = {"340100": 1_000_000, "340200": 1_200_000, "340300": 800_000, "340400": 1_000_000}
WRITER_CITIES = ("340100", "340200", "340300")
OPENING_BALANCE_FEN = 10_000_000
EXTRACTION_RATE_BP = 500
PAUSE_RATIO_BP = 300  # lowered from 1000 so that the province's ceiling binds
#: How much more than its own cap each writer asks for.
OVERSUBSCRIPTION = 1.3
AMOUNT_MIN_FEN, AMOUNT_MAX_FEN = 700, 1_300
PROCESS_TIMEOUT_S = 45.0
RESUBMISSIONS_MAX = 200
OPENS_PER_PROCESS = 5
PROVINCE_FUND = accounts.province_adjustment(SCHEME)

EXTRACTION_REJECTIONS = {"extraction_paused", "extraction_cap_exceeded"}


# --------------------------------------------------------------------------- helpers


def policy(pause_ratio_bp: int = PAUSE_RATIO_BP) -> Policy:
    return load_packaged_policy().model_copy(update={"pause_ratio_bp": pause_ratio_bp})


def cap_fen(city: str) -> int:
    """X2: 500 bp of the city's collected income of 2024 (its opening's previous year figure)."""
    return BASES_FEN[city] * EXTRACTION_RATE_BP // 10_000


def ceiling_fen(pause_ratio_bp: int = PAUSE_RATIO_BP) -> int:
    """X4: pause_ratio of the province's collected income of 2024 (the sum of the cities' bases)."""
    return sum(BASES_FEN.values()) * pause_ratio_bp // 10_000


def opening(city: str, previous_year_income_fen: int) -> dict[str, Any]:
    return upstream.opening(
        city,
        SCHEME,
        OPENING_BALANCE_FEN,
        previous_year_income_fen=previous_year_income_fen,
        occurred_at="2025-01-01T09:00:00+08:00",
        source=SOURCE,
    )


def extraction(city: str, amount_fen: int, day: int) -> dict[str, Any]:
    return upstream.extraction(
        amount_fen,
        city=city,
        scheme=SCHEME,
        occurred_at=f"2025-{1 + day % 12:02d}-{1 + day % 28:02d}T10:00:00+08:00",
        source=SOURCE,
    )


def contribution(city: str, amount_fen: int) -> dict[str, Any]:
    return upstream.contribution(
        city, SCHEME, amount_fen, occurred_at="2025-03-01T10:00:00+08:00", source=SOURCE
    )


def claim(city: str, amount_fen: int) -> dict[str, Any]:
    return upstream.claim(
        city, SCHEME, amount_fen, occurred_at="2025-04-01T10:00:00+08:00", source=SOURCE
    )


def allocation(city: str, gap_fen: int, amount_fen: int) -> dict[str, Any]:
    return upstream.allocation(
        gap_fen,
        amount_fen,
        city=city,
        scheme=SCHEME,
        occurred_at="2025-05-01T10:00:00+08:00",
        source=SOURCE,
    )


def receipt_creations(ledger: Ledger) -> Counter[str]:
    """How many receipts were created per event_id, from the notification log itself."""
    topics = (get_topic(Receipt.Accepted), get_topic(Receipt.Rejected))
    return Counter(str(e.event_id) for _, e in ledger.notifications(topics))


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


# ------------------------------------------------------------------- the writers


def _writer(
    database_url: str,
    pause_ratio_bp: int,
    name: str,
    batches: list[list[dict[str, Any]]],
    opening_lock: Any,
    barrier: Any,
    results: Any,
) -> None:
    """One writer process: its own ledger, its own batches, booked as fast as it can.

    A batch that `record_batch` gives up on (`RuntimeError`: still conflicting after
    `SAVE_ATTEMPTS_MAX` attempts; nothing of it was saved) is submitted again, as a
    restarted consumer would, and counted. Puts (name, outcomes, conflicts, give-ups,
    error) on `results`, outcomes as (event_id, status, reason, detail) in submission order.
    """
    quiet_logs()
    outcomes: list[tuple[str | None, str, str | None, str | None]] = []
    conflicts = gave_up = 0
    error: str | None = None
    try:
        # Opened one at a time: see test_writers_starting_at_the_same_time_can_all_open_the_ledger.
        with opening_lock:
            ledger = open_ledger(database_url, seed_policy=policy(pause_ratio_bp))
        save = ledger.save

        def counting_save(*args: Any, **kwargs: Any) -> Any:
            nonlocal conflicts
            try:
                return save(*args, **kwargs)
            except IntegrityError:
                conflicts += 1
                raise

        ledger.save = counting_save  # type: ignore[method-assign]
        rng = random.Random(name)
        barrier.wait(timeout=PROCESS_TIMEOUT_S)
        for batch in batches:
            for _ in range(RESUBMISSIONS_MAX):
                try:
                    booked = feed(ledger, *batch)
                    break
                except RuntimeError as exc:
                    if "still conflicting" not in str(exc):
                        raise
                    gave_up += 1
                    time.sleep(rng.uniform(0.0, 0.02))
            else:
                raise RuntimeError(f"batch given up {RESUBMISSIONS_MAX} times in a row")
            outcomes += [(o.event_id, o.status, o.reason, o.detail) for o in booked]
        ledger.close()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        error = traceback.format_exc()
    results.put((name, outcomes, conflicts, gave_up, error))


@dataclass
class WriterResult:
    outcomes: list[tuple[str | None, str, str | None, str | None]]
    conflicts: int  # IntegrityErrors: batches decided again on fresh state
    gave_up: int  # RuntimeErrors: batches record_batch gave up on (submitted again)


def run_writers(
    database_url: str,
    plans: dict[str, list[list[dict[str, Any]]]],
    pause_ratio_bp: int = PAUSE_RATIO_BP,
) -> dict[str, WriterResult]:
    """Runs one writer process per plan, all released at once."""
    ctx = multiprocessing.get_context("spawn")
    opening_lock, barrier, results = ctx.Lock(), ctx.Barrier(len(plans)), ctx.Queue()
    processes = [
        ctx.Process(
            target=_writer,
            args=(database_url, pause_ratio_bp, name, batches, opening_lock, barrier, results),
            name=f"writer-{name}",
        )
        for name, batches in plans.items()
    ]
    for p in processes:
        p.start()
    collected: dict[str, WriterResult] = {}
    errors: list[str] = []
    try:
        for _ in processes:
            name, outcomes, conflicts, gave_up, error = results.get(timeout=PROCESS_TIMEOUT_S)
            if error is not None:
                errors.append(f"writer {name}:\n{error}")
            collected[name] = WriterResult(outcomes, conflicts, gave_up)
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return collected


def set_up(
    database_url: str, *messages: dict[str, Any], pause_ratio_bp: int = PAUSE_RATIO_BP
) -> None:
    """One ledger, one batch: the openings (and anything else every writer relies on)."""
    ledger = open_ledger(database_url, seed_policy=policy(pause_ratio_bp))
    try:
        assert statuses(feed(ledger, *messages)) == [("accepted", None)] * len(messages)
    finally:
        ledger.close()


# ----------------------------------------------------------------------- the tests


@dataclass
class Race:
    plans: dict[str, list[list[dict[str, Any]]]]
    amounts: dict[str, int]  # event_id -> amount_fen
    submitted: dict[str, str]  # event_id -> city
    results: dict[str, WriterResult]


def extraction_race(database_url: str) -> Race:
    """Openings for 4 cities, then 3 writers extracting for their own city at the same time.

    Each writer asks for ~130 % of its own cap, in batches of 1-3 extractions; the caps
    together exceed the province's ceiling, which therefore binds.
    """
    assert sum(cap_fen(c) for c in BASES_FEN) > ceiling_fen(), "the ceiling must bind"
    set_up(database_url, *(opening(city, base) for city, base in BASES_FEN.items()))
    plans: dict[str, list[list[dict[str, Any]]]] = {}
    amounts: dict[str, int] = {}
    for n, city in enumerate(WRITER_CITIES):
        rng = random.Random(1000 + n)
        wanted = int(cap_fen(city) * OVERSUBSCRIPTION)
        extractions: list[dict[str, Any]] = []
        while sum(e["amount_fen"] for e in extractions) < wanted:
            amount = rng.randint(AMOUNT_MIN_FEN, AMOUNT_MAX_FEN)
            extractions.append(extraction(city, amount, len(extractions)))
        batches: list[list[dict[str, Any]]] = []
        i = 0
        while i < len(extractions):
            size = rng.choice((1, 1, 2, 3))
            batches.append(extractions[i : i + size])
            i += size
        plans[city] = batches
        amounts.update({e["event_id"]: e["amount_fen"] for e in extractions})
    submitted = {e["event_id"]: city for city, batches in plans.items() for b in batches for e in b}
    return Race(plans, amounts, submitted, run_writers(database_url, plans))


def test_concurrent_extractions_by_different_cities_never_pass_the_province_ceiling_or_a_city_cap(
    database_url: str,
) -> None:
    race = extraction_race(database_url)
    amounts, submitted = race.amounts, race.submitted

    # What each writer was told.
    told: dict[str, tuple[str, str | None, str | None]] = {}
    for city, result in race.results.items():
        plan = [e["event_id"] for b in race.plans[city] for e in b]
        assert [o[0] for o in result.outcomes] == plan
        for event_id, status, reason, detail in result.outcomes:
            assert event_id is not None
            assert status in ("accepted", "rejected"), (event_id, status, reason)
            if status == "rejected":
                assert reason in EXTRACTION_REJECTIONS, (event_id, reason, detail)
            told[event_id] = (status, reason, detail)
    assert told.keys() == submitted.keys()

    accepted_by_city: dict[str, int] = defaultdict(int)
    for event_id, (status, _, _) in told.items():
        if status == "accepted":
            accepted_by_city[submitted[event_id]] += amounts[event_id]
    accepted_total = sum(accepted_by_city.values())

    # Everything below is read back by a fresh ledger, i.e. replayed from PostgreSQL.
    ledger = open_ledger(database_url, seed_policy=policy())
    try:
        province = ledger.fund(PROVINCE_FUND)
        assert province is not None
        ceiling = ceiling_fen()
        # X4: never above the ceiling.
        assert province.balance_fen <= ceiling
        headroom = ceiling - province.balance_fen
        # The province fund only took extractions: it holds exactly what the writers were told.
        assert province.balance_fen == accepted_total
        assert province.total_fen(2025, "extraction") == accepted_total

        for city in BASES_FEN:
            fund = ledger.fund(accounts.city_pooling(city, SCHEME))
            assert fund is not None
            extracted = fund.total_fen(2025, "extraction")
            # X2: each city within its own cap, and the books agree with what its writer was told.
            assert extracted <= cap_fen(city), city
            assert extracted == accepted_by_city.get(city, 0), city
            assert fund.balance_fen == OPENING_BALANCE_FEN - extracted, city

        # Every rejection is explained by the final state too: the amount fits neither the
        # province's remaining headroom nor its city's remaining cap. Both only shrink over
        # time here, so a rejection that was right when decided is still explained now.
        room = {city: cap_fen(city) - accepted_by_city[city] for city in BASES_FEN}
        for event_id, (status, reason, detail) in told.items():
            if status == "rejected":
                amount = amounts[event_id]
                assert amount > headroom or amount > room[submitted[event_id]], (
                    event_id, reason, detail, headroom, room[submitted[event_id]],
                )
                if reason == "extraction_paused":
                    assert headroom == 0, (event_id, detail)
        # The writers pushed the fund as far as it goes: it is full, or the smallest
        # rejected amount that its city still had room for does not fit.
        stopped_by_province = [
            amounts[e] for e, (s, _, _) in told.items()
            if s == "rejected" and amounts[e] <= room[submitted[e]]
        ]
        assert stopped_by_province, "no writer was stopped by the province's ceiling"
        assert headroom == 0 or headroom < min(stopped_by_province)

        # I1: every submitted event has exactly one receipt, and it says what the writer was told.
        created = receipt_creations(ledger)
        assert all(created[event_id] == 1 for event_id in submitted)
        assert sum(created.values()) == len(submitted) + len(BASES_FEN)
        for event_id, (status, reason, _) in told.items():
            receipt = ledger.receipt(event_id)
            assert receipt is not None
            assert (receipt.status, receipt.reason) == (status, reason), event_id

        # M3: conservation, and the auditor's fold agrees with the funds.
        tb = trial_balance(ledger)
        assert tb.total_fen == 0
        assert tb.balances_fen[PROVINCE_FUND] == province.balance_fen
        accepted = sum(1 for s, _, _ in told.values() if s == "accepted")
        assert tb.transfer_count == 2 * accepted + len(BASES_FEN)
    finally:
        ledger.close()

    # The test really exercised contention: the ceiling stopped writers that still had room
    # (above). Writers of the same adjustment fund take turns under an advisory lock, so
    # none had to decide a batch again, and every writer got extractions through.
    assert sum(r.conflicts for r in race.results.values()) == 0, "writers of one fund collided"
    assert all(
        any(status == "accepted" for _, status, *_ in r.outcomes) for r in race.results.values()
    ), "a writer was starved"


def test_no_writer_gives_up_a_batch_while_others_extract_into_the_same_province_fund(
    database_url: str,
) -> None:
    """`record_batch` retries a conflicting batch on fresh state; a writer must get through.

    Every extraction of every city saves the same provincial adjustment fund. A batch
    that is still conflicting after `SAVE_ATTEMPTS_MAX` attempts raises `RuntimeError`,
    which stops the consumer; under three writers this must not happen.
    """
    race = extraction_race(database_url)
    gave_up = {city: r.gave_up for city, r in race.results.items()}
    conflicts = {city: r.conflicts for city, r in race.results.items()}
    assert sum(gave_up.values()) == 0, (
        f"record_batch raised 'batch still conflicting after 8 attempts' {gave_up} times per "
        f"writer (IntegrityErrors per writer: {conflicts})"
    )


def test_two_writers_booking_the_same_event_ids_concurrently_book_each_once(
    database_url: str,
) -> None:
    city = WRITER_CITIES[0]
    set_up(database_url, opening(city, BASES_FEN[city]))
    rng = random.Random(7)
    events = [contribution(city, rng.randint(1, 10_000)) for _ in range(40)]
    events += [extraction(city, rng.randint(100, 3_000), day) for day in range(30)]
    rng.shuffle(events)

    def batches(sizes: tuple[int, ...]) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = []
        i = 0
        while i < len(events):
            out.append(events[i : i + sizes[len(out) % len(sizes)]])
            i += len(out[-1])
        return out

    # Same events, same order, different batch boundaries.
    results = run_writers(database_url, {"a": batches((1, 2, 3)), "b": batches((2, 1, 1, 4))})

    fates: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for result in results.values():
        assert [o[0] for o in result.outcomes] == [e["event_id"] for e in events]
        for event_id, status, reason, _ in result.outcomes:
            assert event_id is not None
            fates[event_id].append((status, reason))
    decided: dict[str, tuple[str, str | None]] = {}
    for e in events:
        seen = fates[e["event_id"]]
        # Exactly one writer decided it; the other found its receipt.
        firsts = [f for f in seen if f[0] != "duplicate"]
        assert len(firsts) == 1 and ("duplicate", None) in seen, (e["type"], seen)
        decided[e["event_id"]] = firsts[0]

    contributions = [e for e in events if e["type"] == "ContributionReceived"]
    assert all(decided[e["event_id"]] == ("accepted", None) for e in contributions)
    extracted = [
        e for e in events
        if e["type"] == "AdjustmentFundExtracted" and decided[e["event_id"]][0] == "accepted"
    ]
    contributed_fen = sum(e["amount_fen"] for e in contributions)
    extracted_fen = sum(e["amount_fen"] for e in extracted)

    ledger = open_ledger(database_url, seed_policy=policy())
    try:
        created = receipt_creations(ledger)
        assert all(created[e["event_id"]] == 1 for e in events)
        assert sum(created.values()) == len(events) + 1
        for e in events:
            receipt = ledger.receipt(e["event_id"])
            assert receipt is not None
            assert (receipt.status, receipt.reason) == decided[e["event_id"]]
        fund = ledger.fund(accounts.city_pooling(city, SCHEME))
        province = ledger.fund(PROVINCE_FUND)
        assert fund is not None and province is not None
        assert fund.balance_fen == OPENING_BALANCE_FEN + contributed_fen - extracted_fen
        assert fund.total_fen(2025, "contribution.individual") == contributed_fen
        assert fund.total_fen(2025, "extraction") == extracted_fen <= cap_fen(city)
        assert province.balance_fen == extracted_fen
        tb = trial_balance(ledger)
        assert tb.total_fen == 0
        assert tb.transfer_count == 1 + len(contributions) + 2 * len(extracted)
    finally:
        ledger.close()


def _open_and_close(database_url: str, barrier: Any, results: Any) -> None:
    quiet_logs()
    try:
        barrier.wait(timeout=PROCESS_TIMEOUT_S)
        for _ in range(OPENS_PER_PROCESS):
            open_ledger(database_url).close()
        results.put(None)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("database", ["initialised", "empty"])
def test_writers_starting_at_the_same_time_can_all_open_the_ledger(
    database_url: str, database: str
) -> None:
    """Several consumers (re)starting together each open the ledger, which creates its schema."""
    if database == "initialised":
        open_ledger(database_url).close()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    processes = [
        ctx.Process(target=_open_and_close, args=(database_url, barrier, results)) for _ in range(3)
    ]
    for p in processes:
        p.start()
    try:
        errors = [e for e in (results.get(timeout=PROCESS_TIMEOUT_S) for _ in processes) if e]
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    assert errors == []


def test_a_writer_decides_on_what_another_writer_booked_since_its_last_batch(
    database_url: str,
) -> None:
    """Two long-lived writers taking turns: each decision must see the other's bookings.

    Writer A fills the province fund to its ceiling; writer B then allocates part of it
    to a city with a gap; A's next extraction fits under the ceiling again and must be
    accepted. A rejection writes nothing to the province fund, so no IntegrityError can
    tell A that it decided on an out-of-date fund: the decision must be made on fresh state.
    """
    hefei, wuhu = "340100", "340200"
    bases = {hefei: 1_000_000, wuhu: 0}
    ceiling = sum(bases.values()) * PAUSE_RATIO_BP // 10_000  # 30,000 fen
    set_up(database_url, *(opening(city, base) for city, base in bases.items()))
    a = open_ledger(database_url, seed_policy=policy())
    b = open_ledger(database_url, seed_policy=policy())
    try:
        # A: Hefei extracts up to the ceiling (its own cap is 50,000 fen).
        assert statuses(feed(a, extraction(hefei, ceiling, 0))) == [("accepted", None)]
        # B: Wuhu pays 100,000 fen of claims from its opening balance (a gap of 100,000 fen in
        # 2025) and gets 20,000 fen of it from the adjustment fund.
        assert statuses(feed(b, claim(wuhu, 100_000), allocation(wuhu, 100_000, 20_000))) == [
            ("accepted", None)
        ] * 2
        fresh = open_ledger(database_url, seed_policy=policy())
        province = fresh.fund(PROVINCE_FUND)
        fresh.close()
        assert province is not None and province.balance_fen == ceiling - 20_000

        # A: 5,000 fen more fits under the ceiling (10,000 + 5,000 <= 30,000) and Hefei's cap.
        late = extraction(hefei, 5_000, 1)
        outcome = feed(a, late)
        assert statuses(outcome) == [("accepted", None)], outcome[0].detail
    finally:
        a.close()
        b.close()
