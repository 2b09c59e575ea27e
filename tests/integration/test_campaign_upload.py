"""UploadLeads over real gRPC/PostgreSQL: messy files give the counts phonenumbers implies, duplicates are
stored once (also for concurrent uploads), malformed files are refused whole, rejects are listed."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
from collections.abc import Iterator

import asyncpg
import grpc
import phonenumbers
import pytest

from outdial.v1 import campaign_pb2, campaign_pb2_grpc
from tests.conftest import Services, make_token

# grpc.aio applies a channel's client interceptor to unary-unary calls only: client streams carry the token.
AUTH = [("authorization", f"Bearer {make_token('manager')}")]

PHONE_TYPES_REJECTED = {
    phonenumbers.PhoneNumberType.TOLL_FREE,
    phonenumbers.PhoneNumberType.PREMIUM_RATE,
    phonenumbers.PhoneNumberType.SHARED_COST,
    phonenumbers.PhoneNumberType.PERSONAL_NUMBER,
    phonenumbers.PhoneNumberType.PAGER,
    phonenumbers.PhoneNumberType.VOICEMAIL,
}


def expected_e164(raw: str) -> str | None:
    """What phonenumbers says about one raw US-campaign value (None = rejected)."""
    if not raw.strip():
        return None
    try:
        n = phonenumbers.parse(raw.strip(), "US")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number_for_region(n, "US"):
        return None
    if phonenumbers.number_type(n) in PHONE_TYPES_REJECTED:
        return None
    return phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)


def requests(
    data: bytes, campaign_id: str, chunk: int = 997, **header: object
) -> Iterator[campaign_pb2.UploadLeadsRequest]:
    yield campaign_pb2.UploadLeadsRequest(
        header=campaign_pb2.UploadLeadsHeader(campaign_id=campaign_id, **header)
    )  # type: ignore[arg-type]
    for i in range(0, len(data), chunk):
        yield campaign_pb2.UploadLeadsRequest(chunk=data[i : i + chunk])


async def setup_campaign(services: Services) -> tuple[campaign_pb2_grpc.CampaignServiceStub, str]:
    rs = await services.start("campaign")
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="manager"))
    c = campaign_pb2.Campaign(name="leads", caller_id="+12125550100")
    cid = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign.id
    return stub, cid


def messy_file(seed: int = 7, rows: int = 400) -> tuple[bytes, list[str]]:
    rng = random.Random(seed)
    raws: list[str] = ["(212) 555-0123"]
    formats = [
        "({a}) {b}-{c}",
        "{a}.{b}.{c}",
        "+1 {a} {b} {c}",
        "1-{a}-{b}-{c}",
        "{a}{b}{c}",
        "{a} {b} {c} ext 5",
    ]
    area = ["212", "310", "808", "305", "800", "900", "555", "416", "123", "646"]
    for _ in range(rows - 1):
        r = rng.random()
        if r < 0.06:
            raws.append(rng.choice(["", "n/a", "call me", "12", "++1"]))
        elif r < 0.15 and raws:
            raws.append(rng.choice(raws))  # in-file duplicate, maybe in another format
        else:
            a, b, c = rng.choice(area), f"{rng.randint(200, 999)}", f"{rng.randint(0, 9999):04d}"
            raws.append(rng.choice(formats).format(a=a, b=b, c=c))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["First Name", "LAST_NAME", " Phone Number ", "Zip Code", "Notes"])
    for i, raw in enumerate(raws):
        note = 'line one\r\nline two, "quoted"' if i % 17 == 0 else f"note {i}"
        w.writerow([f"F{i}", f"L{i}", raw, "10001" if i % 5 == 0 else "", note])
    return ("\ufeff" + out.getvalue()).encode(), raws


async def test_messy_file_counts_match_phonenumbers(services: Services, pg: asyncpg.Pool) -> None:
    stub, cid = await setup_campaign(services)
    data, raws = messy_file()
    resp = await stub.UploadLeads(requests(data, cid, file_name="messy.csv"), metadata=AUTH)
    seen: set[str] = set()
    accepted = dup = rejected = 0
    for raw in raws:
        e = expected_e164(raw)
        if e is None:
            rejected += 1
        elif e in seen:
            dup += 1
        else:
            seen.add(e)
            accepted += 1
    assert (resp.rows, resp.accepted, resp.duplicates, resp.rejected) == (len(raws), accepted, dup, rejected)
    assert resp.committed and sum(resp.rejected_by_reason.values()) == rejected
    stored = {r["e164"] for r in await pg.fetch("SELECT e164 FROM lead_numbers WHERE campaign_id = $1", cid)}
    assert stored == seen
    # Custom fields kept, embedded newlines intact, names mapped by alias.
    row = await pg.fetchrow(
        "SELECT first_name, last_name, fields FROM leads WHERE campaign_id = $1 AND row_number = 2", cid
    )
    assert row is not None and row["first_name"] == "F0" and row["last_name"] == "L0"
    assert json.loads(row["fields"]) == {"Notes": 'line one\r\nline two, "quoted"'}
    # Every rejected row is listed with its row number, raw value and a reason.
    rejects = [
        r
        async for page in stub.ListLeadRejects(
            campaign_pb2.ListLeadRejectsRequest(list_id=resp.list_id), metadata=AUTH
        )
        for r in page.rejects
    ]
    rows_rejected = {r.row_number for r in rejects}
    assert len(rows_rejected) == rejected and all(r.reason for r in rejects)
    for r in rejects:
        assert raws[r.row_number - 2] == r.raw_value
    # Re-upload adds nothing.
    again = await stub.UploadLeads(requests(data, cid, file_name="messy.csv"), metadata=AUTH)
    assert (again.accepted, again.duplicates, again.rejected) == (0, accepted + dup, rejected)
    assert await pg.fetchval("SELECT count(*) FROM leads WHERE campaign_id = $1", cid) == accepted
    lst = (await stub.GetLeadList(campaign_pb2.GetLeadListRequest(list_id=resp.list_id))).list
    assert lst.accepted == accepted and len(lst.sha256) == 64
    lists = (await stub.ListLeadLists(campaign_pb2.ListLeadListsRequest(campaign_id=cid))).lists
    assert [x.id for x in lists] == [resp.list_id, again.list_id]


async def test_concurrent_overlapping_uploads_store_each_number_once(
    services: Services, pg: asyncpg.Pool
) -> None:
    stub, cid = await setup_campaign(services)
    nums = [f"212{n:07d}" for n in range(2000000, 2000600)]
    valid = {e for e in (expected_e164(n) for n in nums) if e}

    def file(part: list[str]) -> bytes:
        return ("phone\n" + "\n".join(part) + "\n").encode()

    a, b = file(nums[:400]), file(nums[200:])
    ra, rb = await asyncio.gather(
        stub.UploadLeads(requests(a, cid, chunk=512), metadata=AUTH),
        stub.UploadLeads(requests(b, cid, chunk=512), metadata=AUTH),
    )
    assert ra.accepted + rb.accepted == len(valid)
    assert await pg.fetchval("SELECT count(*) FROM lead_numbers WHERE campaign_id = $1", cid) == len(valid)
    assert await pg.fetchval("SELECT count(*) FROM leads WHERE campaign_id = $1", cid) == len(valid)


async def test_delimiters_mapping_and_several_phones(services: Services, pg: asyncpg.Pool) -> None:
    stub, cid = await setup_campaign(services)
    data = b"Name|Cell|Home Tel|Given\nAnn|(212) 555-0101|(310) 555-0102|x\nBob||(212) 555-0101|y\n"
    resp = await stub.UploadLeads(requests(data, cid), metadata=AUTH)
    assert (resp.rows, resp.accepted, resp.duplicates, resp.numbers_accepted) == (2, 1, 1, 2)
    data = b"Given;Contact\nCid;212-555-0199\n"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UploadLeads(requests(data, cid), metadata=AUTH)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "phone" in (err.value.details() or "")
    resp = await stub.UploadLeads(
        requests(data, cid, column_mapping={"phone": "Contact", "first_name": "Given"}), metadata=AUTH
    )
    assert resp.accepted == 1
    assert (
        await pg.fetchval("SELECT first_name FROM leads WHERE row_number = 2 AND list_id = $1", resp.list_id)
        == "Cid"
    )


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"phone\n\xff\xfe\x00garbage\n", "UTF-8"),
        (b"phone\n2125550100\n" + b"2" * (1024 * 1024 + 10) + b"\n", "longer than"),
        (b'phone\n"2125550100\n', "never closes"),
        (b"", "empty"),
    ],
)
async def test_malformed_files_are_refused_whole(
    services: Services, pg: asyncpg.Pool, data: bytes, words: str
) -> None:
    stub, cid = await setup_campaign(services)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UploadLeads(requests(data, cid, chunk=65536), metadata=AUTH)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in (err.value.details() or "")
    assert await pg.fetchval("SELECT count(*) FROM leads") == 0
    assert await pg.fetchval("SELECT count(*) FROM lead_lists") == 0


async def test_size_limit_and_request_id(
    services: Services, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool
) -> None:
    monkeypatch.setenv("OUTDIAL_CAMPAIGN_UPLOAD_MAX_BYTES", "1000")
    stub, cid = await setup_campaign(services)
    big = ("phone\n" + "\n".join(f"212555{n:04d}" for n in range(200)) + "\n").encode()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UploadLeads(requests(big, cid), metadata=AUTH)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "limit" in (err.value.details() or "")
    small = b"phone\n2125550142\n"
    first = await stub.UploadLeads(requests(small, cid, request_id="r-1"), metadata=AUTH)
    second = await stub.UploadLeads(requests(small, cid, request_id="r-1"), metadata=AUTH)
    assert first.list_id == second.list_id and second.accepted == 1
    assert await pg.fetchval("SELECT count(*) FROM lead_lists") == 1
