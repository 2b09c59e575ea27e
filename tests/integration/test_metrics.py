"""Prometheus metrics: RPC counters and the DNC gate's decisions are exported on /metrics."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client import REGISTRY

from outdial.core.infra import free_port
from outdial.core.metrics import start_metrics_server
from outdial.v1 import dnc_pb2, dnc_pb2_grpc
from tests.conftest import Services


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_gate_decisions_and_rpcs_are_counted_and_served(services: Services) -> None:
    rs = await services.start("dnc")
    stub = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="compliance"))
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12125550143"], reason="metrics test"))
    rpc = {"service": "dnc", "method": "CheckNumbers", "code": "OK"}
    rpc_before = _value("outdial_rpc_total", rpc)
    before = {
        code: _value(
            "outdial_dnc_decisions_total", {"dial_time": "false", "result": "blocked", "reason": code}
        )
        for code in ("dnc.internal", "registry.missing")
    }
    resp = await stub.CheckNumbers(dnc_pb2.CheckNumbersRequest(numbers=["+12125550143"]))
    decision = resp.decisions[0]
    assert not decision.allowed and "dnc.internal" in {r.code for r in decision.reasons}
    first = decision.reasons[0].code
    labels = {"dial_time": "false", "result": "blocked", "reason": first}
    assert _value("outdial_dnc_decisions_total", labels) == before[first] + 1
    assert _value("outdial_rpc_total", rpc) == rpc_before + 1

    port = free_port()
    start_metrics_server("127.0.0.1", port)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    )
    assert f'outdial_dnc_decisions_total{{dial_time="false",reason="{first}",result="blocked"}}' in body
    assert "outdial_serving" in body


async def test_the_running_version_is_in_health_answers_and_metrics(services: Services) -> None:
    """`outdial --version`, the health answers (``outdial-version`` metadata) and ``outdial_build_info`` all
    say which version runs."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from outdial import __version__

    rs = await services.start("agent")
    async with grpc.aio.insecure_channel(rs.addr) as ch:
        call = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        await call
        assert dict(await call.initial_metadata())["outdial-version"] == __version__
    assert _value("outdial_build_info", {"service": "agent", "version": __version__}) == 1
