"""A "do not call" disposition reaches the real DNC service: at once when it is up, by background retry
when it was down."""

from __future__ import annotations

import asyncpg
import pytest

from outdial.v1 import agent_pb2
from tests.conftest import Services
from tests.integration.test_agent_service import Console, dialer, offer_req, wait_for


@pytest.fixture(autouse=True)
def _fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTDIAL_AGENT_FOLLOWUP_RETRY_S", "0.3")


async def _dnc_disposition(services: Services, call_id: str) -> None:
    rs = next(r for r in services.running.values() if r.name == "agent" and not r.task.done())
    con = Console(services, rs, "opt")
    await con.login(("c1", 1))
    await con.connect()
    assert (await dialer(services, rs).OfferCall(offer_req("c1", call_id))).assigned
    await con.stub.EndCall(agent_pb2.EndCallRequest(call_id=call_id))
    await con.stub.SetDisposition(agent_pb2.SetDispositionRequest(call_id=call_id, disposition="do_not_call"))
    await con.kill()


async def test_do_not_call_reaches_the_dnc_service_at_once(services: Services, pg: asyncpg.Pool) -> None:
    await services.start("dnc")
    await services.start("agent")
    await _dnc_disposition(services, "d1")
    assert await pg.fetchval("SELECT dnc_status FROM agent_dispositions WHERE call_id = 'd1'") == "done"


async def test_do_not_call_is_retried_until_the_dnc_service_is_back(
    services: Services, pg: asyncpg.Pool
) -> None:
    dnc = await services.start("dnc")
    await dnc.stop()  # the agent service will point at a DNC service that is down
    await services.start("agent")
    await _dnc_disposition(services, "d2")
    assert await pg.fetchval("SELECT dnc_status FROM agent_dispositions WHERE call_id = 'd2'") == "pending"
    await services.start("dnc", listen_port=dnc.port)

    async def delivered() -> bool:
        return await pg.fetchval("SELECT dnc_status FROM agent_dispositions WHERE call_id = 'd2'") == "done"

    await wait_for(delivered, timeout=30, what="DNC opt-out delivered by retry")
