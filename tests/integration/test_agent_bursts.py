"""A burst of OfferCalls over one channel: every live answer gets an answer from the agent service.

gRPC core queues the calls that grpc.aio has not taken yet; with core's default limits it dropped them at
random past 1,000 waiting calls (the caller saw a bare CANCELLED), and a burst of Redis commands past the
pool's size failed with UNAVAILABLE. The dialer would have abandoned those answered calls."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from outdial.v1 import agent_pb2
from tests.conftest import Services
from tests.integration.test_agent_service import Console, dialer, offer_req

BURST = 3000
AGENTS = 8


@pytest.mark.timeout(180)
async def test_a_burst_of_offers_over_one_channel_is_answered_in_full(services: Services) -> None:
    rs = await services.start("agent")
    consoles = [Console(services, rs, f"burst{i}") for i in range(AGENTS)]
    for con in consoles:
        await con.login(("c1", 5))
        await con.connect()
    stub = dialer(services, rs)  # one channel, as one dialer replica has

    async def answer(n: int) -> str:
        try:
            resp: agent_pb2.OfferCallResponse = await stub.OfferCall(offer_req("c1", f"burst-call-{n}"))
        except grpc.aio.AioRpcError as exc:
            return f"error {exc.code().name}"
        return resp.agent_id if resp.assigned else f"not assigned: {resp.reason}"

    outcomes = await asyncio.gather(*(answer(n) for n in range(BURST)))

    counts = Counter(o if o.startswith(("error", "not assigned")) else "assigned" for o in outcomes)
    assert counts == {"assigned": AGENTS, "not assigned: no_agent_ready": BURST - AGENTS}, counts
    # Each agent got one call, and that call's offer reached their console.
    assigned = sorted(o for o in outcomes if not o.startswith(("error", "not assigned")))
    assert assigned == sorted(con.agent_id for con in consoles)
    for con in consoles:
        offer = await asyncio.wait_for(con.offers.get(), 10)
        assert offer.call_id.startswith("burst-call-")
        assert con.offers.empty()
