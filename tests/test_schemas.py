"""Wire contract `pooling.events.v1`: parsing, rejections, committed JSON Schemas."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import (
    EVENT_TYPES,
    ClaimPaid,
    ContributionReceived,
    Envelope,
    InvalidJson,
    InvalidSchema,
    Policy,
    PolicyAdopted,
    Scheme,
    default_schema_dir,
    export_json_schemas,
    parse_event,
)

EVENT_ID = "0b9c6f2e-3d1a-4c56-9e7f-1a2b3c4d5e6f"
OTHER_ID = "7d4e2a10-9b3c-4f21-8a6e-5c0d1e2f3a4b"


def envelope(type_: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": EVENT_ID,
        "type": type_,
        "schema_version": 1,
        "occurred_at": "2025-03-31T10:15:00+08:00",
        "source": "tax.anhui",
        "province": "340000",
        **fields,
    }


EXAMPLES: dict[str, dict[str, Any]] = {
    "ContributionReceived": envelope(
        "ContributionReceived",
        city="340100",
        scheme="employee",
        payer_kind="employer",
        amount_fen=1_234_500,
        headcount=17,
    ),
    "SubsidyDisbursed": envelope(
        "SubsidyDisbursed",
        city="340100",
        scheme="resident",
        level="central",
        amount_fen=9_150_000,
    ),
    "ClaimPaid": envelope(
        "ClaimPaid",
        city="340100",
        scheme="resident",
        claim_id="HF-2025-000123",
        institution_id="H34010001",
        hospital_level="tertiary",
        category="inpatient",
        eligible_fen=800_000,
        amount_fen=560_000,
    ),
    "InterestCredited": envelope("InterestCredited", scheme="employee", amount_fen=4_200),
    "OpeningBalanceRecorded": envelope(
        "OpeningBalanceRecorded",
        city="340100",
        scheme="employee",
        balance_fen=0,
        previous_year_income_fen=98_765_432_100,
        fiscal_year=2025,
    ),
    "BudgetApproved": envelope(
        "BudgetApproved",
        city="340100",
        scheme="resident",
        fiscal_year=2025,
        income_fen=10_000_000_000,
        expenditure_fen=9_500_000_000,
    ),
    "BudgetAdjusted": envelope(
        "BudgetAdjusted",
        city="340100",
        scheme="resident",
        fiscal_year=2025,
        income_fen=10_100_000_000,
        expenditure_fen=0,
    ),
    "AdjustmentFundExtracted": envelope(
        "AdjustmentFundExtracted",
        city="340100",
        scheme="resident",
        fiscal_year=2025,
        amount_fen=500_000_000,
    ),
    "AdjustmentFundAllocated": envelope(
        "AdjustmentFundAllocated",
        city="340100",
        scheme="resident",
        fiscal_year=2025,
        gap_fen=200_000_000,
        reason="major_epidemic",
        amount_fen=100_000_000,
    ),
    "FiscalYearClosed": envelope("FiscalYearClosed", scheme="employee", fiscal_year=2025),
    "EventReversed": envelope(
        "EventReversed", original_event_id=OTHER_ID, reason="duplicate upload from tax bureau"
    ),
    "CriticalIllnessPremiumPaid": envelope(
        "CriticalIllnessPremiumPaid",
        city="340100",
        scheme="resident",
        insurer_id="PICC-AH",
        fiscal_year=2025,
        amount_fen=8_000_000,
    ),
    "RecoveryReceived": envelope(
        "RecoveryReceived",
        city="340100",
        scheme="resident",
        institution_id="H340100001",
        reason="fraud",
        amount_fen=12_000,
    ),
    "PolicyAdopted": envelope(
        "PolicyAdopted",
        effective_from="2025-01-01",
        policy={
            "name": "Anhui 2025",
            "effective_from": "2025-01-01",
            "province": "340000",
            "cities": {"340100": "Hefei", "340200": "Wuhu"},
            "extraction_rate_bp": 300,
        },
    ),
}


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def with_(type_: str, **changes: Any) -> bytes:
    return encode({**EXAMPLES[type_], **changes})


def without(type_: str, field: str) -> bytes:
    obj = dict(EXAMPLES[type_])
    del obj[field]
    return encode(obj)


def schema_error(raw: bytes) -> InvalidSchema:
    with pytest.raises(InvalidSchema) as info:
        parse_event(raw)
    return info.value


# ------------------------------------------------------------------ valid messages


def test_examples_cover_every_type() -> None:
    assert set(EXAMPLES) == set(EVENT_TYPES)
    assert len(EVENT_TYPES) == 14  # RecoveryReceived (P4), CriticalIllnessPremiumPaid (E8): revision 2


@pytest.mark.parametrize("type_", sorted(EXAMPLES))
def test_each_type_parses(type_: str) -> None:
    event = parse_event(encode(EXAMPLES[type_]))
    assert type(event) is EVENT_TYPES[type_]
    assert isinstance(event, Envelope)
    assert event.type == type_
    assert event.event_id == UUID(EVENT_ID)
    assert event.occurred_at == datetime(2025, 3, 31, 2, 15, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(hours=8)
    assert event.province == "340000"


@pytest.mark.parametrize("type_", sorted(EXAMPLES))
def test_payload_round_trips(type_: str) -> None:
    event = parse_event(encode(EXAMPLES[type_]))
    payload = event.payload()
    json.dumps(payload)  # JSON-able
    assert parse_event(encode(payload)) == event
    assert EVENT_TYPES[type_].model_validate(payload) == event
    assert payload["event_id"] == EVENT_ID


def test_typed_fields() -> None:
    event = parse_event(encode(EXAMPLES["ContributionReceived"]))
    assert isinstance(event, ContributionReceived)
    assert event.scheme is Scheme.employee
    assert event.amount_fen == 1_234_500
    assert event.headcount == 17

    adopted = parse_event(encode(EXAMPLES["PolicyAdopted"]))
    assert isinstance(adopted, PolicyAdopted)
    assert isinstance(adopted.policy, Policy)
    assert adopted.effective_from == date(2025, 1, 1)
    assert adopted.policy.extraction_rate_bp == 300


def test_optional_fields() -> None:
    event = parse_event(without("ContributionReceived", "headcount"))
    assert isinstance(event, ContributionReceived)
    assert event.headcount is None
    assert parse_event(with_("InterestCredited", city="340100")).city == "340100"  # type: ignore[union-attr]
    assert parse_event(with_("InterestCredited", city=None)).city is None  # type: ignore[union-attr]
    assert parse_event(without("OpeningBalanceRecorded", "city")).city is None  # type: ignore[union-attr]
    assert parse_event(with_("FiscalYearClosed", city="340100")).city == "340100"  # type: ignore[union-attr]


def test_claim_paid_full_payout_allowed() -> None:
    event = parse_event(with_("ClaimPaid", amount_fen=800_000))
    assert isinstance(event, ClaimPaid)
    assert event.amount_fen == event.eligible_fen


def test_utc_z_and_fraction_accepted() -> None:
    event = parse_event(with_("InterestCredited", occurred_at="2025-03-31T02:15:00.123456Z"))
    assert event.occurred_at.tzinfo is not None


def test_models_are_frozen() -> None:
    event = parse_event(encode(EXAMPLES["ContributionReceived"]))
    with pytest.raises(ValueError):
        event.amount_fen = 1  # type: ignore[misc, union-attr]


# ---------------------------------------------------------------------- rejections


@pytest.mark.parametrize("bad", [100.0, 1e5, "100", True, None, 0, -1, [100], {"fen": 100}])
def test_bad_amount_rejected(bad: Any) -> None:
    error = schema_error(with_("ContributionReceived", amount_fen=bad))
    assert error.detail.startswith("amount_fen: "), error.detail
    assert error.event_id == EVENT_ID
    assert error.event_type == "ContributionReceived"


def test_float_amount_detail() -> None:
    # json.dumps(100.0) would also give `100.0`; spell it out in the raw bytes
    raw = with_("ContributionReceived").replace(b'"amount_fen": 1234500', b'"amount_fen": 100.0')
    assert b"100.0" in raw
    assert schema_error(raw).detail == "amount_fen: Input should be a valid integer"


def test_zero_amount_detail() -> None:
    detail = schema_error(with_("ContributionReceived", amount_fen=0)).detail
    assert detail == "amount_fen: Input should be greater than 0"


@pytest.mark.parametrize(
    ("type_", "field", "bad"),
    [
        ("OpeningBalanceRecorded", "balance_fen", -1),
        ("OpeningBalanceRecorded", "balance_fen", 0.0),
        ("OpeningBalanceRecorded", "previous_year_income_fen", "0"),
        ("OpeningBalanceRecorded", "fiscal_year", 1999),
        ("OpeningBalanceRecorded", "fiscal_year", 2101),
        ("OpeningBalanceRecorded", "fiscal_year", 2025.0),
        ("BudgetApproved", "income_fen", -5),
        ("BudgetAdjusted", "expenditure_fen", 1.5),
        ("ClaimPaid", "eligible_fen", 0),
        ("AdjustmentFundAllocated", "gap_fen", 0),
        ("ContributionReceived", "headcount", 0),
        ("ContributionReceived", "headcount", 3.0),
        ("SubsidyDisbursed", "headcount", False),
    ],
)
def test_bad_numbers_rejected(type_: str, field: str, bad: Any) -> None:
    assert schema_error(with_(type_, **{field: bad})).detail.startswith(f"{field}: ")


@pytest.mark.parametrize("type_", sorted(EXAMPLES))
def test_missing_field_rejected(type_: str) -> None:
    required = [k for k in EXAMPLES[type_] if k not in ("type", "city", "headcount")]
    for field in required:
        detail = schema_error(without(type_, field)).detail
        assert detail == f"{field}: Field required"


def test_missing_type_rejected() -> None:
    error = schema_error(without("ClaimPaid", "type"))
    assert error.detail == "type: Field required"
    assert error.event_id == EVENT_ID
    assert error.event_type is None


@pytest.mark.parametrize("type_", sorted(EXAMPLES))
def test_unknown_field_rejected(type_: str) -> None:
    detail = schema_error(with_(type_, amount_yuan=12.5)).detail
    assert detail == "amount_yuan: Extra inputs are not permitted"


def test_unknown_field_in_policy_rejected() -> None:
    obj = json.loads(with_("PolicyAdopted"))
    obj["policy"]["extraction_rate"] = 0.05
    assert schema_error(encode(obj)).detail.startswith("policy.extraction_rate: ")


@pytest.mark.parametrize("bad", ["34010", "3401000", "34O100", 340100, "", " 340100"])
def test_bad_city_code_rejected(bad: Any) -> None:
    assert schema_error(with_("ContributionReceived", city=bad)).detail.startswith("city: ")


def test_bad_province_code_rejected() -> None:
    assert schema_error(with_("ClaimPaid", province="34000")).detail.startswith("province: ")


@pytest.mark.parametrize(
    "bad",
    [
        "2025-03-31T10:15:00",  # naive
        "2025-03-31",
        "2025-03-31 10:15:00+08:00",  # not RFC 3339
        "1743387300",
        1743387300,
        "2025-02-30T10:15:00+08:00",
        "",
    ],
)
def test_bad_occurred_at_rejected(bad: Any) -> None:
    detail = schema_error(with_("InterestCredited", occurred_at=bad)).detail
    assert detail.startswith("occurred_at: ")


@pytest.mark.parametrize("bad", [2, 0, "1", 1.0, True, None])
def test_bad_schema_version_rejected(bad: Any) -> None:
    assert schema_error(with_("FiscalYearClosed", schema_version=bad)).detail.startswith(
        "schema_version: "
    )


@pytest.mark.parametrize(
    "bad", ["not-a-uuid", "0b9c6f2e3d1a4c569e7f1a2b3c4d5e6f", f"{{{EVENT_ID}}}", 12345, ""]
)
def test_bad_event_id_rejected(bad: Any) -> None:
    error = schema_error(with_("FiscalYearClosed", event_id=bad))
    assert error.detail.startswith("event_id: ")
    assert error.event_id == (bad if isinstance(bad, str) else None)


def test_bad_original_event_id_rejected() -> None:
    detail = schema_error(with_("EventReversed", original_event_id="nope")).detail
    assert detail.startswith("original_event_id: ")


@pytest.mark.parametrize(
    ("type_", "field", "bad"),
    [
        ("ContributionReceived", "source", ""),
        ("ContributionReceived", "source", "x" * 201),
        ("ClaimPaid", "claim_id", ""),
        ("ClaimPaid", "claim_id", "   "),
        ("ClaimPaid", "institution_id", "x" * 101),
        ("EventReversed", "reason", ""),
        ("EventReversed", "reason", "x" * 1001),
    ],
)
def test_bad_text_rejected(type_: str, field: str, bad: str) -> None:
    assert schema_error(with_(type_, **{field: bad})).detail.startswith(f"{field}: ")


def test_unknown_type_rejected() -> None:
    error = schema_error(with_("ContributionReceived", type="ContributionRefunded"))
    assert "unknown event type 'ContributionRefunded'" in error.detail
    for name in EVENT_TYPES:
        assert name in error.detail
    assert error.event_type == "ContributionRefunded"
    assert error.event_id == EVENT_ID


def test_non_string_type_rejected() -> None:
    error = schema_error(with_("ContributionReceived", type=7))
    assert error.detail.startswith("type: unknown event type")
    assert error.event_type is None


@pytest.mark.parametrize(
    ("type_", "field", "bad"),
    [
        ("ContributionReceived", "scheme", "urban"),
        ("ContributionReceived", "scheme", "Employee"),
        ("ContributionReceived", "payer_kind", "government"),
        ("SubsidyDisbursed", "level", "township"),
        ("ClaimPaid", "hospital_level", "quaternary"),
        ("ClaimPaid", "category", "dental"),
        ("AdjustmentFundAllocated", "reason", "because"),
    ],
)
def test_bad_enum_rejected(type_: str, field: str, bad: str) -> None:
    assert schema_error(with_(type_, **{field: bad})).detail.startswith(f"{field}: Input should be")


def test_payout_above_eligible_rejected() -> None:
    error = schema_error(with_("ClaimPaid", amount_fen=800_001))
    assert "amount_fen (800001) must not exceed eligible_fen (800000)" in error.detail
    assert error.event_type == "ClaimPaid"


def test_bad_effective_from_rejected() -> None:
    for bad in ["2025-01-01T00:00:00", 1735689600, "20250101"]:
        detail = schema_error(with_("PolicyAdopted", effective_from=bad)).detail
        assert detail.startswith("effective_from: ")


def test_several_problems_all_named() -> None:
    detail = schema_error(with_("ClaimPaid", amount_fen=1.0, city="1", scheme="x")).detail
    for field in ("amount_fen", "city", "scheme"):
        assert f"{field}: " in detail


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"ClaimPaid"', b"42", b"null", b"[]"])
def test_non_object_rejected(raw: bytes) -> None:
    error = schema_error(raw)
    assert error.detail == "message is not a JSON object"
    assert error.event_id is None
    assert error.event_type is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"type": "ClaimPaid",',
        b"{'type': 'ClaimPaid'}",
        with_("ClaimPaid") + b" trailing",
        b"\xff\xfe{}",
        with_("EventReversed", reason="RE").replace(b'"RE"', b'"bad \xe9 byte"'),
        with_("EventReversed").replace(b'"reason"', b'"reason\xc3"'),
    ],
)
def test_invalid_json_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidJson) as info:
        parse_event(raw)
    assert info.value.detail.startswith("invalid JSON: ")


def test_errors_are_value_errors() -> None:
    assert issubclass(InvalidJson, ValueError)
    assert issubclass(InvalidSchema, ValueError)
    assert str(schema_error(b"[]")) == "message is not a JSON object"


def test_non_ascii_text_accepted() -> None:
    event = parse_event(with_("EventReversed", reason="重复上传"))
    assert event.reason == "重复上传"  # type: ignore[union-attr]


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        parse_event(raw)
    except (InvalidJson, InvalidSchema):
        pass


# eligible_fen + 1 stays within MAX_FEN (10**15), so only the payout rule can refuse it.
@given(st.integers(min_value=1, max_value=5 * 10**14), st.integers(min_value=0, max_value=5 * 10**14 - 1))
def test_claim_paid_amount_bound(amount: int, extra: int) -> None:
    event = parse_event(with_("ClaimPaid", amount_fen=amount, eligible_fen=amount + extra))
    assert event.amount_fen == amount  # type: ignore[union-attr]
    with pytest.raises(InvalidSchema):
        parse_event(with_("ClaimPaid", amount_fen=amount + extra + 1, eligible_fen=amount + extra))


# ------------------------------------------------------------- committed JSON Schemas


def test_committed_json_schemas_are_fresh(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path)}
    committed_dir = default_schema_dir()
    committed = {p.name: p.read_bytes() for p in committed_dir.glob("*.schema.json")}
    hint = (
        f"the JSON Schema files in {committed_dir} are stale; regenerate them with "
        "`pooling-ledger schemas export` and commit the result"
    )
    assert sorted(committed) == sorted(fresh), hint
    for name, data in fresh.items():
        assert committed[name] == data, f"{name}: {hint}"


def test_export_is_deterministic_and_removes_stale(tmp_path: Path) -> None:
    stale = tmp_path / "ContributionRefunded.schema.json"
    stale.write_text("{}\n")
    keep = tmp_path / "README.md"
    keep.write_text("not a schema\n")
    paths = export_json_schemas(tmp_path)
    names = {p.name for p in paths}
    assert names == {f"{t}.schema.json" for t in EVENT_TYPES} | {
        "Envelope.schema.json",
        "Policy.schema.json",
    }
    assert not stale.exists()
    assert keep.exists()
    first = {p.name: p.read_bytes() for p in paths}
    second = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path)}
    assert first == second
    for data in first.values():
        assert data.endswith(b"}\n")
        schema = json.loads(data)
        assert schema["type"] == "object"
    claim = json.loads(first["ClaimPaid.schema.json"])
    assert claim["additionalProperties"] is False
    assert claim["properties"]["type"]["const"] == "ClaimPaid"
    assert claim["properties"]["amount_fen"]["type"] == "integer"
