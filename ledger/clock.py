"""Business time: the fiscal year and day are taken in China Standard Time (M2)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")


def fiscal_year_of(occurred_at: datetime) -> int:
    return business_date_of(occurred_at).year


def business_date_of(occurred_at: datetime) -> date:
    assert occurred_at.tzinfo is not None, "occurred_at must carry its offset"
    return occurred_at.astimezone(CHINA_STANDARD_TIME).date()
