"""A simulated province: upstream messages for the demo, the benchmark and the tests.

Every message is a (key, value) pair as upstream services would publish it to
`pooling.events.v1`. Amounts are drawn from ranges around the seeds' figures
(a resident contribution of 380 yuan a head in 2025, subsidies split by level),
and claims are kept below what each fund has received, so a clean stream books
in full; `with_faults` adds the bad and duplicate messages a real feed has.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ledger.clock import CHINA_STANDARD_TIME
from schemas.policy import Policy

Message = tuple[bytes, bytes]

PAYER_KINDS = {"employee": ("employer", "individual"), "resident": ("individual",)}
SUBSIDY_LEVELS = ("central", "provincial", "city", "county")
CATEGORIES = ("inpatient", "outpatient", "chronic_special", "maternity")
HOSPITAL_LEVELS = ("primary", "secondary", "tertiary")
#: Claims of a fund stay below this share of what it has received (basis points).
CLAIM_SHARE_BP = 8_000


@dataclass
class Simulation:
    """Generates messages and keeps the `expected` fate of each, computed from the input alone."""

    policy: Policy
    seed: int = 7
    year: int = 2025
    month: int = 3
    rng: random.Random = field(init=False)
    received_fen: dict[tuple[str, str], int] = field(default_factory=dict)
    paid_fen: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._uuid_rng = random.Random(self.seed * 7919 + 1)

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self._uuid_rng.getrandbits(128), version=4))

    def _at(self, day: int, second: int) -> str:
        moment = datetime(self.year, self.month, 1, 8, 0, tzinfo=CHINA_STANDARD_TIME)
        return (moment + timedelta(days=day, seconds=second)).isoformat()

    def envelope(self, event_type: str, occurred_at: str, source: str) -> dict[str, Any]:
        return {
            "event_id": self._event_id(),
            "type": event_type,
            "schema_version": 1,
            "occurred_at": occurred_at,
            "source": source,
            "province": self.policy.province,
        }

    def openings(self, balance_fen_max: int = 0) -> Iterator[dict[str, Any]]:
        """Opening balances of every city fund, from audited final accounts."""
        for city in self.policy.cities:
            for scheme in ("employee", "resident"):
                balance = self.rng.randint(0, balance_fen_max) if balance_fen_max else 0
                event = self.envelope("OpeningBalanceRecorded", self._at(0, 0), "finance.anhui")
                event.update(
                    city=city,
                    scheme=scheme,
                    balance_fen=balance,
                    previous_year_income_fen=self.rng.randint(10**9, 10**10),
                    fiscal_year=self.year,
                )
                self.received_fen[(city, scheme)] = self.received_fen.get((city, scheme), 0) + balance
                yield event

    def movement(self, city: str, step: int) -> dict[str, Any]:
        """One contribution, subsidy, interest credit or claim for `city`."""
        scheme = self.rng.choice(("employee", "resident"))
        at = self._at(step % 28, step)
        roll = self.rng.random()
        key = (city, scheme)
        if roll < 0.45:
            event = self.envelope("ContributionReceived", at, "tax.anhui")
            headcount = self.rng.randint(1, 500)
            event.update(
                city=city,
                scheme=scheme,
                payer_kind=self.rng.choice(PAYER_KINDS[scheme]),
                amount_fen=headcount * self.rng.choice((38_000, 35_000, 120_000)),
                headcount=headcount,
            )
        elif roll < 0.60 and scheme == "resident":
            event = self.envelope("SubsidyDisbursed", at, "finance.anhui")
            event.update(
                city=city,
                scheme=scheme,
                level=self.rng.choice(SUBSIDY_LEVELS),
                amount_fen=self.rng.randint(100_000, 5_000_000),
            )
        elif roll < 0.63:
            event = self.envelope("InterestCredited", at, "bank.anhui")
            event.update(city=city, scheme=scheme, amount_fen=self.rng.randint(100, 100_000))
        else:
            room = self.received_fen.get(key, 0) * CLAIM_SHARE_BP // 10_000 - self.paid_fen.get(key, 0)
            if room < 1_000:
                return self.movement(city, step + 1)
            amount = self.rng.randint(1, min(room, 2_000_000))
            event = self.envelope("ClaimPaid", at, "settlement.anhui")
            event.update(
                city=city,
                scheme=scheme,
                claim_id=f"C{step}-{self.rng.getrandbits(32):08x}",
                institution_id=f"H{city}{self.rng.randint(1, 40):03d}",
                hospital_level=self.rng.choice(HOSPITAL_LEVELS),
                category=self.rng.choice(CATEGORIES),
                eligible_fen=amount + self.rng.randint(0, amount),
                amount_fen=amount,
            )
            self.paid_fen[key] = self.paid_fen.get(key, 0) + amount
            return event
        self.received_fen[key] = self.received_fen.get(key, 0) + event["amount_fen"]
        return event

    def clean_stream(self, events_per_city: int, opening_balance_fen_max: int = 0) -> list[dict[str, Any]]:
        """Openings, then `events_per_city` movements per city, interleaved across cities."""
        events = list(self.openings(opening_balance_fen_max))
        cities = list(self.policy.cities)
        for step in range(events_per_city):
            for city in cities:
                events.append(self.movement(city, step))
        return events


def key_of(event: dict[str, Any]) -> bytes:
    """The Kafka key of an upstream event: its city, or the province for province-level events."""
    return str(event.get("city") or event.get("province") or "").encode()


def encode(event: dict[str, Any]) -> Message:
    return key_of(event), json.dumps(event, ensure_ascii=False).encode()


def with_faults(sim: Simulation, events: list[dict[str, Any]]) -> list[Message]:
    """The clean stream plus what a real feed brings: junk, typos, re-deliveries, overdrafts."""
    messages = [encode(e) for e in events]
    city = next(iter(sim.policy.cities))
    rng = sim.rng

    def insert(message: Message) -> None:
        messages.insert(rng.randint(len(messages) // 2, len(messages)), message)

    insert((city.encode(), b"<xml>not json</xml>"))
    float_amount = sim.envelope("ContributionReceived", sim._at(3, 1), "tax.anhui")
    float_amount.update(city=city, scheme="resident", payer_kind="individual", amount_fen=38000.0)
    insert(encode(float_amount))
    unknown = sim.envelope("ContributionReceived", sim._at(3, 2), "tax.anhui")
    unknown.update(city="349900", scheme="resident", payer_kind="individual", amount_fen=38_000)
    insert(encode(unknown))
    employee_subsidy = sim.envelope("SubsidyDisbursed", sim._at(3, 3), "finance.anhui")
    employee_subsidy.update(city=city, scheme="employee", level="central", amount_fen=48_800)
    insert(encode(employee_subsidy))
    overdraft = sim.envelope("ClaimPaid", sim._at(27, 4), "settlement.anhui")
    overdraft.update(
        city=city, scheme="resident", claim_id="C-huge", institution_id=f"H{city}001",
        hospital_level="tertiary", category="inpatient", eligible_fen=10**13, amount_fen=10**13,
    )
    messages.append(encode(overdraft))
    for event in rng.sample(events[len(events) // 2 :], k=min(3, len(events) // 2)):
        messages.append(encode(event))  # re-delivered as is: booked once
    reused = dict(rng.choice(events[len(events) // 2 :]))
    reused["source"] = reused["source"] + ".replayed-with-changes"
    messages.append(encode(reused))  # same event_id, other payload: event_id_conflict
    return messages
