"""Wiring of the pacing service: builds its stores and domain objects and registers its servicer."""

from __future__ import annotations

import grpc

from outdial.core.server import ServiceContext, ServiceSpec
from outdial.v1 import pacing_pb2_grpc


async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    pacing_pb2_grpc.add_PacingServiceServicer_to_server(pacing_pb2_grpc.PacingServiceServicer(), server)  # type: ignore[abstract]  # replaced by the service issue


SPEC = ServiceSpec(name="pacing", full_names=("outdial.v1.PacingService",), setup=setup)
