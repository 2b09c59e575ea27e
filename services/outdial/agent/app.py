"""Wiring of the agent service: builds its stores and domain objects and registers its servicer."""

from __future__ import annotations

import grpc

from outdial.core.server import ServiceContext, ServiceSpec
from outdial.v1 import agent_pb2_grpc


async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agent_pb2_grpc.AgentServiceServicer(), server)  # type: ignore[abstract]  # replaced by the service issue


SPEC = ServiceSpec(name="agent", full_names=("outdial.v1.AgentService",), setup=setup)
