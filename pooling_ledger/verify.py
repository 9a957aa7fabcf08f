"""`pooling-ledger verify`: the auditor's checks of the event store, from history alone.

1. the trial balance replayed from every recorded transfer sums to zero (M3);
2. every fund rebuilt from its own events holds what the replay says, and none is negative (E1);
3. the read tables, where projected, catch up with the ledger (verify runs the projector
   first; an error or a lag left afterwards fails the check) and hold the same balances
   as the replay;
4. the event table and its hash chain still refuse UPDATE, DELETE and TRUNCATE (their
   triggers are enabled);
5. the hash chain kept in the database (`storage.chain`) recomputed from the event table
   matches the stored one link by link; otherwise the first event where it departs is named
   (notification id, originator id and version, topic). The recomputed latest digest is
   reported beside the stored latest link (the one `GET /health` shows);
6. a fingerprint chains every recorded event in order: keep it, and a later `verify
   --expect` proves the history it covers was not altered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ledger import accounts
from ledger.application import Ledger
from ledger.audit import FUND_EVENT_TOPICS, fold
from projections.projector import Projector
from projections.projector import lag as projection_lag
from projections.queries import trial_balance
from storage import ledger_recorder, verify_chain
from storage.chain import CHAIN_TABLE

FINGERPRINT_PAGE_SIZE = 10_000


@dataclass
class Verification:
    checks: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, problem: str = "") -> None:
        self.checks[name] = self.checks.get(name, True) and ok
        if not ok:
            self.problems.append(f"{name}: {problem}")

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": self.checks, "problems": self.problems, **self.facts}


def fingerprint(ledger: Ledger, up_to: int | None = None) -> tuple[str, int, int]:
    """sha256 chained over every recorded event in notification order: (hex, events, last id)."""
    chain = hashlib.sha256(b"pooling-ledger")
    count = last = 0
    for n in ledger.stored_notifications(page_size=FINGERPRINT_PAGE_SIZE, stop=up_to):
        chain.update(f"{n.id}|{n.originator_id}|{n.originator_version}|{n.topic}|".encode())
        chain.update(n.state)
        count, last = count + 1, n.id
    return chain.hexdigest(), count, last


def verify(ledger: Ledger, database_url: str, expect: str | None = None, up_to: int | None = None) -> Verification:
    result = Verification()
    trial = fold(e for _, e in ledger.notifications(FUND_EVENT_TOPICS))
    result.facts["transfers"] = trial.transfer_count
    result.check("trial_balance_zero", trial.total_fen == 0, f"total is {trial.total_fen} fen")

    for account, replayed in sorted(trial.balances_fen.items()):
        if not accounts.is_fund(account):
            continue
        fund = ledger.fund(account)
        held = fund.balance_fen if fund is not None else None
        result.check("funds_match_replay", held == replayed,
                     f"{account} holds {held} fen, the replay says {replayed}")
        result.check("no_fund_negative", replayed >= 0, f"{account} is at {replayed} fen")

    table = ledger_recorder(ledger).events_table_name
    with psycopg.connect(database_url) as conn:
        if _projected_balances(conn) is not None:
            caught_up = _catch_up(ledger, database_url, result)
            behind = projection_lag(conn, table)
            result.facts.update(projection_checked=True, projection_lag=behind)
            if caught_up:
                result.check("projection_caught_up", behind == 0,
                             f"{behind} notifications are still not projected after catching up")
            projected = _projected_balances(conn) or {}
            replayed_all = {a: b for a, b in trial.balances_fen.items() if b}
            result.check("projection_matches_replay", projected == replayed_all,
                         _difference(projected, replayed_all))
        disabled = conn.execute(
            "SELECT count(*) FILTER (WHERE tgenabled = 'O'), count(*) FROM pg_trigger"
            " WHERE tgrelid IN (%s::regclass, to_regclass(%s)) AND NOT tgisinternal",
            (table, CHAIN_TABLE),
        ).fetchone()
        enabled, total = (int(disabled[0]), int(disabled[1])) if disabled else (0, 0)
        result.check("append_only_guard", total >= 4 and enabled == total,
                     f"{enabled} of {total} guard triggers on {table} and {CHAIN_TABLE} are enabled")

    with psycopg.connect(database_url, autocommit=True) as conn:
        chain = verify_chain(conn, table)
    result.facts["chain"] = chain.as_json()
    result.check("chain_intact", chain.ok, chain.problem)

    digest, count, last = fingerprint(ledger, up_to)
    result.facts.update(fingerprint=digest, events=count, last_notification_id=last)
    if expect is not None:
        result.check("fingerprint_matches", digest == expect,
                     f"history up to notification {last} fingerprints {digest}, expected {expect}")
    return result


def _catch_up(ledger: Ledger, database_url: str, result: Verification) -> bool:
    """Runs the projector until the read tables hold every recorded event; False if it fails."""
    try:
        with Projector(ledger, database_url) as projector:
            projector.run_until_caught_up()
    except Exception as error:  # noqa: BLE001 - a projector that cannot catch up fails the check
        result.check("projection_caught_up", False,
                     f"the projector failed while catching up: {type(error).__name__}: {error}")
        return False
    return True


def _projected_balances(conn: psycopg.Connection[Any]) -> dict[str, int] | None:
    """The read tables' balances (the API's trial balance), or None where nothing is projected."""
    try:
        accounts_ = trial_balance(conn)["accounts"]
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return None
    return {a["account"]: a["balance_fen"] for a in accounts_ if a["balance_fen"]}


def _difference(left: dict[str, int], right: dict[str, int]) -> str:
    keys = sorted(set(left) | set(right))
    diffs = [f"{k}: projected {left.get(k, 0)}, replayed {right.get(k, 0)}" for k in keys
             if left.get(k, 0) != right.get(k, 0)]
    return "; ".join(diffs[:5]) + (f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else "")
