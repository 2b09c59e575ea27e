"""Expired entries are taken off their lists and out of the Redis index by the sweeper, with an audit record."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from outdial.core.redis import create_redis
from outdial.dnc.index import DncIndex
from outdial.v1 import dnc_pb2
from tests.integration.test_dnc_gate import NO_REGISTRY, check, codes, stamp, start


async def test_expired_entries_are_swept_from_the_index_and_audited(
    services: Any, monkeypatch: pytest.MonkeyPatch, pg: asyncpg.Pool, settings: Any
) -> None:
    stub = await start(
        services, monkeypatch, env={**NO_REGISTRY, "OUTDIAL_DNC_EXPIRY_SWEEP_INTERVAL_SECONDS": "0.2"}
    )
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    await stub.AddNumbers(
        dnc_pb2.AddNumbersRequest(numbers=["+12025550181"], reason="30-day hold", expires_at=stamp(soon))
    )
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12025550182"], reason="for good"))
    d1, d2 = await check(stub, "+12025550181", "+12025550182")
    assert codes(d1) == ["dnc.internal"] and codes(d2) == ["dnc.internal"]

    rb = create_redis(settings.redis_url, decode=False)
    index = DncIndex(rb)
    probes = [("internal", "internal", "+12025550181"), ("internal", "internal", "+12025550182")]
    try:
        assert await index.lookup(probes) == [True, True]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await index.lookup(probes) != [False, True]:
            assert loop.time() < deadline, "the expired entry never left the index"
            await asyncio.sleep(0.1)
    finally:
        await rb.aclose()

    d1, d2 = await check(stub, "+12025550181", "+12025550182")
    assert d1.allowed and codes(d2) == ["dnc.internal"]
    row = await pg.fetchrow(
        "SELECT removed_at, expires_at, removed_by FROM dnc_entries WHERE number = $1", "+12025550181"
    )
    assert row["removed_at"] == row["expires_at"] and row["removed_by"] == "system:expiry"
    rec = await pg.fetchrow("SELECT actor, reason, details FROM dnc_audit WHERE action = 'expire'")
    assert rec["actor"] == "system:expiry" and '"list_id":"internal"' in rec["details"]
    assert await pg.fetchval("SELECT count(*) FROM dnc_audit WHERE action = 'expire'") == 1
    # history: the number was on the list before it expired, and the chain still verifies
    before = soon - timedelta(seconds=0.5)
    ex = await stub.ExplainDecision(dnc_pb2.ExplainDecisionRequest(number="+12025550181", at=stamp(before)))
    assert not ex.decision.allowed
    assert (await stub.VerifyAudit(dnc_pb2.VerifyAuditRequest())).ok
