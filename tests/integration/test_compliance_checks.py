"""The compliance invariants of tests/e2e/checks.py catch what they claim to: each check on a small, clean set
of records passes, and the same records with one violation written in fail it, naming the call."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from tests.e2e import checks

#: A Wednesday, 11:00 in New York.
T = datetime(2026, 11, 18, 16, 0, tzinfo=UTC)
NY, FL1, FL2, UK = "+12125550101", "+13055550102", "+14075550103", "+447911123456"
WINDOW = {"start_local": "08:00", "end_local": "21:00"}
_seq = itertools.count(1)


async def world(pg: asyncpg.Pool) -> None:
    """Two campaigns (US, UK), a New York lead, a Florida lead with two numbers, a UK lead."""
    for cid, jur in (("us", "US"), ("uk", "UK")):
        settings = {
            "jurisdiction": jur,
            "calling_window": WINDOW,
            "abandon_cap": 0.03,
            "max_calls_per_number_24h": 0,
        }
        await pg.execute(
            "INSERT INTO campaigns (id, name, settings) VALUES ($1, $1, $2::jsonb)", cid, json.dumps(settings)
        )
        await pg.execute("INSERT INTO lead_lists (id, campaign_id) VALUES ($1, $2)", f"l-{cid}", cid)
    for lead, cid, state, numbers, zone in (
        (1, "us", "NY", [NY], "America/New_York"),
        (2, "us", "FL", [FL1, FL2], "America/New_York"),
        (3, "uk", "", [UK], "Europe/London"),
    ):
        await pg.execute(
            "INSERT INTO leads (id, campaign_id, list_id, row_number, state) VALUES ($1, $2, $3, $1, $4)",
            lead,
            cid,
            f"l-{cid}",
            state,
        )
        for pos, n in enumerate(numbers):
            await pg.execute(
                "INSERT INTO lead_numbers (campaign_id, e164, lead_id, position, timezones) VALUES ($1, $2, $3, $4, $5)",
                cid,
                n,
                lead,
                pos,
                [zone],
            )
    await pg.execute(
        "INSERT INTO dnc_lists (id, kind, name, jurisdiction) VALUES ('national:US', 'national', 'US registry', 'US')"
    )


async def dial(
    pg: asyncpg.Pool,
    cid: str,
    lead: int,
    number: str,
    at: datetime,
    *,
    outcome: str = "no_answer",
    answer: str = "",
    audited: bool = True,
) -> str:
    call_id = f"c{next(_seq)}"
    await pg.execute(
        """INSERT INTO dial_attempts (call_id, campaign_id, lead_id, number, replica, fence_token, allowed, gate_at,
                                      dial_at, answer_at, end_at, outcome, answer, connect_at, agent_id)
           VALUES ($1, $2, $3, $4, 'r1', 1, true, $5, $5, $6, $7, $8, $9,
                   CASE WHEN $8::text = 'connected' THEN $6::timestamptz END,
                   CASE WHEN $8::text = 'connected' THEN 'agent-1' END)""",
        call_id,
        cid,
        str(lead),
        number,
        at,
        at + timedelta(seconds=5) if answer else None,
        at + timedelta(seconds=20),
        outcome,
        answer or None,
    )
    if audited:
        await pg.execute(
            """INSERT INTO dnc_audit (seq, at, actor, action, number, campaign_id, call_id, result, details, prev_hash,
                                      hash)
               VALUES ($1, now(), 'svc:pacing', 'check', $2, $3, $4, 'allowed', $5, '', '')""",
            next(_seq),
            number,
            cid,
            call_id,
            json.dumps({"decided_at": (at - timedelta(milliseconds=50)).isoformat()}),
        )
    return call_id


async def all_checks(pg: asyncpg.Pool, *, person: bool = True) -> None:
    async with pg.acquire() as conn:
        dials = await checks.load_dials(conn, ["us", "uk"])
        checks.assert_every_dial_audited(dials)
        await checks.assert_no_listed_number_dialled(conn, dials)
        checks.assert_dials_inside_windows(dials)
        await checks.assert_number_caps(conn, dials)
        if person:
            await checks.assert_person_caps(conn, dials)
        checks.assert_abandonment_within_cap(dials)
        await checks.assert_uk_quiet_after_abandoned(conn, dials)


@pytest.fixture
async def clean(pg: asyncpg.Pool) -> asyncpg.Pool:
    await world(pg)
    await dial(pg, "us", 1, NY, T)
    await dial(pg, "us", 2, FL1, T + timedelta(minutes=1))
    await dial(pg, "uk", 3, UK, T)
    await all_checks(pg)
    return pg


async def test_a_clean_day_passes_and_an_unaudited_dial_fails(clean: asyncpg.Pool) -> None:
    call = await dial(clean, "us", 1, NY, T + timedelta(hours=1), audited=False)
    with pytest.raises(AssertionError, match=f"without an allowing dial-time audit record: \\['{call}'\\]"):
        await all_checks(clean)


async def test_a_number_on_the_company_list_fails(clean: asyncpg.Pool) -> None:
    await clean.execute(
        "INSERT INTO dnc_entries (list_id, number, added_at) VALUES ('internal', $1, $2)",
        NY,
        T + timedelta(hours=1),
    )
    await all_checks(clean)  # listed after its dial: fine
    call = await dial(clean, "us", 1, NY, T + timedelta(hours=2))
    with pytest.raises(AssertionError, match=re.escape(f"{call} to {NY}: on internal")):
        await all_checks(clean)


async def test_the_registry_needs_a_consent_the_rnd_does_not_show_reassigned(clean: asyncpg.Pool) -> None:
    await clean.execute(
        "INSERT INTO dnc_entries (list_id, number, added_at) VALUES ('national:US', $1, $2)",
        NY,
        T - timedelta(days=3),
    )
    with pytest.raises(AssertionError, match="no consent in force"):
        await all_checks(clean)
    await clean.execute(
        """INSERT INTO dnc_consent (number, kind, actor, granted_at, obtained_at)
           VALUES ($1, 'express_written', 'c', $2, $3)""",
        NY,
        T - timedelta(days=10),
        datetime(2025, 6, 1, tzinfo=UTC),
    )
    await all_checks(clean)
    imp = await clean.fetchval(
        """INSERT INTO dnc_rnd_imports (imported_at, actor, sha256, rows, rejected)
           VALUES ($1, 'c', 'x', 1, 0) RETURNING id""",
        T + timedelta(hours=1),
    )
    await clean.execute(
        """INSERT INTO dnc_rnd_results (import_id, number, queried_date, answer, disconnect_date, imported_at)
           VALUES ($1, $2, $3, 'yes', $4, $5)""",
        imp,
        NY,
        date(2025, 6, 1),
        date(2026, 1, 15),
        T + timedelta(hours=1),
    )
    await all_checks(clean)  # imported after the dial: fine
    call = await dial(clean, "us", 1, NY, T + timedelta(hours=2))
    with pytest.raises(
        AssertionError, match=re.escape(f"{call} to {NY}: on national:US (every consent predates")
    ):
        await all_checks(clean)


async def test_a_dial_outside_the_window_fails(clean: asyncpg.Pool) -> None:
    late = datetime(2026, 11, 19, 2, 0, tzinfo=UTC)  # 21:00 in New York
    call = await dial(clean, "us", 1, NY, late)
    with pytest.raises(AssertionError, match=f"{call} at .* outside_hours"):
        await all_checks(clean)


async def test_caps_per_number_and_per_person(clean: asyncpg.Pool) -> None:
    # Florida: 3 calls per person per rolling 24 h. Two more on the second number: 3 on the person's numbers.
    await dial(clean, "us", 2, FL2, T + timedelta(minutes=2))
    await dial(clean, "us", 2, FL2, T + timedelta(minutes=3))
    await all_checks(clean)
    # A fourth, on the first number again: each number has 2 calls, the person 4.
    call = await dial(clean, "us", 2, FL1, T + timedelta(minutes=4))
    await all_checks(clean, person=False)
    with pytest.raises(AssertionError, match=re.escape(f"{call}: person of lead 2") + ".* called 4 times"):
        await all_checks(clean)
    # A day later the rolling 24 h have let those go: three more on one number are fine, a fourth is not.
    for m in range(3):
        await dial(clean, "us", 2, FL2, T + timedelta(hours=25, minutes=m))
    await all_checks(clean, person=False)  # (the person's fourth call above stays a violation)
    call = await dial(clean, "us", 2, FL2, T + timedelta(hours=25, minutes=3))
    with pytest.raises(AssertionError, match=re.escape(f"{call}: {FL2} (FL) called 4 times in 24 h, cap 3")):
        await all_checks(clean, person=False)


async def test_uk_72_hours_after_an_abandoned_call_and_the_abandonment_cap(clean: asyncpg.Pool) -> None:
    await dial(clean, "uk", 3, UK, T + timedelta(hours=1), outcome="abandoned", answer="human")
    for i in range(40):
        await dial(
            clean, "uk", 3, UK, T + timedelta(hours=74, minutes=i), outcome="connected", answer="human"
        )
    await all_checks(clean)
    call = await dial(clean, "uk", 3, UK, T + timedelta(hours=70))
    with pytest.raises(AssertionError, match=re.escape(f"{call} to {UK} at ") + ".* was abandoned at"):
        await all_checks(clean)
    async with clean.acquire() as conn:
        dials = await checks.load_dials(conn, ["uk"])
    more = [*dials, *(d for d in dials if d.outcome == "abandoned")]  # 2 abandoned of 42 live answers
    with pytest.raises(AssertionError, match="campaign uk: 2 abandoned of 42 live answers"):
        checks.assert_abandonment_within_cap(more)
