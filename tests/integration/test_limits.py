"""Input and load limits through real servers (issue 12, finding 5): 4 MiB messages, nothing parsed before
admission, DNC batches bounded by max_batch, list limits, per-caller rates and concurrency caps, and
registry imports and lead uploads whose memory stays bounded and that keep nothing when refused."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY

from outdial.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2, dnc_pb2, dnc_pb2_grpc, pacing_pb2
from tests.conftest import Services, health_status, make_token
from tests.integration.test_dnc_gate import wait_index

MiB = 1024 * 1024
COMPLIANCE = [("authorization", f"Bearer {make_token('compliance')}")]
MANAGER = [("authorization", f"Bearer {make_token('manager', 'mia')}")]
NO_REGISTRY = {"OUTDIAL_DNC_REQUIRE_REGISTRY": "false", "OUTDIAL_DNC_KEEPER_INTERVAL_SECONDS": "0.2"}
SERVING = 1


def rejected(service: str, limit: str, role: str) -> float:
    v = REGISTRY.get_sample_value(
        "outdial_limit_rejected_total", {"service": service, "limit": limit, "role": role}
    )
    return v or 0.0


async def start_dnc(services: Services, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Any:
    """The DNC service, once its index keeper has built the first index (and audited it: row counts
    taken after this do not move by themselves)."""
    for k, v in NO_REGISTRY.items():
        monkeypatch.setenv(k, v)
    rs = await services.start("dnc", **overrides)
    await wait_index(dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="service", sub="svc:campaign")))
    return rs


async def dnc_counts(pg: asyncpg.Pool) -> tuple[int, ...]:
    """Rows of the DNC tables, once the index keeper has audited its first build (the one row the
    service appends by itself)."""
    await _until_async(lambda: pg.fetchval("SELECT count(*) FROM dnc_audit WHERE action = 'rebuild'"))
    return tuple(
        [
            await pg.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("dnc_lists", "dnc_entries", "dnc_registry_imports", "dnc_audit")
        ]
    )


async def test_a_message_over_4_mib_is_refused_and_one_under_it_is_served(
    services: Services, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool
) -> None:
    rs = await start_dnc(services, monkeypatch)
    stub = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="compliance"))
    before = await dnc_counts(pg)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AddNumbers(
            dnc_pb2.AddNumbersRequest(numbers=["+12025550123"], reason="x" * (5 * MiB)), timeout=20
        )
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await dnc_counts(pg) == before
    resp = await stub.CheckNumbers(
        dnc_pb2.CheckNumbersRequest(numbers=["+12025550123"], campaign_id="c" * (3 * MiB)), timeout=20
    )
    assert len(resp.decisions) == 1


async def test_a_request_without_a_valid_token_is_refused_before_it_is_parsed(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    rs = await start_dnc(services, monkeypatch)
    async with grpc.aio.insecure_channel(rs.addr) as raw:
        call = raw.unary_unary("/outdial.v1.DncService/CheckNumbers")  # bytes in, bytes out
        for metadata in ((), (("authorization", "Bearer not-a-token"),)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"\xff\xff\xff\xff garbage", metadata=metadata, timeout=10)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # With a valid token the same bytes are a malformed request, said so (not an internal error).
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"\xff\xff\xff\xff garbage", metadata=COMPLIANCE, timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid CheckNumbersRequest" in (err.value.details() or "")
        # Streams too: a server stream and a client stream without a token.
        stream = raw.unary_stream("/outdial.v1.DncService/QueryAudit")(b"\xff\xff", timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    code, _ = await asyncio.to_thread(
        stream_sync,
        rs.addr,
        "/outdial.v1.DncService/ImportRegistry",
        iter([dnc_pb2.ImportRegistryRequest(chunk=b"\xff" * 1000)] * 8),
        (),
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_add_and_remove_numbers_honour_max_batch_and_keep_nothing_of_a_refused_batch(
    services: Services, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool
) -> None:
    monkeypatch.setenv("OUTDIAL_DNC_MAX_BATCH", "300")
    rs = await start_dnc(services, monkeypatch)
    stub = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="compliance"))
    numbers = [f"(202) 555-{i:04d}" for i in range(301)]  # national format: the libphonenumber path
    before = await dnc_counts(pg)
    for rpc, req in (
        (stub.AddNumbers, dnc_pb2.AddNumbersRequest(numbers=numbers, reason="test")),
        (stub.RemoveNumbers, dnc_pb2.RemoveNumbersRequest(numbers=numbers, reason="test")),
        (stub.CheckNumbers, dnc_pb2.CheckNumbersRequest(numbers=numbers)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rpc(req, timeout=20)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details() or ""
        assert "[numbers]" in details and "301 items" in details and "at most 300" in details
    assert await dnc_counts(pg) == before
    with pytest.raises(grpc.aio.AioRpcError) as err:  # found by the fuzz suite: INTERNAL before
        await anext(aiter(stub.QueryAudit(dnc_pb2.QueryAuditRequest(page_size=-1), metadata=COMPLIANCE)))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # A full batch (parsed in a worker thread) is served.
    added = await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=numbers[:300], reason="t"), timeout=20)
    assert added.added == 300
    removed = await stub.RemoveNumbers(
        dnc_pb2.RemoveNumbersRequest(numbers=numbers[:300], reason="t", list_id=added.list_id), timeout=20
    )
    assert removed.removed == 300


async def test_every_list_in_a_request_is_bounded_and_named(services: Services) -> None:
    rs = await services.start("campaign", limit_list_items=3)
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="manager"))
    before = rejected("campaign", "list_items", "manager")
    c = campaign_pb2.Campaign(name="x", caller_id="+12125550100", dispositions=["a", "b", "c", "d"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "[campaign.dispositions]" in (err.value.details() or "")
    assert "at most 3" in (err.value.details() or "")
    assert rejected("campaign", "list_items", "manager") == before + 1


async def test_a_caller_over_the_rate_gets_resource_exhausted_and_others_are_not_throttled(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    rs = await start_dnc(services, monkeypatch, limit_rate=0.01, limit_burst=2)
    mia = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="manager", sub="mia"))
    svc = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="service", sub="svc:pacing:p1"))
    req = dnc_pb2.CheckNumbersRequest(numbers=["+12025550123"])
    before = rejected("dnc", "rate", "manager")
    await mia.CheckNumbers(req)
    await mia.CheckNumbers(req)
    call = mia.CheckNumbers(req)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    details = err.value.details() or ""
    assert "rate limit" in details and "OUTDIAL_LIMIT_RATE" in details and "retry in" in details
    trailers = dict(err.value.trailing_metadata() or ())
    assert int(trailers["grpc-retry-pushback-ms"]) > 0
    assert rejected("dnc", "rate", "manager") == before + 1
    # read-only calls are not rate limited; the dialer's identity has its own, generous, quota
    await mia.ListLists(dnc_pb2.ListListsRequest())
    for _ in range(20):
        await svc.CheckNumbers(req)


async def test_uploads_per_caller_are_capped_and_the_slot_comes_back(
    services: Services, pg: asyncpg.Pool
) -> None:
    rs = await services.start("campaign", limit_uploads=1)
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="manager"))
    cid = (
        await stub.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                campaign=campaign_pb2.Campaign(name="u", caller_id="+12125550100")
            )
        )
    ).campaign.id
    auth = [("authorization", f"Bearer {make_token('manager', 'tester')}")]
    hold = asyncio.Event()

    async def held() -> AsyncIterator[campaign_pb2.UploadLeadsRequest]:
        await hold.wait()
        return
        yield  # an async generator that sends nothing while held

    first = stub.UploadLeads(held(), metadata=auth)
    await _until(lambda: _open("campaign", "uploads") >= 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UploadLeads(_upload(cid, b"phone\n2125550142\n"), metadata=auth)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many concurrent uploads" in (err.value.details() or "")
    assert await pg.fetchval("SELECT count(*) FROM lead_lists") == 0
    hold.set()
    with pytest.raises(grpc.aio.AioRpcError):
        await first  # an empty upload is refused (INVALID_ARGUMENT), and its slot is given back
    resp = await stub.UploadLeads(_upload(cid, b"phone\n2125550142\n"), metadata=auth)
    assert resp.accepted == 1


async def test_server_streams_per_caller_are_capped(services: Services) -> None:
    rs = await services.start("pacing", limit_streams=1)
    stub = services.channel(rs, role="manager")
    watch = stub.unary_stream(
        "/outdial.v1.PacingService/WatchPacing",
        request_serializer=pacing_pb2.WatchPacingRequest.SerializeToString,
        response_deserializer=pacing_pb2.WatchPacingResponse.FromString,
    )
    req = pacing_pb2.WatchPacingRequest(campaign_id="c1")
    first = watch(req, metadata=MANAGER)
    await first.read()
    second = watch(req, metadata=MANAGER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await second.read()
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "OUTDIAL_LIMIT_STREAMS" in (err.value.details() or "")
    other = watch(req, metadata=[("authorization", f"Bearer {make_token('manager', 'max')}")])
    await other.read()  # another person has their own cap
    other.cancel()
    first.cancel()
    await _until(lambda: _open("pacing", "streams") == 0)
    third = watch(req, metadata=MANAGER)
    await third.read()
    third.cancel()


# ------------------------------------------------------------------------------------- memory


def stream_sync(addr: str, method: str, msgs: Iterator[Any], metadata: Any) -> tuple[grpc.StatusCode, str]:
    """A client-streaming call with the synchronous client (run it in a thread): the status the server
    gave. (grpc.aio reports "Internal error from Core" instead when the server answers while a write is
    in flight, grpc/grpc#36066; the synchronous client reports the server's status.)"""
    with grpc.insecure_channel(addr) as ch:
        call = ch.stream_unary(method, request_serializer=lambda m: m.SerializeToString())
        try:
            call(msgs, metadata=metadata, timeout=60)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def _open(service: str, kind: str) -> float:
    return REGISTRY.get_sample_value("outdial_limit_open", {"service": service, "kind": kind}) or 0.0


async def _until_async(pred: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await pred():
        assert loop.time() < deadline, "condition never met"
        await asyncio.sleep(0.02)


async def _until(pred: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition never met"
        await asyncio.sleep(0.02)


def _upload(cid: str, data: bytes) -> Any:
    async def gen() -> AsyncIterator[campaign_pb2.UploadLeadsRequest]:
        yield campaign_pb2.UploadLeadsRequest(header=campaign_pb2.UploadLeadsHeader(campaign_id=cid))
        yield campaign_pb2.UploadLeadsRequest(chunk=data)

    return gen()


def _stamp(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


def registry_header() -> dnc_pb2.ImportRegistryRequest:
    return dnc_pb2.ImportRegistryRequest(
        header=dnc_pb2.ImportRegistryHeader(
            list_kind=dnc_pb2.LIST_KIND_NATIONAL,
            jurisdiction=common_pb2.JURISDICTION_US,
            downloaded_at=_stamp(datetime.now(UTC) - timedelta(days=1)),
        )
    )


async def test_a_64_mib_registry_line_without_newline_keeps_memory_bounded_and_nothing_imported(
    services: Services, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool
) -> None:
    rs = await start_dnc(services, monkeypatch)
    before = await dnc_counts(pg)
    refused = rejected("dnc", "line", "compliance")
    piece = dnc_pb2.ImportRegistryRequest(chunk=b"2025550123" * (MiB // 10))  # ~1 MiB, reused 64 times

    def gen() -> Iterator[dnc_pb2.ImportRegistryRequest]:
        yield registry_header()
        yield dnc_pb2.ImportRegistryRequest(chunk=b"2025550100\n2025550101\n")
        for _ in range(64):
            yield piece

    tracemalloc.start()
    try:
        code, details = await asyncio.to_thread(
            stream_sync, rs.addr, "/outdial.v1.DncService/ImportRegistry", gen(), COMPLIANCE
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert "line 3 of the registry file is longer than 1024 bytes" in details
    assert rejected("dnc", "line", "compliance") == refused + 1
    assert peak < 24 * MiB, f"the import held {peak / MiB:.0f} MiB"
    assert await dnc_counts(pg) == before  # the two good lines before it are not kept either
    assert await health_status(rs.addr) == SERVING


async def test_a_registry_file_over_the_size_limit_is_refused_whole(
    services: Services, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool
) -> None:
    monkeypatch.setenv("OUTDIAL_DNC_IMPORT_MAX_BYTES", "1000")
    rs = await start_dnc(services, monkeypatch)
    stub = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="compliance"))
    before = await dnc_counts(pg)

    async def gen() -> AsyncIterator[dnc_pb2.ImportRegistryRequest]:
        yield registry_header()
        for i in range(200):
            yield dnc_pb2.ImportRegistryRequest(chunk=f"202555{i:04d}\n".encode())

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportRegistry(gen(), metadata=COMPLIANCE, timeout=60)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than 1000 bytes" in (err.value.details() or "")
    assert await dnc_counts(pg) == before


async def test_a_64_mib_lead_line_in_tiny_and_large_chunks_keeps_memory_bounded(
    services: Services, pg: asyncpg.Pool
) -> None:
    rs = await services.start("campaign")
    stub = campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role="manager"))
    cid = (
        await stub.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                campaign=campaign_pb2.Campaign(name="m", caller_id="+12125550100")
            )
        )
    ).campaign.id
    auth = [("authorization", f"Bearer {make_token('manager')}")]
    big = campaign_pb2.UploadLeadsRequest(chunk=b"2" * MiB)
    tiny = campaign_pb2.UploadLeadsRequest(chunk=b"2" * 64)

    def gen() -> Iterator[campaign_pb2.UploadLeadsRequest]:
        yield campaign_pb2.UploadLeadsRequest(header=campaign_pb2.UploadLeadsHeader(campaign_id=cid))
        yield campaign_pb2.UploadLeadsRequest(chunk=b"phone\n2125550142\n")
        for _ in range(2000):  # 128 KiB in 64-byte pieces, then the rest of 64 MiB in 1 MiB ones
            yield tiny
        for _ in range(64):
            yield big

    tracemalloc.start()
    try:
        code, details = await asyncio.to_thread(
            stream_sync, rs.addr, "/outdial.v1.CampaignService/UploadLeads", gen(), auth
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert "line 3 is longer than" in details
    assert peak < 24 * MiB, f"the upload held {peak / MiB:.0f} MiB"
    assert await pg.fetchval("SELECT count(*) FROM lead_lists") == 0
    assert await pg.fetchval("SELECT count(*) FROM leads") == 0
    assert await health_status(rs.addr) == SERVING
