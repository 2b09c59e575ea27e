"""Simulated agents (the importable module behind ``outdial sim agents``) and the ``outdial agent`` CLI
against a real agent service."""

from __future__ import annotations

import asyncio
import json

import pytest

from outdial.agent.simulated import Distribution, run_simulated_agents
from outdial.cli.main import main
from outdial.v1 import agent_pb2
from tests.conftest import Services, make_token
from tests.integration.test_agent_service import dialer, offer_req, wait_for


async def test_simulated_agents_take_calls_and_disposition_them(
    services: Services, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rs = await services.start("agent")
    stop, started = asyncio.Event(), asyncio.Event()
    sim = asyncio.create_task(
        run_simulated_agents(
            services.settings,
            [("c1", 5)],
            4,
            stop=stop,
            talk=Distribution(0.05),
            wrap=Distribution(0.02, "fixed"),
            seed=3,
            dispositions={"sale": 1.0},
            started=started,
            assign_token=make_token("manager"),  # assigned to c1 first: they log in only where assigned
        )
    )
    await asyncio.wait_for(started.wait(), 20)
    d = dialer(services, rs)

    assigned = 0

    async def all_assigned() -> bool:
        nonlocal assigned
        resp = await d.OfferCall(offer_req("c1", f"s{assigned}"))
        assigned += resp.assigned
        return assigned >= 12

    await wait_for(all_assigned, what="12 calls taken by simulated agents")

    monkeypatch.setenv("OUTDIAL_AGENT_ADDR", rs.addr)
    monkeypatch.setenv("OUTDIAL_DEV", "1")
    code = await asyncio.to_thread(
        main, ["agent", "list", "--campaign", "c1", "--json", "--token", make_token("manager")]
    )
    listed = json.loads(capsys.readouterr().out)
    assert code == 0 and sorted(a["agent_id"] for a in listed) == [f"sim-000{i}" for i in range(1, 5)]

    async def wrapped_up() -> bool:
        resp = await d.GetAgentCounts(agent_pb2.GetAgentCountsRequest(campaign_id="c1"))
        return resp.counts.ready == 4

    await wait_for(wrapped_up, what="agents back to ready")
    stop.set()
    agents = await asyncio.wait_for(sim, 20)
    assert sum(a.stats.offers for a in agents) == 12
    assert sum(a.stats.dispositions["sale"] for a in agents) == 12
    after = await d.GetAgentCounts(agent_pb2.GetAgentCountsRequest(campaign_id="c1"))
    assert after.counts.logged_in == 0
