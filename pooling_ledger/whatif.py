"""`pooling-ledger replay --until T` and `replay --policy FILE`: history decided again, for auditors.

Plain `replay` (`pooling_ledger/replay.py`) is a check: every recorded input decided again
under the same policy must give its recorded fate. These two are answers, not checks (they
exit 0 whatever they find): each decides a chosen part of the recorded inputs again on a fresh
in-memory ledger and reports what comes out beside what was recorded. Neither writes
anything: both only read the notification log (the receipts, which keep every input, and the
funds' events, from which the recorded figures are folded as `balances` folds them).

`--until T`, in business time. "The ledger as it stood at T" has two readings. In recording
time it is a prefix of the notification log, whose replay gives the recorded fates by
construction and whose balances mix business dates (last month's claim delivered yesterday
is in, this morning's delivered after T is out). In business time it is what the inputs
dated up to T decide: the question `balances --as-of T` answers from the recorded transfers,
asked of the inputs instead. `--until` takes business time:

- decided, in notification order (the order the ledger decided them; a late delivery stays
  late): every recorded input whose `occurred_at` is at or before T;
- and every recorded `PolicyAdopted`, whatever its date: a policy is data the ledger held
  ahead of the days it governs, and M2 and I4 let an adoption dated after T govern at most
  T's own business day, and there only the events recorded after it, which the recorded
  ledger decided under it too;
- and every message that could not be parsed (it has no business time): it books nothing,
  but its receipt holds its event_id (I1) as recorded;
- left out and counted: inputs dated after T, and `unprocessable` fates (as in `replay`).

It prints the trial balance as of T (every account; it sums to zero by construction, M3)
folded from what the replay booked. It equals the recorded `balances --as-of T` unless an
input dated up to T was recorded after later-dated inputs that changed its fate (E1 in
business time, X2's yearly cap, B3, a P1 close all look at later-dated history: a June claim
delivered after a September claim emptied the fund is `insufficient_funds` in the record, and
accepted by the inputs up to June alone). Such inputs are listed (`decided_differently`), and
the accounts whose recorded balance as of T differs (`recorded_differs`).

`--policy FILE`: what if FILE's policy had decided the recorded history. The file (validated
as `schemas.policy.Policy`) is the seed in place of the recorded one, and the recorded
`PolicyAdopted` inputs are skipped (listed) so that the question is "this policy throughout";
with `--keep-adoptions` they are decided in their place as recorded instead (the file's
policy governs until the first of them takes effect). Every other input is decided in
notification order (with `--until`, only those up to T, as above). Reported: each input whose
fate differs (accepted now rejected, rejected now accepted, rejected for another reason, or
booked differently), by city and scheme, with the recorded and the what-if fate and their
reasons; every account's balance, recorded and what-if; and per scheme the provincial
adjustment fund's extractions and allocations (net of reversals, all fiscal years) and balance.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic
from rich.console import Console
from rich.table import Table

from consumers.booking import record_batch
from consumers.inbound import MESSAGE_SIZE_MAX_BYTES, Inbound
from ledger import accounts
from ledger.aggregates import ALLOCATION_CATEGORY, EXTRACTION_CATEGORY, Fund, Receipt, receipt_id
from ledger.application import InMemoryLedger, Ledger, Outcome
from ledger.audit import FUND_EVENT_TOPICS, TrialBalance, legs
from ledger.errors import Reason
from ledger.policy import load_policy_file
from pooling_ledger.replay import TOPICS, Progress, Recorded, in_batches, inbound_of, seed_policy_of
from schemas.policy import Policy, Scheme

_ACCEPTED = get_topic(Receipt.Accepted)
_FUND_TOPICS = frozenset(FUND_EVENT_TOPICS)
_ADJUSTMENT_FUNDS = {accounts.fund_id(accounts.province_adjustment(s)): s.value for s in Scheme}
#: Rows of one city and scheme the terminal shows (`--json` lists every one).
ROWS_SHOWN_PER_GROUP = 20
DETAIL_CHARS_SHOWN = 160


def parse_until(text: str) -> datetime:
    """`--until`: an RFC 3339 instant with its offset (business time is never naive)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--until {text!r} is not an instant, e.g. 2025-06-30T23:59:59+08:00") from None
    if at.tzinfo is None:
        raise ValueError("--until needs an offset, e.g. 2025-06-30T23:59:59+08:00")
    return at


def load_what_if_policy(path: Path) -> Policy:
    """`--policy FILE`: a policy file like ledger/policies/anhui.json, validated."""
    try:
        return load_policy_file(path)
    except FileNotFoundError:
        raise ValueError(f"--policy {path}: no such file") from None
    except OSError as error:
        raise ValueError(f"--policy {path}: {error.strerror or error}") from None
    except ValueError as error:  # invalid JSON, or pydantic's ValidationError
        raise ValueError(f"--policy {path} is not a valid policy: {error}") from None


# --------------------------------------------------------------------------- figures


@dataclass
class Figures:
    """Every account's balance (a trial balance) and, per scheme, the provincial adjustment
    fund's extractions and allocations, folded from the legs of fund events (up to `as_of`)."""

    as_of: datetime | None = None
    trial: TrialBalance = field(init=False)
    extractions_fen: dict[str, int] = field(default_factory=dict)
    allocations_fen: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.trial = TrialBalance(as_of=self.as_of)

    def post(self, events: Iterable[Any]) -> None:
        for fund_id, leg in legs(events):
            if self.as_of is not None and datetime.fromisoformat(leg.occurred_at) > self.as_of:
                continue
            self.trial.post(fund_id, leg)
            scheme = _ADJUSTMENT_FUNDS.get(fund_id)
            if scheme is not None and leg.category in (EXTRACTION_CATEGORY, ALLOCATION_CATEGORY):
                totals = self.extractions_fen if leg.category == EXTRACTION_CATEGORY else self.allocations_fen
                totals[scheme] = totals.get(scheme, 0) + (-leg.amount_fen if leg.reversal_of else leg.amount_fen)

    def balance_fen(self, account: str) -> int:
        return self.trial.balances_fen.get(account, 0)

    def adjustment_fund(self, scheme: Scheme) -> dict[str, int]:
        """X4/X5: what the scheme's provincial adjustment fund took in, paid out and holds."""
        return {
            "extractions_fen": self.extractions_fen.get(scheme.value, 0),
            "allocations_fen": self.allocations_fen.get(scheme.value, 0),
            "balance_fen": self.balance_fen(accounts.province_adjustment(scheme)),
        }

    @property
    def accounts(self) -> set[str]:
        return set(self.trial.balances_fen)


class _DecidingLedger(InMemoryLedger):
    """The in-memory ledger, folding the legs of every fund event it keeps into `figures` (it
    stores no notification log to fold afterwards), and keeping what the receipts of the last
    batch booked, split included (`booked`), for the comparison."""

    def __init__(self, seed_policy: Policy | None, as_of: datetime | None) -> None:
        super().__init__(seed_policy=seed_policy)
        self.figures = Figures(as_of)
        self.booked: dict[UUID, tuple[dict[str, Any], ...]] = {}

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        for aggregate in objs:
            if type(aggregate) is Fund:
                self.figures.post(aggregate.collect_events())
            elif type(aggregate) is Receipt:
                self.booked[aggregate.id] = tuple(aggregate.transfers)
        return super().save(*objs, **kwargs)


# --------------------------------------------------------------------------- fates


@dataclass(frozen=True)
class Fate:
    status: str  # accepted, rejected (or duplicate)
    reason: str | None = None
    detail: str | None = None
    transfers: tuple[dict[str, Any], ...] = ()

    @classmethod
    def recorded(cls, fate: Recorded) -> Fate:
        fields = fate.fields
        if fate.topic == _ACCEPTED:
            booked = (fields.get("transfer"), fields.get("split"))
            return cls("accepted", transfers=tuple(t for t in booked if t is not None))
        return cls("rejected", fields.get("reason"), fields.get("detail"))

    @classmethod
    def decided(cls, outcome: Outcome, booked: dict[UUID, tuple[dict[str, Any], ...]]) -> Fate:
        transfers: tuple[dict[str, Any], ...] = ()
        if outcome.status == "accepted" and outcome.event_id is not None:
            transfers = booked.get(receipt_id(outcome.event_id), ())
        return cls(outcome.status, outcome.reason, outcome.detail, transfers)

    def differs(self, other: Fate) -> bool:
        if self.status != other.status:
            return True
        if self.status == "rejected":
            return self.reason != other.reason
        return self.transfers != other.transfers

    @property
    def label(self) -> str:
        return self.status if self.reason is None else f"{self.status} ({self.reason})"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "reason": self.reason, "detail": self.detail}
        if self.status == "accepted":
            out["transfers"] = list(self.transfers)
        return out


@dataclass(frozen=True)
class Change:
    """A recorded input that, decided again, met another fate."""

    notification_id: int
    event_id: str | None
    event_type: str | None
    city: str | None
    scheme: str | None
    occurred_at: str | None
    recorded: Fate
    again: Fate

    @property
    def kind(self) -> str:
        if self.recorded.status != self.again.status:
            return f"{self.recorded.status}_now_{self.again.status}"  # e.g. accepted_now_rejected
        return "booked_differently" if self.recorded.status == "accepted" else "rejected_for_another_reason"

    @property
    def group(self) -> tuple[str, str]:
        return (self.city or "province", self.scheme or "-")

    def as_json(self, again: str) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id, "event_id": self.event_id,
            "event_type": self.event_type, "city": self.city, "scheme": self.scheme,
            "occurred_at": self.occurred_at, "change": self.kind,
            "recorded": self.recorded.as_json(), again: self.again.as_json(),
        }


@dataclass
class DecidedAgain:
    policy: Policy  # the seed the inputs were decided under
    what_if: bool  # a --policy of the user's, not the recorded seed
    until: datetime | None
    keep_adoptions: bool
    recorded: Figures
    again: Figures
    decisions: int = 0
    left_out: int = 0  # dated after `until`
    unprocessable: int = 0
    adoptions_skipped: list[dict[str, Any]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    @property
    def again_key(self) -> str:
        return "what_if" if self.what_if else "replayed"

    def by_city_scheme(self) -> list[dict[str, Any]]:
        counts: dict[tuple[str, str], Counter[str]] = {}
        for change in self.changes:
            counts.setdefault(change.group, Counter())[change.kind] += 1
        return [{"city": city, "scheme": scheme, **dict(sorted(kinds.items()))}
                for (city, scheme), kinds in sorted(counts.items())]

    def as_json(self, policy_file: Path | None = None) -> dict[str, Any]:
        common = {
            "until": self.until.isoformat() if self.until else None,
            "decisions": self.decisions, "left_out": self.left_out, "unprocessable": self.unprocessable,
            "decided_differently": [c.as_json(self.again_key) for c in self.changes],
        }
        if not self.what_if:
            return {
                **self.again.trial.as_json(), **common,
                "recorded_differs": [
                    {"account": a, "balance_fen": self.again.balance_fen(a), "recorded_fen": self.recorded.balance_fen(a)}
                    for a in sorted(self.recorded.accounts | self.again.accounts)
                    if self.again.balance_fen(a) != self.recorded.balance_fen(a)
                ],
            }
        return {
            "policy": {"name": self.policy.name, "file": str(policy_file) if policy_file else None},
            "keep_adoptions": self.keep_adoptions,
            **common,
            "adoptions_skipped": self.adoptions_skipped,
            "by_city_scheme": self.by_city_scheme(),
            "balances": [
                {"account": a, "recorded_fen": self.recorded.balance_fen(a), "what_if_fen": self.again.balance_fen(a),
                 "difference_fen": self.again.balance_fen(a) - self.recorded.balance_fen(a)}
                for a in sorted(self.recorded.accounts | self.again.accounts)
            ],
            "adjustment_funds": [
                {"scheme": s.value, "account": accounts.province_adjustment(s),
                 **{name: {"recorded": fen, "what_if": self.again.adjustment_fund(s)[name]}
                    for name, fen in self.recorded.adjustment_fund(s).items()}}
                for s in Scheme
            ],
            "total_fen": {"recorded": self.recorded.trial.total_fen, "what_if": self.again.trial.total_fen},
        }


# --------------------------------------------------------------------------- deciding


def decide_again(
    recorded: Ledger,
    *,
    policy: Policy | None = None,
    until: datetime | None = None,
    keep_adoptions: bool = True,
    message_size_max_bytes: int = MESSAGE_SIZE_MAX_BYTES,
    progress: Progress | None = None,
) -> DecidedAgain:
    """The recorded inputs (up to `until` in business time, see the module's docstring) decided
    again under `policy` (None: the recorded seed, with every adoption), beside the record.

    One pass over the notification log: the receipts are decided again in batches as they
    come, the funds' events folded into the recorded figures. Nothing is written.
    """
    fresh = _DecidingLedger(policy if policy is not None else seed_policy_of(recorded), until)
    result = DecidedAgain(policy=fresh.seed_policy, what_if=policy is not None, until=until,
                          keep_adoptions=keep_adoptions or policy is None,
                          recorded=Figures(until), again=fresh.figures)
    decode = recorded.mapper.transcoder.decode

    def inputs() -> Iterator[tuple[int, tuple[int, Inbound, Recorded]]]:
        for notification in recorded.stored_notifications((*TOPICS, *FUND_EVENT_TOPICS)):
            if notification.topic in _FUND_TOPICS:
                result.recorded.post((recorded.mapper.to_domain_event(notification),))
                continue
            fate = Recorded(notification.topic, decode(notification.state))
            if fate.fields.get("reason") == Reason.unprocessable.value:
                result.unprocessable += 1  # nothing was booked (as in replay)
                continue
            adoption = fate.fields.get("event_type") == "PolicyAdopted"
            if adoption and not result.keep_adoptions:
                payload = fate.fields.get("payload") or {}
                result.adoptions_skipped.append({
                    "notification_id": notification.id, "event_id": fate.fields.get("event_id"),
                    "effective_from": payload.get("effective_from") if isinstance(payload, dict) else None,
                    "recorded": Fate.recorded(fate).as_json(),
                })
                continue
            inbound = inbound_of(fate, message_size_max_bytes)
            if until is not None and not adoption and inbound.event is not None and inbound.event.occurred_at > until:
                result.left_out += 1
                continue
            yield notification.id, (notification.id, inbound, fate)

    for batch in in_batches(inputs(), recorded.recorder.max_notification_id() or 0, progress):
        _decide(fresh, batch, result)
    return result


def _decide(fresh: _DecidingLedger, batch: list[tuple[int, Inbound, Recorded]], result: DecidedAgain) -> None:
    fresh.booked.clear()
    outcomes = record_batch(fresh, [inbound for _, inbound, _ in batch])
    for (notification_id, _, fate), outcome in zip(batch, outcomes, strict=True):
        result.decisions += 1
        recorded, again = Fate.recorded(fate), Fate.decided(outcome, fresh.booked)
        if recorded.differs(again):
            payload = fate.fields.get("payload")
            payload = payload if isinstance(payload, dict) else {}
            result.changes.append(Change(
                notification_id, fate.fields.get("event_id"), fate.fields.get("event_type"),
                _text(payload.get("city")), _text(payload.get("scheme")), _text(payload.get("occurred_at")),
                recorded, again,
            ))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- on a terminal


@contextmanager
def progress_bar(enabled: bool, description: str) -> Iterator[Progress | None]:
    """A progress bar with the decisions per second on stderr, when it is a terminal and
    `enabled` (not under --json); else nothing."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    started = time.monotonic()
    with Bar(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
             TextColumn("{task.fields[decisions]:,} events"), TextColumn("{task.fields[rate]}"),
             TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(description, total=None, decisions=0, rate="")

        def tell(decisions: int, position: int, last: int) -> None:
            rate = decisions / max(time.monotonic() - started, 1e-6)
            bar.update(task, completed=position, total=max(last, 1), decisions=decisions,
                       rate=f"{rate:,.0f} events/s")

        yield tell


def render(result: DecidedAgain, console: Console, policy_file: Path | None = None) -> None:
    """The result as tables (the terminal's shape of `as_json`)."""
    if result.what_if:
        _render_what_if(result, console, policy_file)
    else:
        _render_until(result, console)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _fen(value: int) -> str:
    return f"{value:,}"


def _counted(result: DecidedAgain) -> str:
    parts = [f"decided {result.decisions:,} recorded inputs again"]
    if result.until is not None:
        parts.append(f"{result.left_out:,} dated after {result.until.isoformat()} left out")
    if result.unprocessable:
        parts.append(f"{result.unprocessable:,} unprocessable counted, not decided")
    return "; ".join(parts)


def _render_until(result: DecidedAgain, console: Console) -> None:
    assert result.until is not None
    console.print(_counted(result))
    table = Table(title=f"Trial balance as of {result.until.isoformat()} (inputs dated up to then)")
    table.add_column("account")
    table.add_column("balance (fen)", justify="right")
    for row in result.again.trial.as_json()["accounts"]:
        table.add_row(row["account"], _fen(row["balance_fen"]))
    table.add_section()
    table.add_row("total (must be 0)", _fen(result.again.trial.total_fen))
    console.print(table)
    if result.changes:
        console.print(f"{_count(len(result.changes), 'input')} dated up to then recorded with another fate "
                      "(decided after later-dated inputs that changed it):")
        _render_changes(result, console)
        differs = result.as_json()["recorded_differs"]
        table = Table(title="Recorded balance as of then (balances --as-of), where it differs")
        for name in ("account", "decided again (fen)", "recorded (fen)"):
            table.add_column(name, justify="left" if name == "account" else "right")
        for row in differs:
            table.add_row(row["account"], _fen(row["balance_fen"]), _fen(row["recorded_fen"]))
        console.print(table)
    else:
        console.print("every input dated up to then met its recorded fate; the recorded balances as of then agree")


def _render_what_if(result: DecidedAgain, console: Console, policy_file: Path | None) -> None:
    source = f" ({policy_file})" if policy_file else ""
    console.print(f"what if [bold]{result.policy.name}[/bold]{source} had decided the recorded history"
                  + ("" if result.until is None else f" up to {result.until.isoformat()}") + ": "
                  + _counted(result), highlight=False)
    if result.adoptions_skipped:
        console.print(f"{_count(len(result.adoptions_skipped), 'recorded policy adoption')} skipped (this policy "
                      "throughout; --keep-adoptions decides them as recorded): "
                      + ", ".join(str(a["event_id"]) for a in result.adoptions_skipped), highlight=False)
    if result.changes:
        console.print(f"{_count(len(result.changes), 'input')} would have met another fate:")
        _render_changes(result, console)
    else:
        console.print("every input would have met its recorded fate")
    differ = {a for a in result.recorded.accounts | result.again.accounts
              if result.recorded.balance_fen(a) != result.again.balance_fen(a)}
    table = Table(title="Balances, recorded and what-if (every fund; other accounts where they differ)")
    for name in ("account", "recorded (fen)", "what-if (fen)", "difference (fen)"):
        table.add_column(name, justify="left" if name == "account" else "right")
    for account in sorted(result.recorded.accounts | result.again.accounts):
        if accounts.is_fund(account) or account in differ:
            before, after = result.recorded.balance_fen(account), result.again.balance_fen(account)
            table.add_row(account, _fen(before), _fen(after), _fen(after - before) if after != before else "")
    table.add_section()
    table.add_row("total (must be 0)", _fen(result.recorded.trial.total_fen), _fen(result.again.trial.total_fen), "")
    console.print(table)
    table = Table(title="Provincial adjustment funds, recorded and what-if (all fiscal years, net of reversals)")
    table.add_column("scheme")
    for name in ("extractions", "allocations", "balance"):
        table.add_column(f"{name} recorded", justify="right")
        table.add_column(f"{name} what-if", justify="right")
    for row in result.as_json(None)["adjustment_funds"]:
        figures = [row[k][side] for k in ("extractions_fen", "allocations_fen", "balance_fen")
                   for side in ("recorded", "what_if")]
        table.add_row(row["scheme"], *map(_fen, figures))
    console.print(table)


def _render_changes(result: DecidedAgain, console: Console) -> None:
    again = "what-if" if result.what_if else "decided again"
    table = Table(title="Decided differently, by city and scheme")
    for name in ("city", "scheme", "event", "type", "occurred"):
        table.add_column(name, no_wrap=True)
    for name in ("recorded", again):
        table.add_column(name, ratio=1)
    groups: dict[tuple[str, str], list[Change]] = {}
    for change in result.changes:
        groups.setdefault(change.group, []).append(change)
    for (city, scheme), changes in sorted(groups.items()):
        city_name = result.policy.cities.get(city)
        place = f"{city} {city_name}" if city_name else city
        for change in changes[:ROWS_SHOWN_PER_GROUP]:
            table.add_row(place, scheme, change.event_id or "-", change.event_type or "-",
                          change.occurred_at or "-", _described(change.recorded), _described(change.again))
        if len(changes) > ROWS_SHOWN_PER_GROUP:
            table.add_row(place, scheme, f"... {len(changes) - ROWS_SHOWN_PER_GROUP:,} more (--json lists all)",
                          "", "", "", "")
        table.add_section()
    console.print(table)


def _described(fate: Fate) -> str:
    if fate.status == "accepted":
        moved = ", ".join(f"{t['amount_fen']:,} fen {t['debit_account']} -> {t['credit_account']}"
                          for t in fate.transfers)
        return f"accepted: {moved}" if moved else "accepted"
    detail = fate.detail or ""
    if len(detail) > DETAIL_CHARS_SHOWN:
        detail = detail[: DETAIL_CHARS_SHOWN - 3] + "..."
    return f"{fate.label}: {detail}" if detail else fate.label
