"""Timestamps as the APIs and our run records write them (RFC 3339, `Z` or an offset, or epoch
seconds), read one way everywhere."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_time(value) -> datetime | None:
    """An aware UTC-or-offset datetime, or None for missing or unreadable values."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
