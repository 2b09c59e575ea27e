"""What a compliance officer checks after a run, from the records (PostgreSQL and the DNC audit log),
shared by the end-to-end tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg


def overlaps(intervals: list[tuple[datetime, datetime]]) -> bool:
    intervals.sort()
    return any(b[0] < a[1] for a, b in itertools.pairwise(intervals))


async def assert_no_dnc_dial_and_every_dial_audited(
    conn: asyncpg.Connection, cid: str, dials: Sequence[Any]
) -> None:
    """No number on a DNC list (internal, national, the campaign's) was dialled while listed, and every dial
    has an allowing dial-time audit record."""
    on_list = await conn.fetch(
        """SELECT d.call_id, e.list_id FROM dial_attempts d JOIN dnc_entries e ON e.number = d.number
            WHERE d.campaign_id = $1 AND d.dial_at IS NOT NULL
              AND e.added_at <= d.dial_at AND (e.removed_at IS NULL OR e.removed_at > d.dial_at)
              AND (e.list_id IN ('internal', 'national:US') OR e.list_id = 'campaign:' || $1)""",
        cid,
    )
    assert not on_list, f"numbers on a DNC list were dialled: {on_list[:5]}"
    audited = {
        r["call_id"]
        for r in await conn.fetch(
            "SELECT call_id FROM dnc_audit WHERE campaign_id = $1 AND action = 'check' AND result = 'allowed'",
            cid,
        )
    }
    unaudited = [d["call_id"] for d in dials if d["call_id"] not in audited]
    assert not unaudited, f"dials without an allowing audit record: {unaudited[:5]}"
