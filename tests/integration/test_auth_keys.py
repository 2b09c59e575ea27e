"""Keys, identities and revocation through real services: a process refuses to start on development keys
without OUTDIAL_DEV=1, a production-mode start with real keys follows a JWKS rotation without restarting,
revoked tokens are refused (by jti through the CLI, by subject), also after Redis loses its data, and a
service identity may call only what its allow-list names."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from outdial.cli.keys import keys_init, keys_remove, keys_rotate
from outdial.core import keys
from outdial.core.auth import Role, issue_token
from outdial.core.infra import free_port
from outdial.core.revocation import revoke
from outdial.core.signing import dev_key, load_private_key
from outdial.v1 import dnc_pb2, dnc_pb2_grpc
from tests.conftest import Services, make_token, production_keys

LIST_LISTS = dnc_pb2.ListListsRequest()


async def _code(addr: str, token: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(addr) as ch:
        try:
            await dnc_pb2_grpc.DncServiceStub(ch).ListLists(
                LIST_LISTS, metadata=(("authorization", f"Bearer {token}"),), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def _until(addr: str, token: str, want: grpc.StatusCode, timeout: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while loop.time() < deadline:
        last = await _code(addr, token)
        if last is want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {want.name}, still {last}")


def _jti(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, " ".join(out.decode().split())


async def test_a_service_process_refuses_development_keys_and_the_old_secret(
    database_url: str, redis_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTDIAL_")}
    env.update(
        OUTDIAL_DATABASE_URL=database_url,
        OUTDIAL_REDIS_URL=redis_url,
        OUTDIAL_DNC_ADDR=f"127.0.0.1:{free_port()}",
        OUTDIAL_METRICS_PORT="0",
    )
    code, out = await _run(["-m", "outdial.dnc"], env)
    assert code == 2 and "OUTDIAL_JWKS is not set" in out, out
    env["OUTDIAL_AUTH_SECRET"] = "outdial-dev-secret-change-me-before-production"
    code, out = await _run(["-m", "outdial.dnc"], env)
    assert code == 2 and "OUTDIAL_AUTH_SECRET is set" in out, out


async def test_production_mode_with_real_keys_follows_a_jwks_rotation(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "keys"
    await keys_init(argparse.Namespace(dir=str(d), dev=False, json=True), services.settings)
    for k, v in production_keys(tmp_path / "audit")["env"].items():  # the DNC's audit signing key and sink
        monkeypatch.setenv(k, v)
    services.settings = services.settings.model_copy(
        update={
            "dev": False,
            "jwks": d / "jwks.json",
            "service_key": d / "dnc.key",
            "jwks_reload_seconds": 0.1,
        }
    )
    rs = await services.start("dnc")
    old = load_private_key(d / "issuer.key", "issuer", "OUTDIAL_ISSUER_KEY", dev=False)
    old_token = issue_token(old, "ops-1", Role.COMPLIANCE, 600)
    assert await _code(rs.addr, old_token) is grpc.StatusCode.OK
    # the development keyset means nothing to a production service
    assert await _code(rs.addr, make_token(Role.ADMIN, "dev")) is grpc.StatusCode.UNAUTHENTICATED

    await keys_rotate(argparse.Namespace(dir=str(d), key="issuer", json=True), services.settings)
    new = load_private_key(d / "issuer.key", "issuer", "OUTDIAL_ISSUER_KEY", dev=False)
    await _until(rs.addr, issue_token(new, "ops-1", Role.COMPLIANCE, 600), grpc.StatusCode.OK)
    assert await _code(rs.addr, old_token) is grpc.StatusCode.OK  # both verify during the rotation
    await keys_remove(argparse.Namespace(dir=str(d), kid=old.kid, json=True), services.settings)
    await _until(rs.addr, old_token, grpc.StatusCode.UNAUTHENTICATED)


async def test_revoked_tokens_are_refused_also_after_redis_loses_its_data(
    services: Services, pg: object, redis: aioredis.Redis, database_url: str, redis_url: str
) -> None:
    rs = await services.start("dnc")
    t1 = make_token(Role.COMPLIANCE, "ops-1")
    t2 = make_token(Role.COMPLIANCE, "ops-2")
    assert await _code(rs.addr, t1) is grpc.StatusCode.OK
    assert await _code(rs.addr, t2) is grpc.StatusCode.OK

    # by jti, through the CLI
    env = {**os.environ, "OUTDIAL_DATABASE_URL": database_url, "OUTDIAL_REDIS_URL": redis_url}
    code, out = await _run(["-m", "outdial.cli.main", "token", "revoke", "--jti", _jti(t1)], env)
    assert code == 0, out
    await _until(rs.addr, t1, grpc.StatusCode.UNAUTHENTICATED, timeout=3)
    assert await _code(rs.addr, t2) is grpc.StatusCode.OK

    # by subject: every token issued before now; a later one works
    await revoke(pg, redis, subject="ops-2", revoked_by="test")  # type: ignore[arg-type]
    await _until(rs.addr, t2, grpc.StatusCode.UNAUTHENTICATED, timeout=3)
    later = issue_token(
        dev_key("issuer"),
        "ops-2",
        Role.COMPLIANCE,
        600,
        now=time.time() + 2,
    )
    assert await _code(rs.addr, later) is grpc.StatusCode.OK

    # Redis loses everything: the running service rebuilds the mirror from PostgreSQL, the record ...
    await redis.flushdb()
    for _ in range(50):
        if await redis.hexists(keys.revoked_tokens(), f"jti:{_jti(t1)}"):
            break
        await asyncio.sleep(0.1)
    assert await redis.hexists(keys.revoked_tokens(), "subject:ops-2")
    assert await _code(rs.addr, t1) is grpc.StatusCode.UNAUTHENTICATED
    # ... and a fresh process, with an empty copy and an empty Redis, loads the list from PostgreSQL
    await redis.flushdb()
    await rs.stop()
    rs2 = await services.start("dnc")
    assert await _code(rs2.addr, t1) is grpc.StatusCode.UNAUTHENTICATED
    assert await _code(rs2.addr, t2) is grpc.StatusCode.UNAUTHENTICATED
    assert await redis.hexists(keys.revoked_tokens(), f"jti:{_jti(t1)}")
    assert await redis.hexists(keys.revoked_tokens(), "subject:ops-2")


async def test_a_service_identity_is_held_to_its_allow_list(services: Services) -> None:
    rs = await services.start("dnc")
    check = dnc_pb2.CheckNumbersRequest(numbers=["+12125550123"])
    campaign = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role=Role.SERVICE, sub="svc:campaign:pod-1"))
    await campaign.CheckNumbers(check)
    try:
        await campaign.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12125550123"], reason="x", source="x"))
        raise AssertionError("svc:campaign may not AddNumbers")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "not on the allow-list" in (exc.details() or "") and "needs role" in (exc.details() or "")
    gateway = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role=Role.SERVICE, sub="svc:gateway"))
    try:
        await gateway.CheckNumbers(check)
        raise AssertionError("svc:gateway may not CheckNumbers")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "services allowed: campaign, pacing" in (exc.details() or "")
