"""PacingService: settings persisted and validated, state published by the lease holder, a live stream,
the safety rules (no agent logged in, paused by settings: no dialing), and the ``outdial pacing`` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.field_mask_pb2 import FieldMask

from outdial.core import keys
from outdial.v1 import pacing_pb2, pacing_pb2_grpc
from tests.conftest import Services, make_token
from tests.integration.test_pacing_dialer import CID, seed_campaign, workday_clock


async def next_state(
    stream: grpc.aio.UnaryStreamCall, pred: object, timeout: float = 30
) -> pacing_pb2.PacingState:
    async def go() -> pacing_pb2.PacingState:
        async for resp in stream:
            if pred(resp.state):  # type: ignore[operator]
                return resp.state
        raise AssertionError("stream ended")

    return await asyncio.wait_for(go(), timeout)


async def test_settings_state_watch_and_safety(
    services: Services, redis: aioredis.Redis, pg: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTDIAL_PACING_TICK_MS", "100")
    await seed_campaign(redis, n_leads=5, n_agents=0)
    rs = await services.start("pacing", clock=workday_clock(), instance_id="r1")
    stub = pacing_pb2_grpc.PacingServiceStub(services.channel(rs, role="manager"))

    req = pacing_pb2.WatchPacingRequest(campaign_id=CID)
    req.interval.FromMilliseconds(500)
    # Server streams carry the token as call metadata (the channel's auth interceptor does not reach them).
    auth = (("authorization", f"Bearer {make_token('manager', 'tester')}"),)
    stream = stub.WatchPacing(req, metadata=auth)
    st = await next_state(stream, lambda s: s.leader.startswith("r1|"))
    assert st.fallback_reason == "no agent logged in" and st.lines_in_flight == 0
    assert (st.mode, st.effective_mode) == ("progressive", "none")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        bad = pacing_pb2.PacingSettings()
        bad.ring_timeout.FromSeconds(10)
        await stub.UpdatePacingSettings(
            pacing_pb2.UpdatePacingSettingsRequest(
                campaign_id=CID, settings=bad, update_mask=FieldMask(paths=["ring_timeout"])
            )
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    agent_stub = pacing_pb2_grpc.PacingServiceStub(services.channel(rs, role="agent"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await agent_stub.UpdatePacingSettings(pacing_pb2.UpdatePacingSettingsRequest(campaign_id=CID))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED

    new = pacing_pb2.PacingSettings(algorithm=pacing_pb2.PACING_ALGORITHM_POWER, power_ratio=1.5, paused=True)
    resp = await stub.UpdatePacingSettings(
        pacing_pb2.UpdatePacingSettingsRequest(
            campaign_id=CID, settings=new, update_mask=FieldMask(paths=["algorithm", "power_ratio", "paused"])
        )
    )
    assert resp.settings.algorithm == pacing_pb2.PACING_ALGORITHM_POWER and resp.settings.paused
    row = await pg.fetchrow("SELECT settings, updated_by FROM pacing_settings WHERE campaign_id = $1", CID)
    assert json.loads(row["settings"]) == {"algorithm": "power", "power_ratio": 1.5, "paused": True}
    assert row["updated_by"].endswith("tester")

    # An agent logs in (as the agent service would publish it): paused settings still keep the line quiet.
    await redis.hset(
        keys.campaign_agents(CID), "a1", json.dumps({"state": "ready", "since_ms": 0, "call_id": ""})
    )
    st = await next_state(stream, lambda s: s.agents.ready == 1 and s.settings.paused)
    assert st.fallback_reason == "paused by pacing settings" and st.mode == "power"
    await asyncio.sleep(0.5)
    assert await pg.fetchval("SELECT count(*) FROM dial_attempts") == 0
    assert await redis.zcard(keys.hopper(CID)) == 5
    stream.cancel()

    # The CLI, as a user runs it.
    env = {
        **os.environ,
        "OUTDIAL_PACING_ADDR": rs.addr,
        "OUTDIAL_TOKEN": make_token("manager", "cli"),
        "OUTDIAL_DEV": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outdial.cli.main", "pacing", "set", "--campaign", CID, "--resume", "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, errb = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, errb.decode()
    assert json.loads(out)["paused"] is False
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outdial.cli.main", "pacing", "state", "--campaign", CID, "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, errb = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, errb.decode()
    doc = json.loads(out)
    assert doc["campaign_id"] == CID and doc["settings"]["algorithm"] == "PACING_ALGORITHM_POWER"
    assert doc["leader"].startswith("r1|")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outdial.cli.main", "pacing", "watch", "--campaign", CID, "--count", "2",
        "--interval", "0.3", "--json", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, errb = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, errb.decode()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert len(lines) == 2 and all(d["campaign_id"] == CID for d in lines)
    assert lines[-1]["settings"]["paused"] is False
