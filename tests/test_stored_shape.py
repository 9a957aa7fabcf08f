"""A fund's stream in either stored shape: one `TransferBooked` per leg (before issue 8) or one
`Booked` per batch holding its legs. A store holding both reads and folds as one."""

from __future__ import annotations

from eventsourcing.utils import get_topic

from ledger import accounts, audit
from ledger.aggregates import Fund
from ledger.application import Ledger
from ledger.movements import Transfer

CITY = "city:340100:resident:pooling"
PAYERS = "external:contributors:340100:resident:individual"
INSTITUTIONS = "external:institutions:340100"


def leg(n: int, amount_fen: int, debit: str = PAYERS, credit: str = CITY, category: str = "contribution.individual") -> Transfer:
    return Transfer(
        event_id=f"e{n}", kind="ContributionReceived", debit_account=debit, credit_account=credit,
        amount_fen=amount_fen, category=category, fiscal_year=2025,
        occurred_at=f"2025-03-0{n}T10:00:00+08:00",
    )


def test_a_fund_stored_leg_by_leg_then_batch_by_batch_reads_and_folds_as_one() -> None:
    ledger = Ledger(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    fund = Fund.open(CITY)
    fund.trigger_event(Fund.TransferBooked, **leg(1, 10_000).as_booking())  # the old shape
    fund.trigger_event(Fund.TransferBooked, **leg(2, 2_500).as_booking())
    ledger.save(fund)
    fund.book(leg(3, 700))  # the new shape: two legs of one batch, one event
    fund.book(leg(4, 1_200, debit=CITY, credit=INSTITUTIONS, category="claim.inpatient"))
    ledger.save(fund)

    again = ledger.repository.get(accounts.fund_id(CITY))
    assert isinstance(again, Fund)
    assert again.version == 4  # opened, two legs, one batch
    assert again.balance_fen == 10_000 + 2_500 + 700 - 1_200
    assert again.booking_count == 4
    assert again.totals_fen == {2025: {"contribution.individual": 13_200, "claim.inpatient": 1_200}}
    assert again.last_business_day == "2025-03-04"

    stored = [e for _, e in ledger.notifications(audit.FUND_EVENT_TOPICS)]
    assert [get_topic(type(e)) for e in stored] == [
        get_topic(Fund.TransferBooked), get_topic(Fund.TransferBooked), get_topic(Fund.Booked)
    ]
    trial = audit.fold(stored)
    assert trial.transfer_count == 4
    assert dict(trial.balances_fen) == {
        PAYERS: -(10_000 + 2_500 + 700), CITY: 10_000 + 2_500 + 700 - 1_200, INSTITUTIONS: 1_200
    }
    assert trial.total_fen == 0


def test_events_written_by_orjson_read_as_eventsourcing_writes_them_and_back() -> None:
    """storage.transcoder: the bytes eventsourcing's JSON transcoder reads, either way round."""
    from datetime import UTC, datetime
    from uuid import UUID

    from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, UUIDAsHex

    from storage.transcoder import FastTranscoder

    def registered(transcoder: JSONTranscoder) -> JSONTranscoder:
        transcoder.register(UUIDAsHex())
        transcoder.register(DatetimeAsISO())
        return transcoder

    fast, plain = registered(FastTranscoder()), registered(JSONTranscoder())
    at = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)
    state = {"timestamp": at, "payload": {"amount_fen": 10**15, "city": "340100", "ok": True, "x": None},
             "legs": [{"amount_fen": 1, "fiscal_year": 2025}], "source": None}
    assert plain.decode(fast.encode_plain(state)) == state
    assert fast.decode(plain.encode(state)) == state
    deeper = {"timestamp": at, "state": {"_id": UUID(int=7), "opened": at}}  # tagged below the top
    assert fast.decode(plain.encode(deeper)) == deeper
    huge = {"timestamp": at, "payload": {"amount_fen": 10**30}}  # past 64 bits: the long way
    assert plain.decode(fast.encode_plain(huge)) == huge
    assert fast.decode(plain.encode(huge)) == huge
