"""UploadLeads: stream a CSV into a campaign, all rows or none, duplicates stored once.

Memory stays bounded: the stream is parsed into batches of records (two queued at most); a writer task
that owns the connection has each batch normalised (in worker processes for files bigger than one batch)
into COPY text and COPYs it inside one transaction: leads straight into ``leads`` (uncommitted, invisible
to others), their numbers into a temporary staging table. A set-based statement then moves the staged
numbers into ``lead_numbers`` with ``ON CONFLICT DO NOTHING`` on the unique (campaign_id, e164) key (the
first row of the file wins) and deletes the leads left without a number. Only the holder of the
campaign's transaction advisory lock inserts into ``lead_numbers``: the first upload of a campaign takes
it at once and settles each batch as it goes; a concurrent upload of the same campaign stages everything
and settles once it gets the lock (after the first one committed or rolled back), so numbers already
stored count as duplicates and no two uploads wait on each other's rows (no deadlock).
A malformed file raises before the commit, so nothing of it is kept.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from outdial.campaign.csvstream import CsvStream, MalformedFile
from outdial.campaign.leads import Columns, MappingError, Parser, find_columns, normalise_row
from outdial.campaign.store import new_id
from outdial.core.errors import InvalidArgument
from outdial.rules.numbers import parse_number_fast


@dataclass
class UploadSummary:
    list_id: str
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    numbers_accepted: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    committed: bool = False


_LEAD_COLUMNS = [
    "id",
    "campaign_id",
    "list_id",
    "row_number",
    "first_name",
    "last_name",
    "zip",
    "state",
    "fields",
    "created_at",
    "updated_at",
]


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# One translate per line: values are joined with NUL (never in a lead file: CsvStream refuses NUL, and
# json.dumps writes it as \u0000), which becomes the column separator while the values are escaped.
_LINE_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": "\t"})


def _copy_text(value: str) -> str:
    """A value in PostgreSQL's COPY text format (backslash, tab, newline and CR escaped)."""
    return value.translate(_COPY_ESCAPES)


@functools.lru_cache(maxsize=4096)
def _pg_array(items: tuple[str, ...]) -> str:
    """A text[] literal in COPY text format."""
    return _copy_text(
        "{" + ",".join('"' + z.replace("\\", "\\\\").replace('"', '\\"') + '"' for z in items) + "}"
    )


@dataclass
class _Encoded:
    """One normalised batch, ready for COPY (text format): lead rows, staged number rows, rejects."""

    rows: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    leads: int = 0
    lead_copy: bytes = b""
    number_copy: bytes = b""
    rejects: list[tuple[Any, ...]] = field(default_factory=list)


def _encode_batch(
    rows: list[tuple[int, list[str]]],
    cols: Columns,
    region: str,
    jurisdiction: str,
    parser: Parser,
    ids: list[int],
    cid: str,
    list_id: str,
    now: str,
) -> _Encoded:
    """Normalise ``rows`` (``normalise_row``, the same answers as ever) and encode them as COPY text. Runs
    in a worker process for large files; pure (no I/O). ``ids`` holds one fresh lead id per row."""
    out = _Encoded(rows=len(rows))
    reasons: Counter[str] = Counter()
    lead_lines: list[str] = []
    number_lines: list[str] = []
    head = f"\x00{cid}\x00{list_id}\x00"
    tail = f"\x00{now}\x00{now}"
    dumps = json.dumps
    for (n, r), lid in zip(rows, ids, strict=True):
        lead = normalise_row(n, r, cols, default_region=region, jurisdiction=jurisdiction, parser=parser)
        for rj in lead.rejects:
            out.rejects.append((list_id, rj.row_number, rj.field, rj.raw_value, rj.reason, rj.detail))
        if not lead.numbers:
            out.rejected += 1
            reasons[lead.rejects[0].reason] += 1
            continue
        out.leads += 1
        lead_lines.append(
            f"{lid}{head}{n}\x00{lead.first_name}\x00{lead.last_name}\x00{lead.zip}\x00{lead.state}\x00"
            f"{dumps(lead.fields)}{tail}".translate(_LINE_ESCAPES)
        )
        for pos, (e164, ntype, zones) in enumerate(lead.numbers):
            # E.164 digits and phonenumbers' type names need no escaping.
            number_lines.append(f"{lid}\t{n}\t{pos}\t{e164}\t{ntype}\t{_pg_array(zones)}\n")
    out.reasons = dict(reasons)
    out.lead_copy = ("\n".join(lead_lines) + "\n").encode() if lead_lines else b""
    out.number_copy = "".join(number_lines).encode()
    return out


async def _once(data: bytes) -> AsyncIterator[bytes]:
    """COPY source for asyncpg (plain bytes would be taken for a file name)."""
    yield data


# Normalisation of large files runs in worker processes (both cores; the service's event loop keeps the
# GIL for gRPC, CSV parsing and COPY). Started on first use with "spawn" (forking a process that runs
# gRPC threads is unsafe) and shared by every upload of the process.
_POOL: concurrent.futures.ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ProcessPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ProcessPoolExecutor(
                max_workers=max(1, min(2, os.cpu_count() or 1)),
                mp_context=multiprocessing.get_context("spawn"),
            )
            atexit.register(_POOL.shutdown, wait=True, cancel_futures=True)
        return _POOL


# Advisory lock namespace of "inserting into lead_numbers for a campaign" (second key: hash of the id).
_LOCK_NS = 0x0D1A1


class LeadUpload:
    def __init__(
        self,
        conn: asyncpg.Connection,
        *,
        campaign_id: str,
        jurisdiction: str,
        default_region: str,
        mapping: Mapping[str, str],
        file_name: str,
        request_id: str,
        actor: str,
        now: datetime,
        max_bytes: int,
        max_line: int,
        batch_rows: int,
        max_columns: int = 1000,
        parser: Parser = parse_number_fast,
        progress: Callable[[int], None] | None = None,
        statement_timeout_s: float = 3600.0,
    ) -> None:
        # The pool's 30 s command timeout is for interactive queries; the set-based statements of a
        # multi-million-row upload take longer.
        self.timeout = statement_timeout_s
        self.conn = conn
        self.cid = campaign_id
        self.jurisdiction = jurisdiction
        self.region = default_region
        self.mapping = dict(mapping)
        self.file_name = file_name
        self.request_id = request_id
        self.actor = actor
        self.now = now
        self.csv = CsvStream(max_bytes=max_bytes, max_line=max_line)
        self.batch_rows = batch_rows
        self.max_columns = max_columns
        self.parser = parser
        self.cols: Columns | None = None
        self.summary = UploadSummary(list_id=new_id())
        self.reasons: Counter[str] = Counter()
        self.staged_leads = 0
        self._early = False
        self._writer: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[tuple[list[tuple[int, list[str]]], bool] | None] = asyncio.Queue(maxsize=2)
        self.sha = hashlib.sha256()
        self.record_no = 1  # the header is row 1, as a spreadsheet shows it
        self._pending: list[tuple[int, list[str]]] = []
        self._inflight: collections.deque[asyncio.Future[_Encoded]] = collections.deque()
        self._depth = 2
        self._batches = 0
        aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        self._now_text = aware.isoformat()

    async def run(self, chunks: AsyncIterator[bytes]) -> UploadSummary:
        try:
            return await self._run(chunks)
        finally:
            self._cancel()

    async def _run(self, chunks: AsyncIterator[bytes]) -> UploadSummary:
        async with self.conn.transaction():
            await self._prepare()
            # The connection belongs to the writer task from here until the final batch is stored, so
            # reading and parsing the stream overlaps PostgreSQL's work.
            self._writer = asyncio.create_task(self._write())
            try:
                try:
                    async for chunk in chunks:
                        self.sha.update(chunk)
                        await self._take(self.csv.feed(chunk))
                    await self._take(self.csv.finish())
                except MalformedFile as exc:
                    raise InvalidArgument(str(exc), field="file", error_id=exc.error_id) from None
                if self.cols is None:
                    raise InvalidArgument(
                        "the file is empty (no header line)", field="file", error_id="malformed_file"
                    )
                await self._flush(final=True)
            except BaseException:
                await self._stop_writer()
                raise
            await self._commit()
        self.summary.committed = True
        return self.summary

    async def _stop_writer(self) -> None:
        w = self._writer
        if w is None:
            return
        if not w.done():
            w.cancel()
        with contextlib.suppress(BaseException):
            await w  # its error (if any) is retrieved; the caller's own error is what is raised

    async def _prepare(self) -> None:
        # The final dedupe sorts and hashes every staged number: with the default 4 MB it spills to disk
        # (external merge). Bounded, and for this transaction only.
        await self.conn.execute("SET LOCAL work_mem = '64MB'")
        # Only the holder of this campaign's lock inserts into lead_numbers, so uploads never wait on each
        # other's rows in two orders (no deadlock). The first upload of a campaign takes it now and settles
        # each batch as soon as it is COPY'd (the work overlaps the streaming); one that finds it taken
        # streams into staging and waits for the lock only for its final insert.
        self._early = bool(
            await self.conn.fetchval("SELECT pg_try_advisory_xact_lock($1, hashtext($2))", _LOCK_NS, self.cid)
        )
        await self.conn.execute(
            """CREATE TEMP TABLE stage_numbers (lead_id bigint, row_number bigint, position smallint, e164 text,
                   number_type text, timezones text[]) ON COMMIT DROP;"""
        )
        await self.conn.execute(
            """INSERT INTO lead_lists (id, campaign_id, file_name, request_id, uploaded_by, uploaded_at)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            self.summary.list_id,
            self.cid,
            self.file_name,
            self.request_id,
            self.actor,
            self.now,
        )

    async def _take(self, records: list[list[str]]) -> None:
        for rec in records:
            if self.cols is None:
                if len(rec) > self.max_columns:
                    raise InvalidArgument(
                        f"the header has {len(rec)} columns; at most {self.max_columns} "
                        "(OUTDIAL_CAMPAIGN_UPLOAD_MAX_COLUMNS)",
                        field="file",
                        error_id="too_many_columns",
                    )
                try:
                    self.cols = find_columns(rec, self.mapping)
                except MappingError as exc:
                    raise InvalidArgument(
                        str(exc), field="column_mapping", error_id="no_phone_column"
                    ) from None
                continue
            self.record_no += 1
            if not any(rec):
                continue  # blank line (or only delimiters)
            self._pending.append((self.record_no, rec))
            if len(self._pending) >= self.batch_rows:
                await self._flush()

    async def _flush(self, final: bool = False) -> None:
        """Hand the pending rows to the writer task (a queue of two batches: memory stays bounded); with
        ``final``, wait until everything is stored."""
        if self._pending and self.cols is not None:
            rows, self._pending = self._pending, []
            await self._put((rows, final and not self._batches))
            self._batches += 1
        if final:
            await self._put(None)
            assert self._writer is not None
            await self._writer

    async def _put(self, item: tuple[list[tuple[int, list[str]]], bool] | None) -> None:
        assert self._writer is not None
        if self._writer.done():
            self._writer.result()  # raises the writer's error
            raise RuntimeError("the upload writer stopped early")
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, self._writer}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self._writer.result()
            raise RuntimeError("the upload writer stopped early")

    async def _write(self) -> None:
        """Normalise batches (in worker processes once the file is bigger than one batch) while earlier
        ones are COPY'd; at most ``_depth`` batches are in flight."""
        while True:
            item = await self._queue.get()
            if item is not None:
                assert self.cols is not None  # batches follow the header
                rows, small = item
                ids: list[int] = await self.conn.fetchval(
                    "SELECT array_agg(nextval('leads_id_seq')) FROM generate_series(1, $1)", len(rows)
                )
                args = (rows, self.cols, self.region, self.jurisdiction, self.parser, ids, self.cid,
                        self.summary.list_id, self._now_text)  # fmt: skip
                fut: asyncio.Future[_Encoded]
                if small:
                    fut = asyncio.ensure_future(asyncio.to_thread(_encode_batch, *args))
                else:
                    fut = asyncio.get_running_loop().run_in_executor(_pool(), _encode_batch, *args)
                self._inflight.append(fut)
            try:
                while self._inflight and (item is None or len(self._inflight) > self._depth):
                    await self._store(await self._inflight.popleft())
            except BaseException:
                self._cancel()
                raise
            if item is None:
                return

    def _cancel(self) -> None:
        while self._inflight:
            self._inflight.popleft().cancel()

    async def _store(self, enc: _Encoded) -> None:
        s = self.summary
        s.rows += enc.rows
        s.rejected += enc.rejected
        self.reasons.update(enc.reasons)
        self.staged_leads += enc.leads
        if enc.leads:
            await self.conn.copy_to_table(
                "leads",
                source=_once(enc.lead_copy),
                columns=_LEAD_COLUMNS,
                format="text",
                timeout=self.timeout,
            )
            await self.conn.copy_to_table(
                "stage_numbers", source=_once(enc.number_copy), format="text", timeout=self.timeout
            )
            if self._early:
                await self._settle()
                await self.conn.execute("TRUNCATE stage_numbers")
        if enc.rejects:
            await self.conn.copy_records_to_table(
                "lead_rejects",
                records=enc.rejects,
                columns=["list_id", "row_number", "field", "raw_value", "reason", "detail"],
                timeout=self.timeout,
            )

    async def _settle(self) -> None:
        """Move the staged numbers into ``lead_numbers``: per number its first row wins (file order), one
        already in the campaign is a duplicate; leads left without any number are deleted (every lead
        was COPY'd straight into ``leads``, uncommitted so invisible to others)."""
        row = await self.conn.fetchrow(
            """WITH ins AS (
                 INSERT INTO lead_numbers (campaign_id, e164, lead_id, position, number_type, timezones)
                 SELECT DISTINCT ON (e164) $1, e164, lead_id, position, number_type, timezones
                   FROM stage_numbers ORDER BY e164, row_number, position
                 ON CONFLICT (campaign_id, e164) DO NOTHING
                 RETURNING lead_id),
               got AS (SELECT DISTINCT lead_id FROM ins),
               dropped AS (
                 DELETE FROM leads l
                  WHERE l.id = ANY (ARRAY(SELECT lead_id FROM stage_numbers EXCEPT SELECT lead_id FROM got))
                 RETURNING 1)
               SELECT (SELECT count(*) FROM got) AS leads, (SELECT count(*) FROM ins) AS numbers,
                      (SELECT count(*) FROM dropped) AS dropped""",
            self.cid,
            timeout=self.timeout,
        )
        assert row is not None
        self.summary.accepted += int(row["leads"])
        self.summary.numbers_accepted += int(row["numbers"])

    async def _commit(self) -> None:
        if not self._early:
            await self.conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_NS, self.cid, timeout=self.timeout
            )
            await self._settle()
        s = self.summary
        s.duplicates = self.staged_leads - s.accepted
        s.rejected_by_reason = dict(self.reasons)
        await self.conn.execute(
            """UPDATE lead_lists SET sha256 = $2, rows = $3, accepted = $4, duplicates = $5, rejected = $6,
                      numbers_accepted = $7, rejected_by_reason = $8::jsonb WHERE id = $1""",
            s.list_id,
            self.sha.hexdigest(),
            s.rows,
            s.accepted,
            s.duplicates,
            s.rejected,
            s.numbers_accepted,
            json.dumps(s.rejected_by_reason),
        )
