"""Timestamps: ISO-8601 UTC strings in the database and the API, epoch seconds where OpenAI uses them."""
from __future__ import annotations

import datetime as dt

from llmp.errors import InvalidRequestError

UTC = dt.UTC


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso(t: dt.datetime | None = None) -> str:
    """`2024-01-15T10:30:00.123456Z` (sortable as text)."""
    return (t or now()).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def api_iso(value: str | None) -> str | None:
    """A stored timestamp as the spec shows it: `2024-01-15T10:30:00Z`."""
    return value[:19] + "Z" if value else None


def parse(value: str, *, param: str) -> dt.datetime:
    """Parse an ISO date or date-time from a request; naive values are UTC."""
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError, AttributeError):
        raise InvalidRequestError(f"Invalid '{param}': {value!r} is not an ISO-8601 date or time",
                                  param=param, code="invalid_parameter") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def epoch(value: str | None) -> int | None:
    return int(parse(value, param="timestamp").timestamp()) if value else None


def month_start(t: dt.datetime | None = None) -> dt.datetime:
    t = t or now()
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(t: dt.datetime | None = None) -> dt.datetime:
    s = month_start(t)
    return s.replace(year=s.year + 1, month=1) if s.month == 12 else s.replace(month=s.month + 1)
