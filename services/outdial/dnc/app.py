"""Wiring of the dnc service: builds its stores and domain objects and registers its servicer."""

from __future__ import annotations

import grpc

from outdial.core.server import ServiceContext, ServiceSpec
from outdial.v1 import dnc_pb2_grpc


async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    dnc_pb2_grpc.add_DncServiceServicer_to_server(dnc_pb2_grpc.DncServiceServicer(), server)  # type: ignore[abstract]  # replaced by the service issue


SPEC = ServiceSpec(name="dnc", full_names=("outdial.v1.DncService",), setup=setup)
