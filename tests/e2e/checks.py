"""What a compliance officer checks after a run, from the records (PostgreSQL and the DNC audit log),
shared by the end-to-end tests.

Every check reads the facts the services wrote (``dial_attempts``, ``call_records``, ``leads``,
``lead_numbers``, ``campaigns``, the DNC tables and ``dnc_audit``) and applies the rule as the law states it,
independently of the service code that enforced it; only the figures of the law come from the rules table
(``outdial.rules``), as everywhere. Times: a dial's ``dial_at`` and the DNC decision's ``decided_at`` are the
services' clock (shifted in the end-to-end runs), as are list, consent and RND import times.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from outdial.rules.caps import DAY, default_max_calls_24h
from outdial.rules.law import UK_ABANDON_QUIET, abandon_policy
from outdial.rules.numbers import area_code_state
from outdial.rules.windows import check_window, window_from_json


def overlaps(intervals: list[tuple[datetime, datetime]]) -> bool:
    intervals.sort()
    return any(b[0] < a[1] for a, b in itertools.pairwise(intervals))


async def assert_no_dnc_dial_and_every_dial_audited(
    conn: asyncpg.Connection, cid: str, dials: Sequence[Any]
) -> None:
    """No number on a DNC list (internal, national, the campaign's) was dialled while listed, and every dial
    has an allowing dial-time audit record. (For runs without consent: with consent, a registered number may
    be dialled; :func:`assert_no_listed_number_dialled` reads consent and the RND.)"""
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


# ---------------------------------------------------------------------------------------------------------
# The dials of a run, with what the checks below need to judge each one


@dataclass(frozen=True)
class Dial:
    call_id: str
    campaign_id: str
    lead_id: int
    number: str
    dial_at: datetime
    end_at: datetime | None
    answer: str
    answer_at: datetime | None
    outcome: str
    jurisdiction: str
    #: The states whose law applies: the lead's address and, for a NANP number, its area code's (state laws
    #: presume an in-state area code is a resident: e.g. Fla. Stat. 501.059).
    states: tuple[str | None, ...]
    timezones: tuple[str, ...]
    settings: dict[str, Any]
    #: The instant of the allowing dial-time DNC decision (its audit record's ``decided_at``), if any.
    decided_at: datetime | None = None
    audit_details: dict[str, Any] | None = None

    @property
    def decision_time(self) -> datetime:
        return self.decided_at or self.dial_at


def _states(jurisdiction: str, address_state: str, number: str) -> tuple[str | None, ...]:
    found = {address_state or None}
    if jurisdiction == "US":
        found.add(area_code_state(number))
    found.discard(None)
    return tuple(sorted(s for s in found if s)) or (None,)


async def load_dials(
    conn: asyncpg.Connection, campaign_ids: Sequence[str], since: datetime | None = None
) -> list[Dial]:
    """Every call of the campaigns placed since ``since``, with its lead's zones and states, its campaign's settings and its
    allowing dial-time audit record (matched by call id)."""
    rows = await conn.fetch(
        """SELECT d.call_id, d.campaign_id, d.lead_id, d.number, d.dial_at, d.end_at, d.answer, d.answer_at,
                  d.outcome, l.state, n.timezones, c.settings::text AS settings
             FROM dial_attempts d
             JOIN leads l ON l.id = d.lead_id::bigint
             JOIN lead_numbers n ON n.campaign_id = d.campaign_id AND n.e164 = d.number
             JOIN campaigns c ON c.id = d.campaign_id
            WHERE d.campaign_id = ANY($1::text[]) AND d.dial_at IS NOT NULL
              AND ($2::timestamptz IS NULL OR d.dial_at >= $2)""",
        list(campaign_ids),
        since,
    )
    audits: dict[str, dict[str, Any]] = {}
    for r in await conn.fetch(
        """SELECT call_id, number, details FROM dnc_audit
            WHERE action = 'check' AND result = 'allowed' AND campaign_id = ANY($1::text[]) AND call_id <> ''""",
        list(campaign_ids),
    ):
        audits[r["call_id"]] = {"number": r["number"], **json.loads(r["details"])}
    out = []
    for r in rows:
        settings = json.loads(r["settings"])
        jur = str(settings.get("jurisdiction") or "US").upper()
        audit = audits.get(r["call_id"])
        decided = datetime.fromisoformat(audit["decided_at"]) if audit and audit.get("decided_at") else None
        out.append(
            Dial(
                r["call_id"],
                r["campaign_id"],
                int(r["lead_id"]),
                r["number"],
                r["dial_at"],
                r["end_at"],
                r["answer"] or "",
                r["answer_at"],
                r["outcome"] or "",
                jur,
                _states(jur, r["state"] or "", r["number"]),
                tuple(r["timezones"]),
                settings,
                decided,
                audit,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# The invariants


def assert_every_dial_audited(dials: Iterable[Dial]) -> None:
    """Every dial has an allowing dial-time DNC decision in the hash-chained audit, for the same number,
    decided before the call left."""
    missing = [d.call_id for d in dials if d.audit_details is None]
    assert not missing, f"dials without an allowing dial-time audit record: {missing[:5]}"
    wrong = [
        (d.call_id, d.number, d.audit_details) for d in dials if (d.audit_details or {})["number"] != d.number
    ]
    assert not wrong, f"audit records for another number than the one dialled: {wrong[:3]}"
    late = [(d.call_id, d.decided_at, d.dial_at) for d in dials if d.decided_at and d.decided_at > d.dial_at]
    assert not late, f"dials placed before their DNC decision: {late[:3]}"


async def assert_no_listed_number_dialled(conn: asyncpg.Connection, dials: Sequence[Dial]) -> None:
    """At the instant of each dial's DNC decision, its number was on no list that applies to the campaign
    (the company list, the campaign's own, a state list of its jurisdiction), and on a national registry or
    wireless list of its jurisdiction only with a consent in force for that campaign that the Reassigned
    Numbers Database does not show to predate a permanent disconnect (47 CFR 64.1200(c)(2), (m))."""
    numbers = sorted({d.number for d in dials})
    lists = {
        r["id"]: r for r in await conn.fetch("SELECT id, kind, jurisdiction, campaign_id FROM dnc_lists")
    }
    entries: dict[str, list[Any]] = defaultdict(list)
    for r in await conn.fetch(
        "SELECT list_id, number, added_at, expires_at, removed_at FROM dnc_entries WHERE number = ANY($1::text[])",
        numbers,
    ):
        entries[r["number"]].append(r)
    bad: list[str] = []
    for d in dials:
        t = d.decision_time
        for e in entries.get(d.number, []):
            if not (e["added_at"] <= t and _open(e["removed_at"], t) and _open(e["expires_at"], t)):
                continue
            li = lists[e["list_id"]]
            kind = li["kind"]
            if kind == "internal" or (kind == "campaign" and li["campaign_id"] == d.campaign_id):
                bad.append(f"{d.call_id} to {d.number}: on {e['list_id']} since {e['added_at']}, decided {t}")
            elif kind == "state" and li["jurisdiction"] == d.jurisdiction:
                bad.append(f"{d.call_id} to {d.number}: on {e['list_id']} since {e['added_at']}, decided {t}")
            elif kind in ("national", "wireless") and li["jurisdiction"] == d.jurisdiction:
                why = await _consent_problem(conn, d, t)
                if why:
                    bad.append(f"{d.call_id} to {d.number}: on {e['list_id']} ({why}), decided {t}")
    assert not bad, f"{len(bad)} dials of listed numbers: {bad[:5]}"


def _open(end: datetime | None, t: datetime) -> bool:
    return end is None or end > t


def _day(t: datetime) -> date:
    return t.astimezone(UTC).date()


async def _consent_problem(conn: asyncpg.Connection, d: Dial, t: datetime) -> str:
    """Why no consent could be relied on for ``d`` at ``t`` ("" when one could)."""
    consents = await conn.fetch(
        """SELECT id, obtained_at, granted_at FROM dnc_consent
            WHERE number = $1 AND granted_at <= $2 AND (revoked_at IS NULL OR revoked_at > $2)
              AND (expires_at IS NULL OR expires_at > $2) AND (campaign_id = '' OR campaign_id = $3)""",
        d.number,
        t,
        d.campaign_id,
    )
    if not consents:
        return "no consent in force"
    # A "yes" answer imported by then: the number was permanently disconnected on its date (or, without one,
    # at the latest when the answer was imported). A consent given on or before that day is the previous
    # subscriber's.
    disconnects = [
        r["disconnect_date"] or _day(r["imported_at"])
        for r in await conn.fetch(
            """SELECT disconnect_date, imported_at FROM dnc_rnd_results
                WHERE number = $1 AND answer = 'yes' AND imported_at <= $2""",
            d.number,
            t,
        )
    ]
    usable = [c for c in consents if all(_day(c["obtained_at"] or c["granted_at"]) > x for x in disconnects)]
    if not usable:
        return f"every consent predates the RND's disconnect {max(disconnects)}"
    return ""


def assert_dials_inside_windows(dials: Iterable[Dial]) -> None:
    """No call left outside its lead's calling window: the campaign's own hours narrowed by the law of its
    jurisdiction and of every state that applies, in every candidate zone of the number."""
    bad = []
    for d in dials:
        spec = window_from_json(d.settings.get("calling_window") or {})
        for st in d.states:
            w = check_window(d.dial_at, list(d.timezones), spec, jurisdiction=d.jurisdiction, state=st)
            if not w.allowed:
                bad.append(f"{d.call_id} at {d.dial_at} to {d.number} {d.timezones} ({st}): {w.reason}")
    assert not bad, f"{len(bad)} dials outside the calling window: {bad[:5]}"


def _cap(d: Dial, law_only: bool = False) -> int | None:
    day = _day(d.dial_at)
    limits = [default_max_calls_24h(d.jurisdiction, st, day) for st in d.states]
    if not law_only:
        own = int(d.settings.get("max_calls_per_number_24h") or 0)
        limits.append(own or None)
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _over(times: list[datetime], t: datetime, limit: int) -> int:
    """Calls in the rolling 24 h ending at ``t`` (``t`` included), when over ``limit``; else 0."""
    n = sum(1 for x in times if t - DAY < x <= t)
    return n if n > limit else 0


async def assert_number_caps(conn: asyncpg.Connection, dials: Sequence[Dial]) -> None:
    """No number got more calls in a rolling 24 h than its cap: the campaign's own cap and the law of every
    state that applies (FL, OK, MD: 3), counting every campaign's calls to the number."""
    numbers = sorted({d.number for d in dials})
    times: dict[str, list[datetime]] = defaultdict(list)
    for r in await conn.fetch(
        "SELECT number, dial_at FROM dial_attempts WHERE number = ANY($1::text[]) AND dial_at IS NOT NULL",
        numbers,
    ):
        times[r["number"]].append(r["dial_at"])
    bad = []
    for d in dials:
        limit = _cap(d)
        if limit is not None and (n := _over(times[d.number], d.dial_at, limit)):
            states = ",".join(st for st in d.states if st) or "no state"
            bad.append(f"{d.call_id}: {d.number} ({states}) called {n} times in 24 h, cap {limit}")
    assert not bad, f"{len(bad)} dials over a per-number cap: {bad[:5]}"


async def people(conn: asyncpg.Connection) -> dict[int, int]:
    """Lead id -> person id: leads that share a number (in any campaign of the account) are one person,
    transitively (union-find over ``lead_numbers``)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    by_number: dict[str, list[int]] = defaultdict(list)
    for r in await conn.fetch("SELECT e164, lead_id FROM lead_numbers"):
        by_number[r["e164"]].append(int(r["lead_id"]))
        find(int(r["lead_id"]))
    for leads in by_number.values():
        for other in leads[1:]:
            parent[find(other)] = find(leads[0])
    return {lead: find(lead) for lead in parent}


async def assert_person_caps(conn: asyncpg.Connection, dials: Sequence[Dial]) -> None:
    """Where the law caps calls to a *person* (FL, OK, MD: 3 per rolling 24 h), the calls to all of the
    person's numbers count together: the lead's, and those of every lead sharing a number with it."""
    person = await people(conn)
    numbers_of: dict[int, set[str]] = defaultdict(set)
    for r in await conn.fetch("SELECT e164, lead_id FROM lead_numbers"):
        numbers_of[person[int(r["lead_id"])]].add(r["e164"])
    all_numbers = sorted({n for ns in numbers_of.values() for n in ns})
    by_number: dict[str, list[datetime]] = defaultdict(list)
    for r in await conn.fetch(
        "SELECT number, dial_at FROM dial_attempts WHERE number = ANY($1::text[]) AND dial_at IS NOT NULL",
        all_numbers,
    ):
        by_number[r["number"]].append(r["dial_at"])
    bad = []
    for d in dials:
        limit = _cap(d, law_only=True)
        if limit is None:
            continue
        p = person[d.lead_id]
        times = [t for n in numbers_of[p] for t in by_number[n]]
        if n := _over(times, d.dial_at, limit):
            bad.append(
                f"{d.call_id}: person of lead {d.lead_id} ({sorted(numbers_of[p])}) called {n} times in 24 h"
            )
    assert not bad, f"{len(bad)} dials over a per-person cap: {bad[:5]}"


def assert_abandonment_within_cap(dials: Sequence[Dial]) -> dict[str, tuple[int, int]]:
    """Per campaign, abandoned calls at most the cap (the campaign's, never above its jurisdiction's) of the
    live answers. Returns {campaign: (abandoned, live)}."""
    figures: dict[str, tuple[int, int]] = {}
    for cid, ds in itertools.groupby(sorted(dials, key=lambda d: d.campaign_id), key=lambda d: d.campaign_id):
        group = list(ds)
        live = [d for d in group if d.answer == "human"]
        abandoned = [d for d in live if d.outcome == "abandoned"]
        policy = abandon_policy(group[0].jurisdiction)
        cap = min(float(group[0].settings.get("abandon_cap") or policy.cap), policy.cap)
        assert len(abandoned) <= cap * len(live), (
            f"campaign {cid}: {len(abandoned)} abandoned of {len(live)} live answers (cap {cap:.0%})"
        )
        figures[cid] = (len(abandoned), len(live))
    return figures


async def assert_uk_quiet_after_abandoned(conn: asyncpg.Connection, dials: Sequence[Dial]) -> None:
    """Ofcom (persistent misuse policy, A1.58): no UK call to a number within 72 h after a call to it was
    abandoned, whatever campaign made either call (``dial_attempts`` and ``call_records`` both read)."""
    uk = [d for d in dials if d.jurisdiction == "UK"]
    if not uk:
        return
    numbers = sorted({d.number for d in uk})
    abandoned: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for r in await conn.fetch(
        """SELECT call_id, number, coalesce(end_at, answer_at, dial_at) AS at FROM dial_attempts
            WHERE number = ANY($1::text[]) AND outcome = 'abandoned'
           UNION
           SELECT call_id, called_number, coalesce(end_at, answer_at, dial_at) FROM call_records
            WHERE called_number = ANY($1::text[]) AND outcome = 'abandoned'""",
        numbers,
    ):
        if r["at"] is not None:
            abandoned[r["number"]].append((r["call_id"], r["at"]))
    bad = [
        f"{d.call_id} to {d.number} at {d.dial_at}: {cid} was abandoned at {at}"
        for d in uk
        for cid, at in abandoned[d.number]
        if cid != d.call_id and at <= d.dial_at < at + UK_ABANDON_QUIET
    ]
    assert not bad, f"{len(bad)} UK calls within 72 h of an abandoned call: {bad[:5]}"


async def wait_call_records_complete(
    conn: asyncpg.Connection, campaign_ids: Sequence[str], tries: int = 60
) -> None:
    """Every placed call has a complete call detail record (the campaign service writes them from the call
    events, a moment after the call ends)."""
    missing: list[Any] = []
    for _ in range(tries):
        missing = await conn.fetch(
            """SELECT d.call_id FROM dial_attempts d LEFT JOIN call_records c ON c.call_id = d.call_id
                WHERE d.campaign_id = ANY($1::text[]) AND d.dial_at IS NOT NULL
                  AND (c.call_id IS NULL OR c.end_at IS NULL)""",
            list(campaign_ids),
        )
        if not missing:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{len(missing)} dialled calls have no complete call detail record: {missing[:3]}")


def at_least(dials: Iterable[object], what: str, n: int = 1) -> None:
    """A scenario's precondition: ``n`` dials of a kind happened (else the invariants above proved nothing
    about it)."""
    got = list(dials)
    assert len(got) >= n, f"the run placed {len(got)} {what}, fewer than {n}: the scenario did not happen"
