"""Starting a campaign needs the seller's legal name and a callback number the message can speak, each refusal
naming the field; every start and resume is audited in ``campaign_starts`` (issue 13, point 6)."""

from __future__ import annotations

import json

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import field_mask_pb2

from outdial.core import keys
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2
from tests.conftest import Services

Stub = campaign_pb2_grpc.CampaignServiceStub


async def _stub(services: Services) -> Stub:
    rs = await services.start("campaign")
    return Stub(services.channel(rs, role="manager"))


async def _update(stub: Stub, cid: str, **change: object) -> campaign_pb2.Campaign:
    res = await stub.UpdateCampaign(
        campaign_pb2.UpdateCampaignRequest(
            campaign=campaign_pb2.Campaign(id=cid, **change),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=list(change)),
        )
    )
    return res.campaign


async def _refused(call: object, code: grpc.StatusCode, *words: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() is code, err.value.details()
    for w in words:
        assert w in (err.value.details() or ""), err.value.details()


async def test_start_needs_the_sellers_legal_name_and_a_callback_number_and_is_audited(
    services: Services, pg: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    stub = await _stub(services)
    c = (
        await stub.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(
                campaign=campaign_pb2.Campaign(name="Spring push", caller_id="+12125550100")
            )
        )
    ).campaign
    start = campaign_pb2.StartCampaignRequest(campaign_id=c.id)
    # Nothing is taken from the campaign's name or caller ID: both refused, each naming its field.
    cfg = json.loads(await redis.hget(keys.campaign_config(c.id), "json"))
    assert cfg["seller_name"] == "" and cfg["opt_out_number"] == ""
    await _refused(stub.StartCampaign(start), grpc.StatusCode.FAILED_PRECONDITION, "seller_name_required",
                   "seller_name")  # fmt: skip
    await _refused(_update(stub, c.id, seller_name="spring push"), grpc.StatusCode.INVALID_ARGUMENT,
                   "[seller_name]", "internal name")  # fmt: skip
    await _update(stub, c.id, seller_name="Acme Solar LLC")
    await _refused(stub.StartCampaign(start), grpc.StatusCode.FAILED_PRECONDITION, "opt_out_number_required",
                   "opt_out_number")  # fmt: skip
    for bad, why in (("+19002345678", "premium-rate"), ("+442079460958", "not a number of US"),
                     ("2125550199", "E.164")):  # fmt: skip
        await _refused(_update(stub, c.id, opt_out_number=bad), grpc.StatusCode.INVALID_ARGUMENT,
                       "[opt_out_number]", why)  # fmt: skip
    # Not required to be the caller ID.
    await _update(stub, c.id, opt_out_number="+18002345678")
    started = (await stub.StartCampaign(start)).campaign
    assert started.state == common_pb2.CAMPAIGN_STATE_ACTIVE
    # While active, neither may be taken away.
    await _refused(_update(stub, c.id, seller_name=""), grpc.StatusCode.FAILED_PRECONDITION, "seller_name")
    await stub.PauseCampaign(campaign_pb2.PauseCampaignRequest(campaign_id=c.id))
    await _update(stub, c.id, seller_name="Spring push", seller_is_campaign_name=True)
    await stub.ResumeCampaign(campaign_pb2.ResumeCampaignRequest(campaign_id=c.id))

    rows = await pg.fetch("SELECT * FROM campaign_starts WHERE campaign_id = $1 ORDER BY id", c.id)
    assert [(r["action"], r["seller_name"], r["callback_number"], r["caller_id"], r["jurisdiction"])
            for r in rows] == [
        ("start", "Acme Solar LLC", "+18002345678", "+12125550100", "US"),
        ("resume", "Spring push", "+18002345678", "+12125550100", "US"),
    ]  # fmt: skip
    assert all(r["actor"].startswith("manager:") and r["at"] is not None for r in rows)
    assert rows[0]["at"] <= rows[1]["at"]


async def test_a_uk_campaign_needs_a_uk_callback_number(services: Services) -> None:
    stub = await _stub(services)
    c = campaign_pb2.Campaign(
        name="UK", caller_id="+442079460958", jurisdiction=common_pb2.JURISDICTION_UK,
        seller_name="Acme Ltd", opt_out_number="+12125550199", amd=campaign_pb2.AMD_MODE_OFF,
    )  # fmt: skip
    await _refused(stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c)),
                   grpc.StatusCode.INVALID_ARGUMENT, "[opt_out_number]", "not a number of GB")  # fmt: skip
    c.opt_out_number = "+448453334444"
    await _refused(stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c)),
                   grpc.StatusCode.INVALID_ARGUMENT, "[opt_out_number]", "premium-rate")  # fmt: skip
    c.opt_out_number = "+442079460000"
    made = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign
    started = (await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=made.id))).campaign
    assert started.state == common_pb2.CAMPAIGN_STATE_ACTIVE
