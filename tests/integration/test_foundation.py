"""Foundation: the four services start on real PostgreSQL and Redis, serve health and reflection, enforce
auth, follow their dependencies' health, and migrate idempotently."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from outdial.core import db
from outdial.core.config import SERVICES
from outdial.core.infra import start_private_postgres, start_private_redis
from outdial.v1 import dnc_pb2, dnc_pb2_grpc
from tests.conftest import Services, wait_serving_status

FULL_NAMES = {
    "campaign": "outdial.v1.CampaignService",
    "pacing": "outdial.v1.PacingService",
    "dnc": "outdial.v1.DncService",
    "agent": "outdial.v1.AgentService",
}


async def _reflected_services(addr: str) -> set[str]:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for resp in call:
            return {s.name for s in resp.list_services_response.service}
    return set()


async def test_all_four_services_serve_health_and_reflection(services: Services) -> None:
    for name in SERVICES:
        rs = await services.start(name)
        listed = await _reflected_services(rs.addr)
        assert FULL_NAMES[name] in listed
        assert "grpc.health.v1.Health" in listed


async def test_rpc_without_token_is_unauthenticated(services: Services) -> None:
    rs = await services.start("dnc")
    stub = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role=None))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListLists(dnc_pb2.ListListsRequest())
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_rpc_with_forged_token_is_unauthenticated(services: Services) -> None:
    rs = await services.start("dnc")
    ch = grpc.aio.insecure_channel(rs.addr)
    try:
        stub = dnc_pb2_grpc.DncServiceStub(ch)
        from outdial.core.auth import issue_token
        from outdial.core.signing import generate_key

        # A well-formed token signed by a key the services do not know.
        forged = issue_token(generate_key("issuer"), "mallory", "admin")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListLists(
                dnc_pb2.ListListsRequest(), metadata=(("authorization", f"Bearer {forged}"),)
            )
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        await ch.close()


async def test_role_not_allowed_is_permission_denied(services: Services) -> None:
    rs = await services.start("dnc")
    stub = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="agent"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "agent" in (err.value.details() or "")


async def test_health_follows_redis(services: Services) -> None:
    private = await asyncio.to_thread(start_private_redis)
    try:
        services.settings = services.settings.model_copy(update={"redis_url": private.url})
        rs = await services.start("agent")
        await asyncio.to_thread(private.pause)
        await wait_serving_status(rs.addr, False, timeout=5)
        await asyncio.to_thread(private.restart)
        await wait_serving_status(rs.addr, True, timeout=10)
    finally:
        await services.close()
        private.stop()


@pytest.mark.slow
async def test_health_follows_postgres() -> None:
    private = await asyncio.to_thread(start_private_postgres)
    try:
        from outdial.core.config import Settings

        svcs = Services(
            Settings(
                database_url=private.url,
                redis_url=None,
                dev=True,
                listen_port=0,
                metrics_port=0,
                health_interval_seconds=0.2,
                grace_seconds=1,
            )
        )
        # Redis: the test Redis of this session is not needed; the machine default may be absent, so use
        # a private one as well.
        rd = await asyncio.to_thread(start_private_redis)
        svcs.settings = svcs.settings.model_copy(update={"redis_url": rd.url})
        try:
            rs = await svcs.start("campaign")
            await asyncio.to_thread(private.pause)
            await wait_serving_status(rs.addr, False, timeout=5)
            await asyncio.to_thread(private.restart)
            await wait_serving_status(rs.addr, True, timeout=10)
        finally:
            await svcs.close()
            rd.stop()
    finally:
        private.stop()


async def test_migrations_are_idempotent_and_serialised(database_url: str) -> None:
    # The template is already migrated: a second run applies nothing, even from many processes at once.
    results = await asyncio.gather(*(db.migrate_url(database_url) for _ in range(5)))
    assert all(r == [] for r in results)
    conn = await asyncpg.connect(database_url)
    try:
        versions = [
            r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        ]
    finally:
        await conn.close()
    assert versions == [m.version for m in db.load_migrations()]


async def test_fresh_database_migrates_once_under_concurrency(infra) -> None:  # type: ignore[no-untyped-def]
    name = f"odt_{infra.run_id}_fresh"
    conn = await asyncpg.connect(infra.server_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        results = await asyncio.gather(*(db.migrate_url(infra.db_url(name)) for _ in range(4)))
        applied = [n for r in results for n in r]
        assert sorted(applied) == sorted(m.name for m in db.load_migrations())
    finally:
        conn = await asyncpg.connect(infra.server_url)
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.close()
