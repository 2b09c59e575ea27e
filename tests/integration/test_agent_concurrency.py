"""Many live answers racing many agents across TWO agent-service replicas never double-assign."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import grpc

from outdial.v1 import agent_pb2
from tests.conftest import Services
from tests.integration.test_agent_service import Console, dialer, offer_req


class BusyConsole(Console):
    """Takes every offer, holds it a moment, ends it and dispositions it; flags an offer that arrives while
    it already holds a call (a double assignment)."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.current: str | None = None
        self.received: list[str] = []
        self.overlaps = 0
        self.worker: asyncio.Task[None] | None = None

    async def work(self, rng: random.Random) -> None:
        while True:
            offer = await self.offers.get()
            if self.current is not None:
                self.overlaps += 1
            self.current = offer.call_id
            self.received.append(offer.call_id)
            await asyncio.sleep(rng.uniform(0.0, 0.03))
            try:
                await self.stub.EndCall(agent_pb2.EndCallRequest(call_id=offer.call_id))
                await self.stub.SetDisposition(
                    agent_pb2.SetDispositionRequest(call_id=offer.call_id, disposition="sale")
                )
            except grpc.aio.AioRpcError as exc:
                # The offer was withdrawn (deadline passed before the ack): the agent is ready again.
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            self.current = None


async def test_answers_racing_agents_on_two_replicas_never_double_assign(services: Services) -> None:
    r1 = await services.start("agent")
    r2 = await services.start("agent")
    rng = random.Random(7)
    consoles: list[BusyConsole] = []
    for i in range(24):
        con = BusyConsole(services, r1 if i % 2 else r2, f"ag{i}")
        await con.login(("c1", rng.randint(0, 9)), ("c2", rng.randint(0, 9)))
        await con.connect()
        con.worker = asyncio.create_task(con.work(rng))
        consoles.append(con)
    dialers = [dialer(services, r1), dialer(services, r2)]

    async def answer(n: int) -> agent_pb2.OfferCallResponse:
        resp: agent_pb2.OfferCallResponse = await dialers[n % 2].OfferCall(
            offer_req("c1" if n % 3 else "c2", f"call{n}")
        )
        return resp

    results: list[agent_pb2.OfferCallResponse] = []
    for wave in range(4):  # waves of 60 concurrent answers against 24 agents
        results += await asyncio.gather(*(answer(wave * 60 + i) for i in range(60)))
    assigned = {f"call{i}": r.agent_id for i, r in enumerate(results) if r.assigned}
    assert len(assigned) >= 24, f"only {len(assigned)} of 240 calls assigned to 24 agents"
    assert all(r.reason for r in results if not r.assigned)

    # Let workers finish the calls they hold.
    async def settled() -> bool:
        return all(c.current is None and c.offers.empty() for c in consoles)

    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while not await settled():
        assert loop.time() < end, "consoles did not settle"
        await asyncio.sleep(0.05)

    received = Counter(cid for c in consoles for cid in c.received)
    assert sum(c.overlaps for c in consoles) == 0, "an agent was offered a second call while holding one"
    # Each assigned call reached exactly the agent it was assigned to, and no one else.
    for call_id, agent_id in assigned.items():
        assert received[call_id] == 1, call_id
        assert call_id in next(c for c in consoles if c.agent_id == agent_id).received
    # A call that reached a console but was not assigned can only be one withdrawn at its deadline.
    assert all(n == 1 for n in received.values())
    for c in consoles:
        assert c.worker is not None
        c.worker.cancel()
        await c.kill()
