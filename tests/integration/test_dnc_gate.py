"""DNC service through a real gRPC server over real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from outdial.core import keys
from outdial.core.infra import start_private_redis
from outdial.v1 import common_pb2, dnc_pb2, dnc_pb2_grpc
from tests.conftest import make_token

# grpc.aio files a client interceptor under its first matching kind only, so the core channel's auth
# interceptor covers unary-unary calls alone: streaming calls carry the token explicitly.
AUTH = [("authorization", f"Bearer {make_token('compliance')}")]

NO_REGISTRY = {"OUTDIAL_DNC_REQUIRE_REGISTRY": "false", "OUTDIAL_DNC_KEEPER_INTERVAL_SECONDS": "0.2"}


def stamp(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


async def start(services: Any, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> Any:
    for k, v in (env if env is not None else NO_REGISTRY).items():
        monkeypatch.setenv(k, v)
    rs = await services.start("dnc")
    stub = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="compliance"))
    await wait_index(stub)
    return stub


async def wait_index(stub: Any, timeout: float = 20.0) -> None:
    """Wait until the index keeper has built the first index version."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        resp = await stub.CheckNumbers(dnc_pb2.CheckNumbersRequest(numbers=["+12025550100"]), timeout=10)
        codes = [r.code for r in resp.decisions[0].reasons]
        if "compliance.unavailable" not in codes:
            return
        assert loop.time() < deadline, f"index never became available: {resp}"
        await asyncio.sleep(0.1)


def pacing(services: Any) -> Any:
    """The DNC service as the dialer reaches it: only the pacing identity makes dial-time checks."""
    return dnc_pb2_grpc.DncServiceStub(services.channel(services.settings.dnc_addr, "service", "svc:pacing"))


async def check(stub: Any, *numbers: str, **kw: Any) -> list[Any]:
    resp = await stub.CheckNumbers(dnc_pb2.CheckNumbersRequest(numbers=list(numbers), **kw), timeout=10)
    return list(resp.decisions)


def codes(d: Any) -> list[str]:
    return [r.code for r in d.reasons]


async def import_file(stub: Any, text: str, *, mode: int, downloaded: datetime, chunk: int = 7) -> Any:
    async def gen() -> AsyncIterator[dnc_pb2.ImportRegistryRequest]:
        yield dnc_pb2.ImportRegistryRequest(
            header=dnc_pb2.ImportRegistryHeader(
                list_kind=dnc_pb2.LIST_KIND_NATIONAL,
                jurisdiction=common_pb2.JURISDICTION_US,
                mode=mode,
                downloaded_at=stamp(downloaded),
            )
        )
        data = text.encode()
        for i in range(0, len(data), chunk):  # odd chunk size: lines cut across chunks
            yield dnc_pb2.ImportRegistryRequest(chunk=data[i : i + chunk])

    return await stub.ImportRegistry(gen(), timeout=60, metadata=AUTH)


async def test_added_number_is_refused_by_the_next_check(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = await start(services, monkeypatch)
    (d,) = await check(stub, "+12025550123")
    assert d.allowed and not d.reasons
    resp = await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["(202) 555-0123"], reason="asked"))
    assert resp.added == 1 and resp.list_id == "internal"
    (d,) = await check(stub, "+12025550123")
    assert not d.allowed
    assert codes(d) == ["dnc.internal"] and d.reasons[0].list_id == "internal"
    assert d.reasons[0].since.seconds > 0

    # campaign list only applies to its campaign
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(
            numbers=["+13125550111"], list_kind=dnc_pb2.LIST_KIND_CAMPAIGN, campaign_id="c1", reason="x"
        )
    )
    a, b = await check(stub, "+13125550111", "+13125550111", campaign_id="c1")
    assert codes(a) == ["dnc.campaign"] and codes(b) == ["dnc.campaign"]
    (c,) = await check(stub, "+13125550111", campaign_id="c2")
    assert c.allowed

    # removal is audited and takes effect at once; history stays
    rm = await stub.RemoveNumbers(dnc_pb2.RemoveNumbersRequest(numbers=["+12025550123"], reason="mistake"))
    assert rm.removed == 1
    (d,) = await check(stub, "+12025550123")
    assert d.allowed
    page = await anext(
        aiter(stub.QueryAudit(dnc_pb2.QueryAuditRequest(number="+12025550123", page_size=10), metadata=AUTH))
    )
    assert [r.action for r in page.records] == ["add", "remove"]

    # invalid numbers are blocked, not allowed
    (bad,) = await check(stub, "12")
    assert not bad.allowed and codes(bad) == ["number.invalid"]


async def test_wireless_needs_consent_and_opt_out_revokes_it(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = await start(services, monkeypatch)
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(
            numbers=["+14155550177"], list_kind=dnc_pb2.LIST_KIND_WIRELESS, reason="ported"
        )
    )
    (d,) = await check(stub, "+14155550177")
    assert codes(d) == ["wireless.no_consent"]
    await stub.SetConsent(
        dnc_pb2.SetConsentRequest(
            number="+14155550177",
            kind=dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN,
            evidence="form",
            obtained_at=stamp(datetime.now(UTC) - timedelta(days=2)),
            obtained_via="web_form",
            text_agreed="I agree to receive autodialled marketing calls from Acme at this number.",
            ip_address="203.0.113.7",
        )
    )
    (d,) = await check(stub, "+14155550177")
    assert d.allowed
    opt = await stub.RecordOptOut(
        dnc_pb2.RecordOptOutRequest(number="+14155550177", source="keypress", call_id="k1")
    )
    assert opt.audit_seq > 0
    (d,) = await check(stub, "+14155550177")
    assert sorted(codes(d)) == ["dnc.internal", "wireless.no_consent"]


async def test_dial_time_decisions_are_audited_and_explained(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = await start(services, monkeypatch)
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12125550142"], reason="asked"))
    ds = await check(
        pacing(services),
        "+12125550142",
        "+12125550143",
        campaign_id="c9",
        dial_time=True,
        call_ids=["call-a", "call-b"],
    )
    assert [d.allowed for d in ds] == [False, True]
    assert all(d.audit_seq > 0 for d in ds)
    pages = [
        p
        async for p in stub.QueryAudit(
            dnc_pb2.QueryAuditRequest(action="check", campaign_id="c9"), metadata=AUTH
        )
    ]
    recs = [r for p in pages for r in p.records]
    assert [(r.number, r.result, r.call_id) for r in recs] == [
        ("+12125550142", "blocked", "call-a"),
        ("+12125550143", "allowed", "call-b"),
    ]
    why = await stub.ExplainDecision(
        dnc_pb2.ExplainDecisionRequest(
            number="+12125550142", at=stamp(datetime.now(UTC) + timedelta(seconds=5))
        )
    )
    assert not why.decision.allowed
    assert "call-a" in why.explanation and "dnc.internal" in why.explanation
    before = await stub.ExplainDecision(
        dnc_pb2.ExplainDecisionRequest(number="+12125550142", at=stamp(datetime.now(UTC) - timedelta(days=1)))
    )
    assert before.decision.allowed


async def test_registry_missing_stale_and_imports(
    services: Any, monkeypatch: pytest.MonkeyPatch, redis: Any
) -> None:
    stub = await start(services, monkeypatch, env={"OUTDIAL_DNC_KEEPER_INTERVAL_SECONDS": "0.2"})
    (d,) = await check(stub, "+12025550100", jurisdiction=common_pb2.JURISDICTION_US)
    assert codes(d) == ["registry.missing"]

    old = datetime.now(UTC) - timedelta(days=40)
    res = await import_file(
        stub,
        "2025550101\n2025550102\n2025550103\nnot-a-number\n0005550100\n",
        mode=dnc_pb2.IMPORT_MODE_FULL,
        downloaded=old,
    )
    assert (res.lines, res.added, res.invalid) == (5, 3, 2)
    assert res.invalid_samples == ["not-a-number", "0005550100"]
    (d,) = await check(stub, "+12025550199", jurisdiction=common_pb2.JURISDICTION_US)
    assert codes(d) == ["registry.stale"]
    assert "40 days ago" in d.reasons[0].detail and "31 days" in d.reasons[0].detail

    fresh = datetime.now(UTC) - timedelta(days=2)
    res = await import_file(
        stub, "2025550102\n2025550103\n2025550104\n", mode=dnc_pb2.IMPORT_MODE_FULL, downloaded=fresh
    )
    assert (res.added, res.removed) == (1, 1)
    ds = await check(stub, "+12025550101", "+12025550102", "+12025550104", "+12025550199")
    assert [codes(d) for d in ds] == [[], ["dnc.national"], ["dnc.national"], []]

    res = await import_file(
        stub,
        "+2025550105\n-2025550102\n2025550106,A\nD,2025550103\n?2025550107\n",
        mode=dnc_pb2.IMPORT_MODE_CHANGES,
        downloaded=fresh + timedelta(days=1),
    )
    assert (res.added, res.removed, res.invalid) == (2, 2, 1)
    ds = await check(stub, "+12025550102", "+12025550103", "+12025550104", "+12025550105", "+12025550106")
    assert [d.allowed for d in ds] == [True, True, False, False, False]
    lists = {li.id: li for li in (await stub.ListLists(dnc_pb2.ListListsRequest())).lists}
    assert lists["national:US"].entries == 3
    assert (
        lists["national:US"].registry_date.ToDatetime(tzinfo=UTC).date() == (fresh + timedelta(days=1)).date()
    )

    # a rebuild keeps the same answers, under a new version, and removes the old one
    before = await stub.RebuildIndex(dnc_pb2.RebuildIndexRequest())
    after = await stub.RebuildIndex(dnc_pb2.RebuildIndexRequest())
    assert after.index_version > before.index_version and after.numbers == 3
    old_keys = [
        keys.dnc_index_meta(before.index_version),
        keys.dnc_index(before.index_version, "national:US|1202"),
    ]
    new_keys = [
        keys.dnc_index_meta(after.index_version),
        keys.dnc_index(after.index_version, "national:US|1202"),
    ]
    assert await redis.exists(*old_keys) == 0
    assert await redis.exists(*new_keys) == 2
    ds = await check(stub, "+12025550104", "+12025550102")
    assert [d.allowed for d in ds] == [False, True]


async def test_query_paging(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = await start(services, monkeypatch)
    nums = [f"+1312555{i:04d}" for i in range(25)]
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=nums, reason="bulk"))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await anext(
            aiter(
                stub.QueryAudit(
                    dnc_pb2.QueryAuditRequest(action="add", page_size=10, page_token=token), metadata=AUTH
                )
            )
        )
        seen += [r.number for r in page.records]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and seen == nums
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anext(aiter(stub.QueryAudit(dnc_pb2.QueryAuditRequest(page_token="garbage!"), metadata=AUTH)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_opt_out_events_from_the_call_stream(
    services: Any, monkeypatch: pytest.MonkeyPatch, redis: Any
) -> None:
    stub = await start(services, monkeypatch)
    base = {"at": "0", "campaign_id": "c1", "lead_id": "l1"}
    for eid, extra in (
        (
            "e1",
            {
                "type": "call.abandoned",
                "call_id": "x1",
                "number": "+15035550101",
                "message_played": "1",
                "opt_out": "1",
            },
        ),
        (
            "e1",
            {
                "type": "call.abandoned",
                "call_id": "x1",
                "number": "+15035550101",
                "message_played": "1",
                "opt_out": "1",
            },
        ),
        (
            "e2",
            {
                "type": "agent.disposition",
                "call_id": "x2",
                "number": "+15035550102",
                "agent_id": "a7",
                "disposition": "do_not_call",
                "callback_at": "",
                "notes": "",
            },
        ),
        (
            "e3",
            {
                "type": "call.abandoned",
                "call_id": "x3",
                "number": "+15035550103",
                "message_played": "1",
                "opt_out": "0",
            },
        ),
    ):
        await redis.xadd(keys.call_events(), {"event_id": eid, **base, **extra})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        ds = await check(stub, "+15035550101", "+15035550102", "+15035550103")
        if not ds[0].allowed and not ds[1].allowed:
            break
        assert loop.time() < deadline, "opt-out events were not applied"
        await asyncio.sleep(0.1)
    assert ds[2].allowed
    page = await anext(
        aiter(stub.QueryAudit(dnc_pb2.QueryAuditRequest(action="opt_out", page_size=10), metadata=AUTH))
    )
    assert sorted(r.number for r in page.records) == ["+15035550101", "+15035550102"]


async def test_redis_down_blocks(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    private = start_private_redis()
    try:
        services.settings = services.settings.model_copy(update={"redis_url": private.url})
        stub = await start(services, monkeypatch)
        (d,) = await check(stub, "+12025550123")
        assert d.allowed
        await asyncio.to_thread(private.pause)
        ds = await check(pacing(services), "+12025550123", "+12025550124", dial_time=True)
        assert [d.allowed for d in ds] == [False, False]
        assert all(codes(d) == ["compliance.unavailable"] for d in ds)
        assert "Redis" in ds[0].reasons[0].detail
        # adds fail loudly rather than pretending
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12025550125"], reason="x"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # the add reached PostgreSQL but not the index: after Redis is back the index is rebuilt first
        await asyncio.to_thread(private.restart)
        await wait_index(stub)
        (d,) = await check(stub, "+12025550125")
        assert codes(d) == ["dnc.internal"]
    finally:
        await asyncio.to_thread(private.stop)


async def test_postgres_down_blocks(
    services: Any, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    stub = await start(services, monkeypatch)
    (d,) = await check(stub, "+12025550123")
    assert d.allowed
    base, _, name = database_url.rpartition("/")
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        # PostgreSQL stops answering this service: no new connections, existing ones cut
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        ds = await check(pacing(services), "+12025550123", "+12025550124", dial_time=True)
        assert [d.allowed for d in ds] == [False, False]
        assert all(codes(d) == ["compliance.unavailable"] for d in ds)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    await wait_index(stub)
    (d,) = await check(stub, "+12025550123")
    assert d.allowed


async def test_changes_during_a_rebuild_are_not_lost(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = await start(services, monkeypatch)
    await import_file(
        stub,
        "".join(f"20255{i:05d}\n" for i in range(2000)),
        mode=dnc_pb2.IMPORT_MODE_FULL,
        downloaded=datetime.now(UTC),
        chunk=4096,
    )
    added: list[str] = []

    async def adder() -> None:
        for i in range(40):
            n = f"+1415555{i:04d}"
            await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=[n], reason="during rebuild"))
            added.append(n)

    async def rebuilder() -> None:
        for _ in range(4):
            await stub.RebuildIndex(dnc_pb2.RebuildIndexRequest(), timeout=60)

    await asyncio.gather(adder(), rebuilder())
    ds = await check(stub, *added, "+12025500007", "+12025509999")
    assert all(not d.allowed for d in ds[:-1]), [d.number for d in ds if d.allowed]
    assert ds[-1].allowed


async def test_a_listing_between_the_check_and_the_dial_stops_the_dial(
    services: Any, monkeypatch: pytest.MonkeyPatch, redis: Any
) -> None:
    """The dialer reads the changes counter before its check; a listing, an opt-out or a consent revocation
    recorded after it marks the number, so the dial (which asks after taking its dial time) does not leave
    (core/dnc_changes.py). Other numbers are not held back; a counter that went backwards (Redis lost its
    data) holds every dial back."""
    from outdial.core import dnc_changes

    stub = await start(services, monkeypatch)
    before = await dnc_changes.seen(redis)
    (d,) = await check(stub, "+12025550177")
    assert d.allowed  # the check passed ...
    added = await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12025550177"], reason="asked"))
    assert added.added == 1  # ... then the number was listed: recorded after the mark
    assert int(await redis.get(keys.dnc_changed("+12025550177"))) > before
    assert await dnc_changes.changed_since(redis, "+12025550177", before)
    assert not await dnc_changes.changed_since(redis, "+12025550178", before)
    # A check after the listing read the new counter, and found the number listed itself.
    after = await dnc_changes.seen(redis)
    (d,) = await check(stub, "+12025550177")
    assert not d.allowed and not await dnc_changes.changed_since(redis, "+12025550177", after)

    # A revocation of consent marks the number as well.
    await stub.RecordOptOut(dnc_pb2.RecordOptOutRequest(number="+12025550179", source="keypress"))
    assert await dnc_changes.changed_since(redis, "+12025550179", after)

    await redis.delete(keys.dnc_changes())  # Redis lost its data: the counter went backwards
    assert await dnc_changes.changed_since(redis, "+12025550178", after)
