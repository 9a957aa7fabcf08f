"""Test support for the Kafka → ledger → Kafka pipeline: publishing, consuming, expected totals.

Expected balances are computed here from the test's own input with the account names
spelled out literally, not with the ledger's chart of accounts.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from kafka import KafkaProducer

from consumers.ingest import Ingestor
from consumers.relay import Relay
from consumers.runner import ConsumeStats, consume
from consumers.topics import read_topic
from ledger.application import Ledger
from storage import open_ledger
from tests import upstream

IDLE_EXIT_S = 1.0


#: The envelope of the pipeline tests' messages: one business time, one producer.
ENVELOPE = {"occurred_at": "2025-03-10T09:30:00+08:00", "source": "test.upstream"}


def contribution(city: str, scheme: str, amount_fen: int, payer_kind: str = "individual") -> dict[str, Any]:
    return upstream.contribution(city, scheme, amount_fen, payer_kind=payer_kind, **ENVELOPE)


def claim(city: str, scheme: str, amount_fen: int) -> dict[str, Any]:
    return upstream.claim(
        city, scheme, amount_fen, claim_id=f"C-{uuid.uuid4().hex[:8]}", institution_id="H1",
        hospital_level="secondary", **ENVELOPE,
    )


def publish(bootstrap: str, topic: str, messages: Iterable[dict[str, Any] | tuple[bytes, bytes]]) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    count = 0
    for message in messages:
        if isinstance(message, tuple):
            key, value = message
        else:
            key = (message.get("city") or message.get("province") or "").encode()
            value = json.dumps(message).encode()
        producer.send(topic, key=key, value=value)
        count += 1
    producer.flush()
    producer.close()
    return count


def read_all(bootstrap: str, topic: str) -> list[tuple[int, int, dict[str, str], dict[str, Any]]]:
    """(partition, offset, headers, value) of every message on `topic`."""
    return [(m.partition, m.offset, m.headers, m.value) for m in read_topic(bootstrap, topic)]


def run_pipeline(database_url: str, bootstrap: str, topics: dict[str, str], batch_size_max: int = 500) -> tuple[Ledger, ConsumeStats]:
    """Consumes everything published so far into the ledger and relays the outcomes."""
    ledger = open_ledger(database_url)
    ingestor = Ingestor(ledger, bootstrap, topics["events"], "test-consumer", batch_size_max, 200)
    relay = Relay(ledger, bootstrap, topics["ledger"], topics["rejections"])
    try:
        stats = consume(ingestor, relay, idle_exit_s=IDLE_EXIT_S)
    finally:
        ingestor.close()
        relay.close()
    return ledger, stats


def expected_balances(accepted: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Every account's balance after the `accepted` events: credits minus debits."""
    balances: dict[str, int] = defaultdict(int)
    for e in accepted:
        t, city, scheme = e["type"], e.get("city"), e.get("scheme")
        fund = f"city:{city}:{scheme}:pooling" if city else f"province:{scheme}:adjustment"
        if t == "ContributionReceived":
            debit, credit, amount = f"external:contributors:{city}:{scheme}:{e['payer_kind']}", fund, e["amount_fen"]
            if scheme == "employee" and e["payer_kind"] == "individual":  # E6 at the default share: all of it
                credit = f"city:{city}:employee:personal"
        elif t == "SubsidyDisbursed":
            debit, credit, amount = f"external:finance:{e['level']}", fund, e["amount_fen"]
        elif t == "ClaimPaid":
            payer = f"city:{city}:employee:personal" if e.get("paid_from") == "personal_account" else fund
            debit, credit, amount = payer, f"external:institutions:{e.get('institution_city') or city}", e["amount_fen"]
        elif t == "RecoveryReceived":  # P4
            debit, credit, amount = f"external:institutions:{e.get('institution_city') or city}", fund, e["amount_fen"]
        elif t == "CriticalIllnessPremiumPaid":  # E8
            debit, credit, amount = fund, f"external:insurers:{e['insurer_id']}", e["amount_fen"]
        elif t == "InterestCredited":
            debit, credit, amount = "external:interest", fund, e["amount_fen"]
        elif t == "OpeningBalanceRecorded":
            debit, credit, amount = "equity:opening", fund, e["balance_fen"]
        else:
            raise AssertionError(f"no expectation for {t}")
        balances[debit] -= amount
        balances[credit] += amount
    return {account: balance for account, balance in balances.items()}
