"""Who is one person, and the dials made to them: PostgreSQL facts behind the per-person caps, read by the
campaign feeder and the pacing service's dial-time gate alike.

**The person key.** The state caps (Fla. Stat. 501.059(8)(a), Okla. Stat. tit. 15 s.775C.4, Md. Code Com.
Law s.14-4503: 3 calls per rolling 24 h) count calls to a *person*, not to a number. A lead is a person with
one or more numbers; two leads that share a number (in any campaign of this installation: the "account") are
taken for the same person, and so, by the same reasoning, is every lead linked to them through further
shared numbers. The person of a dial is therefore the connected component of the dialled number in the graph
of leads and their numbers (``lead_numbers`` across all campaigns), and the count for a dial is every dial
in the rolling period to any number of that component. Counting the whole component rather than one hop
from the lead only over-counts (never under-counts) when two people share a household line: fail closed.
A number that no lead holds (a test dial, a lead deleted since) is a person with that one number.

**The facts.** The count comes from ``dial_attempts`` (every call the pacing service dialled, written
before the call leaves: ``dial_at`` is set in ``mark_dialed``) - PostgreSQL, so a Redis that lost its data
does not loosen a cap. Callers may add what they know besides (the feeder adds ``call_records`` and the
Redis per-number sets): a dial is counted once, by its call id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TypeAlias

import asyncpg

__all__ = ["PersonFactsUnavailable", "dial_times", "person_dials", "person_numbers"]

Conn: TypeAlias = asyncpg.Pool | asyncpg.Connection


class PersonFactsUnavailable(Exception):
    """PostgreSQL could not say who the person is or what they were called: callers must not dial."""


# The component of each seed number: (seed, number) pairs, walking number -> leads holding it -> their
# numbers until nothing new is found (UNION drops pairs already seen, so the walk ends).
_COMPONENT = """
WITH RECURSIVE person(seed, e164) AS (
    SELECT s, s FROM unnest($1::text[]) AS s
  UNION
    SELECT p.seed, m2.e164
      FROM person p
      JOIN lead_numbers m1 ON m1.e164 = p.e164
      JOIN lead_numbers m2 ON m2.lead_id = m1.lead_id
)
SELECT seed, e164 FROM person
"""


async def person_numbers(conn: Conn, numbers: Iterable[str]) -> dict[str, frozenset[str]]:
    """Every number of the person behind each of ``numbers`` (itself included), across all campaigns."""
    seeds = sorted({n for n in numbers if n})
    out: dict[str, set[str]] = {n: {n} for n in seeds}
    if seeds:
        for r in await conn.fetch(_COMPONENT, seeds):
            out[r["seed"]].add(r["e164"])
    return {k: frozenset(v) for k, v in out.items()}


async def dial_times(conn: Conn, numbers: Sequence[str], since: datetime) -> dict[str, dict[str, datetime]]:
    """number -> {call id: dial time} of the calls dialled to ``numbers`` after ``since`` (any campaign)."""
    out: dict[str, dict[str, datetime]] = {n: {} for n in numbers}
    if numbers:
        rows = await conn.fetch(
            # A call is dialled within a day of its gate decision: the gate time bounds the calls the view
            # folds (index dial_attempt_gates_number_gate, migration 0412).
            """SELECT number, call_id, dial_at FROM dial_attempts
                WHERE number = ANY($1::text[]) AND gate_at > $2::timestamptz - interval '1 day'
                  AND dial_at IS NOT NULL AND dial_at > $2""",
            list(numbers),
            since,
        )
        for r in rows:
            out.setdefault(r["number"], {})[r["call_id"]] = r["dial_at"]
    return out


async def person_dials(
    conn: Conn, numbers: Sequence[str], since: datetime
) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, datetime]]]:
    """:func:`person_numbers` of ``numbers`` and the :func:`dial_times` of every number of those persons.
    Raises :class:`PersonFactsUnavailable` when PostgreSQL cannot answer."""
    try:
        persons = await person_numbers(conn, numbers)
        every = sorted(set().union(*persons.values())) if persons else []
        return persons, await dial_times(conn, every, since)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise PersonFactsUnavailable(type(exc).__name__) from None
