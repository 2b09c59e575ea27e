"""PostgreSQL side of the DNC service: lists, entries (with history), consent, registry imports, audit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from outdial.dnc.audit import AuditEntry, AuditRecord
from outdial.dnc.gate import EntryInfo, ListInfo
from outdial.dnc.rnd import ConsentInfo, RndRow, StoredResult

#: Statement timeout for bulk work (registry imports, rebuilds): the pool's default is for OLTP queries.
BULK_TIMEOUT = 3600.0

_AUDIT_COLS = (
    "seq",
    "at",
    "actor",
    "action",
    "number",
    "campaign_id",
    "call_id",
    "result",
    "reason",
    "details",
    "prev_hash",
    "hash",
)


def _list(r: asyncpg.Record) -> ListInfo:
    return ListInfo(
        r["id"], r["kind"], r["name"], r["jurisdiction"], r["state"], r["campaign_id"], r["registry_date"]
    )


def audit_record(r: asyncpg.Record) -> AuditRecord:
    return AuditRecord(*(r[c] for c in _AUDIT_COLS))


# ------------------------------------------------------------------ lists


async def fetch_lists(conn: asyncpg.Connection) -> tuple[list[ListInfo], datetime | None]:
    """Every list, and when the index became dirty (None when it is in step with PostgreSQL)."""
    rows = await conn.fetch(
        "SELECT id, kind, name, jurisdiction, state, campaign_id, registry_date, "
        "(SELECT dirty_since FROM dnc_index_state WHERE id = 1) AS dirty FROM dnc_lists ORDER BY id"
    )
    dirty = rows[0]["dirty"] if rows else None
    return [_list(r) for r in rows], dirty


async def list_counts(conn: asyncpg.Connection) -> list[tuple[ListInfo, int, datetime]]:
    rows = await conn.fetch(
        """SELECT l.*, coalesce(c.n, 0) AS n FROM dnc_lists l
           LEFT JOIN (SELECT list_id, count(*) AS n FROM dnc_entries WHERE removed_at IS NULL
                      GROUP BY list_id) c ON c.list_id = l.id ORDER BY l.id"""
    )
    return [(_list(r), r["n"], r["updated_at"]) for r in rows]


async def ensure_list(conn: asyncpg.Connection, li: ListInfo) -> None:
    await conn.execute(
        """INSERT INTO dnc_lists (id, kind, name, jurisdiction, state, campaign_id)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING""",
        li.id,
        li.kind,
        li.name or li.id,
        li.jurisdiction,
        li.state,
        li.campaign_id,
    )


async def get_list(conn: asyncpg.Connection, list_id: str) -> ListInfo | None:
    r = await conn.fetchrow(
        "SELECT id, kind, name, jurisdiction, state, campaign_id, registry_date FROM dnc_lists WHERE id = $1",
        list_id,
    )
    return _list(r) if r else None


async def set_dirty(pool: asyncpg.Pool) -> None:
    """A change reached PostgreSQL but not the index (database time: compared with rebuild snapshots)."""
    await pool.execute(
        "UPDATE dnc_index_state SET dirty_since = coalesce(dirty_since, clock_timestamp()) WHERE id = 1"
    )


async def clear_dirty(conn: asyncpg.Connection, before: datetime) -> None:
    """Clear the flag if it was set before the rebuild's snapshot (a later failure keeps it set)."""
    await conn.execute(
        "UPDATE dnc_index_state SET dirty_since = NULL WHERE id = 1 AND dirty_since < $1", before
    )


# ------------------------------------------------------------------ entries


async def add_entries(
    conn: asyncpg.Connection,
    list_id: str,
    numbers: Sequence[str],
    *,
    source: str,
    actor: str,
    reason: str,
    at: datetime,
    expires_at: datetime | None,
) -> list[str]:
    """Numbers newly put on the list (those already on it are left alone)."""
    rows = await conn.fetch(
        """INSERT INTO dnc_entries (list_id, number, source, actor, reason, added_at, expires_at)
           SELECT $1, n, $3, $4, $5, $6, $7 FROM unnest($2::text[]) AS n
           ON CONFLICT (list_id, number) WHERE removed_at IS NULL DO NOTHING RETURNING number""",
        list_id,
        list(dict.fromkeys(numbers)),
        source,
        actor,
        reason,
        at,
        expires_at,
    )
    await conn.execute("UPDATE dnc_lists SET updated_at = $2 WHERE id = $1", list_id, at)
    return [r["number"] for r in rows]


async def remove_entries(
    conn: asyncpg.Connection, list_id: str, numbers: Sequence[str], *, actor: str, reason: str, at: datetime
) -> list[str]:
    rows = await conn.fetch(
        """UPDATE dnc_entries SET removed_at = $3, removed_by = $4, removed_reason = $5,
                  changed_at = clock_timestamp()
           WHERE list_id = $1 AND number = ANY($2::text[]) AND removed_at IS NULL RETURNING number""",
        list_id,
        list(numbers),
        at,
        actor,
        reason,
    )
    await conn.execute("UPDATE dnc_lists SET updated_at = $2 WHERE id = $1", list_id, at)
    return [r["number"] for r in rows]


async def expire_entries(
    conn: asyncpg.Connection, at: datetime, limit: int
) -> list[tuple[str, str, str, str, datetime]]:
    """Take entries whose expiry has passed off their lists (removed when they expired; history kept).
    Returns (list_id, list kind, campaign_id, number, expires_at) for at most ``limit`` entries."""
    rows = await conn.fetch(
        """WITH due AS (
               SELECT id FROM dnc_entries WHERE removed_at IS NULL AND expires_at <= $1
               ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
           UPDATE dnc_entries e SET removed_at = e.expires_at, removed_by = 'system:expiry',
                  removed_reason = 'expired', changed_at = clock_timestamp()
           FROM due, dnc_lists l WHERE e.id = due.id AND l.id = e.list_id
           RETURNING e.list_id, l.kind, l.campaign_id, e.number, e.expires_at""",
        at,
        limit,
    )
    return [(r["list_id"], r["kind"], r["campaign_id"], r["number"], r["expires_at"]) for r in rows]


async def entry_details(
    conn: asyncpg.Connection, numbers: Sequence[str], list_ids: Sequence[str]
) -> dict[tuple[str, str], EntryInfo]:
    rows = await conn.fetch(
        """SELECT list_id, number, added_at, expires_at FROM dnc_entries
           WHERE number = ANY($1::text[]) AND list_id = ANY($2::text[]) AND removed_at IS NULL""",
        list(numbers),
        list(list_ids),
    )
    return {(r["list_id"], r["number"]): EntryInfo(r["added_at"], r["expires_at"]) for r in rows}


async def active_consents(
    conn: asyncpg.Connection, numbers: Sequence[str], campaign_id: str, at: datetime
) -> dict[str, list[ConsentInfo]]:
    """The consents in force at ``at`` for each number (active, not expired, global or this campaign's), with the
    date each was obtained: one query for the whole batch."""
    rows = await conn.fetch(
        """SELECT id, number, campaign_id, kind, obtained_at, granted_at, ebr_basis FROM dnc_consent
           WHERE number = ANY($1::text[])
           AND granted_at <= $3 AND (revoked_at IS NULL OR revoked_at > $3)
           AND (expires_at IS NULL OR expires_at > $3) AND (campaign_id = '' OR campaign_id = $2)
           ORDER BY id""",
        list(numbers),
        campaign_id,
        at,
    )
    out: dict[str, list[ConsentInfo]] = {}
    for r in rows:
        out.setdefault(r["number"], []).append(
            ConsentInfo(
                r["id"],
                r["campaign_id"],
                r["kind"],
                r["obtained_at"] or r["granted_at"],
                r["obtained_at"] is not None,
                r["ebr_basis"],
            )
        )
    return out


async def grant_consent(
    conn: asyncpg.Connection,
    number: str,
    kind: str,
    campaign_id: str,
    evidence: str,
    actor: str,
    at: datetime,
    expires_at: datetime | None,
    *,
    obtained_at: datetime | None,
    obtained_via: str,
    text_agreed: str = "",
    ip_address: str = "",
    recording_ref: str = "",
    ebr_basis: str = "",
) -> int:
    """The new consent's id."""
    v: int = await conn.fetchval(
        """INSERT INTO dnc_consent (number, kind, campaign_id, evidence, actor, granted_at, expires_at,
                                    obtained_at, obtained_via, text_agreed, ip_address, recording_ref, ebr_basis)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id""",
        number,
        kind,
        campaign_id,
        evidence,
        actor,
        at,
        expires_at,
        obtained_at,
        obtained_via,
        text_agreed,
        ip_address,
        recording_ref,
        ebr_basis,
    )
    return v


async def revoke_consent(
    conn: asyncpg.Connection, number: str, campaign_id: str | None, actor: str, at: datetime
) -> int:
    """Revoke consent for a number (every campaign when ``campaign_id`` is None)."""
    res = await conn.execute(
        """UPDATE dnc_consent SET revoked_at = $3, revoked_by = $4
           WHERE number = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR campaign_id = $2)""",
        number,
        campaign_id,
        at,
        actor,
    )
    return int(res.split()[-1])


# ------------------------------------------------------------------ Reassigned Numbers Database


async def rnd_results(
    conn: asyncpg.Connection, numbers: Sequence[str], at: datetime | None = None
) -> dict[str, list[StoredResult]]:
    """The RND answers stored for each number (imported at or before ``at`` when given): one query."""
    rows = await conn.fetch(
        """SELECT number, import_id, queried_date, answer, disconnect_date, imported_at FROM dnc_rnd_results
           WHERE number = ANY($1::text[]) AND ($2::timestamptz IS NULL OR imported_at <= $2)
           ORDER BY number, queried_date DESC, id DESC""",
        list(numbers),
        at,
    )
    out: dict[str, list[StoredResult]] = {}
    for r in rows:
        out.setdefault(r["number"], []).append(
            StoredResult(
                r["import_id"], r["queried_date"], r["answer"], r["disconnect_date"], r["imported_at"]
            )
        )
    return out


async def import_rnd(
    conn: asyncpg.Connection,
    rows: Sequence[RndRow],
    *,
    actor: str,
    source: str,
    sha256: str,
    data_rows: int,
    rejected: int,
    at: datetime,
) -> tuple[int, int]:
    """Record the import and store the rows it has that are not stored yet (inside the caller's
    transaction). Returns (import id, rows stored now)."""
    import_id: int = await conn.fetchval(
        """INSERT INTO dnc_rnd_imports (imported_at, actor, source, sha256, rows, rejected)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        at,
        actor,
        source,
        sha256,
        data_rows,
        rejected,
    )
    stored = 0
    for i in range(0, len(rows), 10_000):
        part = rows[i : i + 10_000]
        res = await conn.execute(
            """INSERT INTO dnc_rnd_results (import_id, number, queried_date, answer, disconnect_date, imported_at)
               SELECT $1, n, q, a, d, $6 FROM unnest($2::text[], $3::date[], $4::text[], $5::date[]) AS t(n, q, a, d)
               ON CONFLICT (number, queried_date, answer, coalesce(disconnect_date, 'infinity'::date))
               DO NOTHING""",
            import_id,
            [r.number for r in part],
            [r.queried_date for r in part],
            [r.answer for r in part],
            [r.disconnect_date for r in part],
            at,
            timeout=BULK_TIMEOUT,
        )
        stored += int(res.split()[-1])
    return import_id, stored


# ------------------------------------------------------------------ registry import


async def import_staged(
    conn: asyncpg.Connection,
    list_id: str,
    mode: str,
    rows: Callable[[Callable[[list[tuple[str, str]]], Awaitable[None]]], Awaitable[None]],
    *,
    actor: str,
    source: str,
    at: datetime,
) -> tuple[int, int, list[str], list[str]]:
    """Stream (op, number) rows into a staging table with COPY, then apply them to the list in one
    transaction (the caller's). FULL replaces the list's contents, CHANGES applies "+"/"-" rows.
    Returns (added, removed, numbers added, numbers removed); the number lists only for CHANGES (a full
    import rebuilds the index instead)."""
    await conn.execute(
        "CREATE TEMP TABLE dnc_staging (op char(1) NOT NULL, number text NOT NULL) ON COMMIT DROP"
    )

    async def sink(batch: list[tuple[str, str]]) -> None:
        await conn.copy_records_to_table(
            "dnc_staging", records=batch, columns=("op", "number"), timeout=BULK_TIMEOUT
        )

    await rows(sink)
    await conn.execute("CREATE INDEX ON dnc_staging (number)", timeout=BULK_TIMEOUT)
    await conn.execute("ANALYZE dnc_staging", timeout=BULK_TIMEOUT)
    if mode == "full":
        removed_n = await conn.execute(
            """UPDATE dnc_entries e SET removed_at = $2, removed_by = $3, removed_reason = 'registry full import',
                      changed_at = clock_timestamp()
               WHERE e.list_id = $1 AND e.removed_at IS NULL
                 AND NOT EXISTS (SELECT 1 FROM dnc_staging s WHERE s.number = e.number)
               """,
            list_id,
            at,
            actor,
            timeout=BULK_TIMEOUT,
        )
        added_n = await conn.execute(
            """INSERT INTO dnc_entries (list_id, number, source, actor, reason, added_at)
               SELECT DISTINCT $1, s.number, $2, $3, 'registry', $4::timestamptz FROM dnc_staging s
               WHERE NOT EXISTS (SELECT 1 FROM dnc_entries e WHERE e.list_id = $1 AND e.number = s.number
                                 AND e.removed_at IS NULL)
               ON CONFLICT (list_id, number) WHERE removed_at IS NULL DO NOTHING""",
            list_id,
            source,
            actor,
            at,
            timeout=BULK_TIMEOUT,
        )
        return int(added_n.split()[-1]), int(removed_n.split()[-1]), [], []
    else:
        removed = await conn.fetch(
            """UPDATE dnc_entries e SET removed_at = $2, removed_by = $3, removed_reason = 'registry deletion',
                      changed_at = clock_timestamp()
               FROM (SELECT DISTINCT number FROM dnc_staging WHERE op = '-') s
               WHERE e.list_id = $1 AND e.removed_at IS NULL AND e.number = s.number RETURNING e.number""",
            list_id,
            at,
            actor,
            timeout=BULK_TIMEOUT,
        )
        added = await conn.fetch(
            """INSERT INTO dnc_entries (list_id, number, source, actor, reason, added_at)
               SELECT DISTINCT $1, s.number, $2, $3, 'registry', $4::timestamptz FROM dnc_staging s
               WHERE s.op = '+'
               ON CONFLICT (list_id, number) WHERE removed_at IS NULL DO NOTHING RETURNING number""",
            list_id,
            source,
            actor,
            at,
            timeout=BULK_TIMEOUT,
        )
    return len(added), len(removed), [r["number"] for r in added], [r["number"] for r in removed]


async def record_import(
    conn: asyncpg.Connection,
    list_id: str,
    mode: str,
    downloaded_at: datetime,
    at: datetime,
    actor: str,
    lines: int,
    added: int,
    removed: int,
    invalid: int,
) -> None:
    await conn.execute(
        """INSERT INTO dnc_registry_imports (list_id, mode, downloaded_at, imported_at, actor, lines, added,
                  removed, invalid) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        list_id,
        mode,
        downloaded_at,
        at,
        actor,
        lines,
        added,
        removed,
        invalid,
    )
    await conn.execute(
        """UPDATE dnc_lists SET updated_at = $2,
                  registry_date = CASE WHEN kind IN ('national', 'wireless')
                                        AND (registry_date IS NULL OR registry_date < $3)
                                       THEN $3 ELSE registry_date END
           WHERE id = $1""",
        list_id,
        at,
        downloaded_at,
    )


# ------------------------------------------------------------------ index rebuild


async def db_now(conn: asyncpg.Connection) -> datetime:
    v: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return v


async def current_numbers(conn: asyncpg.Connection, list_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT number FROM dnc_entries WHERE list_id = $1 AND removed_at IS NULL",
        list_id,
        timeout=BULK_TIMEOUT,
    )
    return [r["number"] for r in rows]


async def copy_digits(
    conn: asyncpg.Connection, list_id: str, output: Callable[[bytes], Awaitable[None]]
) -> None:
    """Stream a list's current numbers (digits without "+", sorted) to ``output``."""
    await conn.copy_from_query(
        "SELECT substr(number, 2) FROM dnc_entries WHERE list_id = $1 AND removed_at IS NULL ORDER BY number",
        list_id,
        output=output,
        timeout=BULK_TIMEOUT,
    )


async def changed_since(conn: asyncpg.Connection, since: datetime) -> list[tuple[str, str, bool]]:
    """(list_id, number, currently present) for every entry changed at or after ``since``."""
    rows = await conn.fetch(
        """SELECT DISTINCT c.list_id, c.number,
                  EXISTS (SELECT 1 FROM dnc_entries e WHERE e.list_id = c.list_id AND e.number = c.number
                          AND e.removed_at IS NULL) AS present
           FROM dnc_entries c WHERE c.changed_at >= $1""",
        since,
        timeout=BULK_TIMEOUT,
    )
    return [(r["list_id"], r["number"], r["present"]) for r in rows]


# ------------------------------------------------------------------ audit


async def append_audit(conn: asyncpg.Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
    """Append to the chain (inside the caller's transaction) in one round trip: ``dnc_audit_append`` (a
    SECURITY DEFINER function, migration 0202) locks the head, assigns seq, time and prev_hash, hashes,
    inserts and moves the head. The service's role can do nothing else to the log."""
    if not entries:
        return []
    rows = await conn.fetch(
        "SELECT seq, at, prev_hash, hash FROM dnc_audit_append($1, $2, $3, $4, $5, $6, $7, $8)",
        [e.actor for e in entries],
        [e.action for e in entries],
        [e.number for e in entries],
        [e.campaign_id for e in entries],
        [e.call_id for e in entries],
        [e.result for e in entries],
        [e.reason for e in entries],
        [e.details for e in entries],
    )
    return [
        AuditRecord.of(r["seq"], r["at"], e, r["prev_hash"], r["hash"])
        for r, e in zip(rows, entries, strict=True)
    ]


async def append_audit_tx(pool: asyncpg.Pool, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
    async with pool.acquire() as conn:
        return await append_audit(conn, entries)


@dataclass
class AuditFilter:
    number: str = ""
    campaign_id: str = ""
    since: datetime | None = None
    until: datetime | None = None
    actor: str = ""
    action: str = ""
    result: str = ""


async def query_audit(
    conn: asyncpg.Connection, f: AuditFilter, after_seq: int, limit: int
) -> list[AuditRecord]:
    where = ["seq > $1"]
    args: list[Any] = [after_seq]

    def add(cond: str, value: Any) -> None:
        args.append(value)
        where.append(cond.format(f"${len(args)}"))

    if f.number:
        add("number = {}", f.number)
    if f.campaign_id:
        add("campaign_id = {}", f.campaign_id)
    if f.since is not None:
        add("at >= {}", f.since)
    if f.until is not None:
        add("at < {}", f.until)
    if f.actor:
        add("actor = {}", f.actor)
    if f.action:
        add("action = {}", f.action)
    if f.result:
        add("result = {}", f.result)
    args.append(limit)
    sql = (
        f"SELECT {', '.join(_AUDIT_COLS)} FROM dnc_audit WHERE {' AND '.join(where)} "
        f"ORDER BY seq LIMIT ${len(args)}"
    )
    return [audit_record(r) for r in await conn.fetch(sql, *args)]


async def iter_audit(conn: asyncpg.Connection, from_seq: int) -> AsyncIterator[AuditRecord]:
    """Every record from ``from_seq`` in stored order (a server-side cursor; call inside a transaction)."""
    async for r in conn.cursor(
        f"SELECT {', '.join(_AUDIT_COLS)} FROM dnc_audit WHERE seq >= $1 ORDER BY seq",
        from_seq,
        prefetch=5000,
    ):
        yield audit_record(r)


async def audit_head(conn: asyncpg.Connection) -> tuple[int, str, datetime | None]:
    """(seq, hash, time) of the chain's last record."""
    r = await conn.fetchrow("SELECT seq, hash, at FROM dnc_audit_head WHERE id = 1")
    assert r is not None
    return int(r["seq"]), str(r["hash"]), r["at"]


async def audit_before(conn: asyncpg.Connection, seq: int) -> tuple[int, str, datetime] | None:
    r = await conn.fetchrow(
        "SELECT seq, hash, at FROM dnc_audit WHERE seq < $1 ORDER BY seq DESC LIMIT 1", seq
    )
    return (int(r["seq"]), str(r["hash"]), r["at"]) if r else None


# ------------------------------------------------------------------ explain


async def lists_at(conn: asyncpg.Connection, at: datetime) -> list[ListInfo]:
    """Lists with their registry date as it was at ``at``."""
    rows = await conn.fetch(
        """SELECT l.id, l.kind, l.name, l.jurisdiction, l.state, l.campaign_id,
                  (SELECT max(i.downloaded_at) FROM dnc_registry_imports i
                   WHERE i.list_id = l.id AND i.imported_at <= $1) AS registry_date
           FROM dnc_lists l ORDER BY l.id""",
        at,
    )
    return [_list(r) for r in rows]


async def entries_at(conn: asyncpg.Connection, number: str, at: datetime) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            """SELECT list_id, added_at, expires_at, source, actor, reason FROM dnc_entries
               WHERE number = $1 AND added_at <= $2 AND (removed_at IS NULL OR removed_at > $2)""",
            number,
            at,
        )
    )


async def audit_for_number(conn: asyncpg.Connection, number: str, at: datetime) -> list[AuditRecord]:
    """The nearest dial-time decision at or before ``at`` and the list changes for the number before it."""
    check = await conn.fetch(
        f"""SELECT {", ".join(_AUDIT_COLS)} FROM dnc_audit WHERE number = $1 AND action = 'check'
            AND at <= $2 ORDER BY seq DESC LIMIT 1""",
        number,
        at,
    )
    changes = await conn.fetch(
        f"""SELECT {", ".join(_AUDIT_COLS)} FROM dnc_audit WHERE number = $1 AND action <> 'check'
            AND at <= $2 ORDER BY seq DESC LIMIT 20""",
        number,
        at,
    )
    recs = [audit_record(r) for r in (*check, *changes)]
    return sorted(recs, key=lambda r: r.seq)
