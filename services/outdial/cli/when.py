"""Dates and times as people type them on the command line: ISO 8601 (``2026-01-02T03:04:05Z``,
``2026-01-02``) and the relative forms (``now``, ``1 hour ago``, ``yesterday``, ``yesterday 9am``,
``in 2 days``), parsed by dateparser. A time without a zone is UTC, as every time outdial prints."""

from __future__ import annotations

from datetime import UTC, date, datetime

from outdial.cli.base import BadInput

EXAMPLES = "ISO 8601 (2026-01-02T03:04:05Z, 2026-01-02) or a relative form ('now', '1 hour ago', 'yesterday')"


def parse_when(
    text: str | None, option: str, *, now: datetime | None = None, prefer: str = "past"
) -> datetime:
    """The moment ``text`` names, timezone-aware. A relative form counts from ``now`` (default: the current
    time); an ambiguous one ('monday') is taken in the past, or in the future with ``prefer="future"`` (a
    schedule). Raises :class:`BadInput` naming ``option`` when it names no moment."""
    raw = (text or "").strip()
    if not raw:
        raise BadInput(f"{option} is empty: give {EXAMPLES}", field=option)
    base = now or datetime.now(UTC)
    dt: datetime | None
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        dt = _relative(raw, base, prefer)
    if dt is None:
        raise BadInput(f"{option} {raw!r} is not a date or time: give {EXAMPLES}", field=option)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def parse_day(text: str | None, option: str, *, now: datetime | None = None) -> date:
    """The calendar day ``text`` names (``2026-12-24``, ``today``, ``tomorrow``, ``3 days ago``)."""
    raw = (text or "").strip()
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return parse_when(raw, option, now=now).date()


def _relative(raw: str, base: datetime, prefer: str) -> datetime | None:
    import dateparser  # type: ignore[import-untyped]  # imported when needed: it loads its language data (~0.3 s)

    settings = {
        "RELATIVE_BASE": base.astimezone(UTC).replace(tzinfo=None),
        "TIMEZONE": "UTC",
        "TO_TIMEZONE": "UTC",
        "RETURN_AS_TIMEZONE_AWARE": True,
        "PREFER_DATES_FROM": prefer,
    }
    try:
        parsed: datetime | None = dateparser.parse(raw, languages=["en"], settings=settings)
        return parsed
    except (ValueError, OverflowError):
        return None
