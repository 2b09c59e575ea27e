"""Wiring of the campaign service: builds its stores and domain objects and registers its servicer."""

from __future__ import annotations

import grpc

from outdial.core.server import ServiceContext, ServiceSpec
from outdial.v1 import campaign_pb2_grpc


async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    campaign_pb2_grpc.add_CampaignServiceServicer_to_server(
        campaign_pb2_grpc.CampaignServiceServicer(),  # type: ignore[abstract]  # replaced by the service issue
        server,
    )


SPEC = ServiceSpec(name="campaign", full_names=("outdial.v1.CampaignService",), setup=setup)
