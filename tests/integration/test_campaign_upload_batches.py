"""A file of many batches (normalised in worker processes, COPY'd as text) stores exactly what a
one-batch upload (normalised in a thread) stores: same summary, same leads, fields, numbers and zones,
text with tabs, backslashes, quotes and newlines intact."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg

from outdial.campaign.upload import LeadUpload

HEADER = ["first name", "Last Name", "Phone", "cell", "zip", "state", "notes", "timezone"]


def make_file() -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(HEADER)
    odd = ["tab\there", "back\\slash", 'say "hi"', "two\nlines", "cr\rhere", "=SUM(A1)", "émile ☎"]
    for i in range(120):
        phone = [f"(212) 555-{i % 90:04d}", "n/a", "1-800-555-0100", f"+1 808 555 {i:04d}", ""][i % 5]
        cell = f"415.555.{i:04d}" if i % 3 else ""
        w.writerow(
            [odd[i % len(odd)], f"L{i}", phone, cell, ["96813", "10001", "", "xx"][i % 4],
             ["NY", "California", "", "HI"][i % 4], odd[(i + 3) % len(odd)],
             ["", "America/Chicago", "Not/AZone"][i % 3]]
        )  # fmt: skip
    return out.getvalue().encode()


async def upload(pg: asyncpg.Pool, cid: str, data: bytes, batch_rows: int) -> tuple[object, list[object]]:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 333):
            yield data[i : i + 333]

    async with pg.acquire() as conn:
        up = LeadUpload(
            conn,
            campaign_id=cid,
            jurisdiction="US",
            default_region="US",
            mapping={},
            file_name="f.csv",
            request_id="",
            actor="t",
            now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            max_bytes=1 << 30,
            max_line=1 << 20,
            batch_rows=batch_rows,
        )
        s = await up.run(chunks())
    leads = await pg.fetch(
        """SELECT l.row_number, l.first_name, l.last_name, l.zip, l.state, l.fields, l.created_at,
                  array_agg(n.e164 || ' ' || n.number_type || ' ' || array_to_string(n.timezones, ',')
                            ORDER BY n.position) AS numbers
             FROM leads l JOIN lead_numbers n ON n.lead_id = l.id
            WHERE l.campaign_id = $1 GROUP BY l.id ORDER BY l.row_number""",
        cid,
    )
    rejects = await pg.fetch(
        """SELECT row_number, field, raw_value, reason FROM lead_rejects r JOIN lead_lists ll ON ll.id = r.list_id
            WHERE ll.campaign_id = $1 ORDER BY row_number, field""",
        cid,
    )
    summary = (s.rows, s.accepted, s.duplicates, s.rejected, s.numbers_accepted, s.rejected_by_reason)
    return summary, [tuple(r) for r in leads] + [tuple(r) for r in rejects]


async def test_many_batches_store_what_one_batch_stores(pg: asyncpg.Pool) -> None:
    for cid in ("one", "many"):
        await pg.execute("INSERT INTO campaigns (id, name, settings) VALUES ($1, $1, '{}')", cid)
    data = make_file()
    one = await upload(pg, "one", data, batch_rows=100_000)
    many = await upload(pg, "many", data, batch_rows=7)
    assert one == many
    summary, stored = many
    assert summary[0] == 120 and summary[1] > 0 and summary[2] > 0 and summary[3] > 0
    leads = [r for r in stored if len(r) == 8]
    firsts = {r[1] for r in leads}  # type: ignore[index]
    assert {"tab\there", "back\\slash", 'say "hi"', "two\nlines", "cr\rhere", "émile ☎"} <= firsts
    notes = {json.loads(r[5])["notes"] for r in leads}  # type: ignore[index]
    assert "two\nlines" in notes and "back\\slash" in notes
    assert all(r[6] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC) for r in leads)  # type: ignore[index]


async def test_malformed_tail_after_stored_batches_keeps_nothing(pg: asyncpg.Pool) -> None:
    import pytest

    from outdial.core.errors import InvalidArgument

    await pg.execute("INSERT INTO campaigns (id, name, settings) VALUES ('bad', 'bad', '{}')")
    data = make_file() + b"x,y,\xc3\x28,1\r\n"
    with pytest.raises(InvalidArgument) as info:
        await upload(pg, "bad", data, batch_rows=7)
    assert "UTF-8" in str(info.value)
    assert await pg.fetchval("SELECT count(*) FROM leads WHERE campaign_id = 'bad'") == 0
    assert await pg.fetchval("SELECT count(*) FROM lead_lists WHERE campaign_id = 'bad'") == 0
    assert await pg.fetchval("SELECT count(*) FROM lead_numbers WHERE campaign_id = 'bad'") == 0
    # The campaign's lock was released with the rolled-back transaction: a good upload goes through.
    summary, _ = await upload(pg, "bad", make_file(), batch_rows=7)
    assert summary[0] == 120  # type: ignore[index]
