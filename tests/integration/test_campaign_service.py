"""Campaign service over real gRPC, PostgreSQL and Redis: settings validation naming the field, lifecycle,
the campaign-config contract in Redis, scheduled start/end with APScheduler."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2

from outdial.core import keys
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2
from tests.conftest import Services


async def _stub(services: Services, role: str = "manager") -> campaign_pb2_grpc.CampaignServiceStub:
    rs = await services.start("campaign")
    return campaign_pb2_grpc.CampaignServiceStub(services.channel(rs, role=role))


async def _create(stub: campaign_pb2_grpc.CampaignServiceStub, **kw: object) -> campaign_pb2.Campaign:
    caller_id = str(kw.pop("caller_id", "+12125550100"))
    # What every start needs: the seller's legal name and a callback number (here the caller ID's own).
    c = campaign_pb2.Campaign(
        name=str(kw.pop("name", "Spring")),
        caller_id=caller_id,
        seller_name=str(kw.pop("seller_name", "Spring Solar LLC")),
        opt_out_number=str(kw.pop("opt_out_number", caller_id)),
    )
    for k, v in kw.items():
        setattr(c, k, v)
    return (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign


async def test_create_defaults_and_config_contract(services: Services, redis) -> None:  # type: ignore[no-untyped-def]
    stub = await _stub(services)
    c = await _create(stub, dial_mode=common_pb2.DIAL_MODE_PREDICTIVE)
    assert c.state == common_pb2.CAMPAIGN_STATE_DRAFT
    assert c.jurisdiction == common_pb2.JURISDICTION_US
    assert c.abandon_cap == pytest.approx(0.03)
    assert c.abandon_window.seconds == 30 * 86400
    assert (c.calling_window.start_local, c.calling_window.end_local) == ("08:00", "21:00")
    assert c.default_region == "US"
    cfg = json.loads(await redis.hget(keys.campaign_config(c.id), "json"))
    assert cfg["id"] == c.id and cfg["state"] == "draft" and cfg["dial_mode"] == "predictive"
    assert cfg["caller_id"] == "+12125550100" and cfg["jurisdiction"] == "US"
    assert cfg["calling_window"] == {
        "start_local": "08:00",
        "end_local": "21:00",
        "days_of_week": [1, 2, 3, 4, 5, 6, 7],
        "holiday_dates": [],
        "skip_public_holidays": False,
    }
    for k in (
        "abandon_cap",
        "abandon_window_s",
        "max_calls_per_number_24h",
        "ring_timeout_s",
        "seller_name",
        "opt_out_number",
        "default_region",
        "max_attempts_per_lead",
        "dispositions",
        "power_ratio",
        "max_lines_per_agent",
    ):
        assert k in cfg
    assert cfg["seller_name"] == "Spring Solar LLC" and cfg["opt_out_number"] == "+12125550100"
    assert not await redis.sismember(keys.active_campaigns(), c.id)

    uk = await _create(stub, name="UK", caller_id="+442079460958", jurisdiction=common_pb2.JURISDICTION_UK)
    assert uk.abandon_window.seconds == 86400 and uk.default_region == "GB"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"name": ""}, "name"),
        ({"caller_id": "12345"}, "caller_id"),
        ({"caller_id": "2125550100"}, "caller_id"),
        ({"abandon_cap": 0.05}, "abandon_cap"),
        ({"dial_mode": common_pb2.DIAL_MODE_POWER, "power_ratio": 0.5}, "power_ratio"),
        ({"default_region": "XX"}, "default_region"),
        ({"max_lines_per_agent": 99}, "max_lines_per_agent"),
    ],
)
async def test_invalid_settings_name_the_field(services: Services, kw: dict[str, object], field: str) -> None:
    stub = await _stub(services)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(stub, **kw)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"[{field}]" in (err.value.details() or "")


async def test_window_ring_and_retry_validation(services: Services) -> None:
    stub = await _stub(services)
    c = campaign_pb2.Campaign(name="x", caller_id="+12125550100")
    c.calling_window.start_local = "21:00"
    c.calling_window.end_local = "08:00"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))
    assert "[calling_window]" in (err.value.details() or "")
    c = campaign_pb2.Campaign(name="x", caller_id="+12125550100")
    c.ring_timeout.FromSeconds(8)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))
    assert "[ring_timeout]" in (err.value.details() or "")
    c = campaign_pb2.Campaign(name="x", caller_id="+442079460958", jurisdiction=common_pb2.JURISDICTION_UK)
    r = c.retry_rules.add(outcome=common_pb2.CALL_OUTCOME_ABANDONED, max_attempts=2)
    r.delay.FromSeconds(3600)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))
    assert "[retry_rules[0].delay]" in (err.value.details() or "")


async def test_lifecycle_and_active_set(services: Services, redis) -> None:  # type: ignore[no-untyped-def]
    stub = await _stub(services)
    c = await _create(stub, caller_id="", opt_out_number="+12125550199")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=c.id))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    upd = campaign_pb2.Campaign(id=c.id, caller_id="+12125550100")
    c = (
        await stub.UpdateCampaign(
            campaign_pb2.UpdateCampaignRequest(
                campaign=upd, update_mask=field_mask_pb2.FieldMask(paths=["caller_id"])
            )
        )
    ).campaign
    assert c.caller_id == "+12125550100" and c.name == "Spring"
    c = (await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=c.id))).campaign
    assert c.state == common_pb2.CAMPAIGN_STATE_ACTIVE
    assert await redis.sismember(keys.active_campaigns(), c.id)
    assert json.loads(await redis.hget(keys.campaign_config(c.id), "json"))["state"] == "active"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ArchiveCampaign(campaign_pb2.ArchiveCampaignRequest(campaign_id=c.id))
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await redis.zadd(keys.hopper(c.id), {"1": 1})
    c = (
        await stub.PauseCampaign(campaign_pb2.PauseCampaignRequest(campaign_id=c.id, reason="lunch"))
    ).campaign
    assert c.state == common_pb2.CAMPAIGN_STATE_PAUSED
    assert not await redis.sismember(keys.active_campaigns(), c.id)
    assert await redis.zcard(keys.hopper(c.id)) == 0
    c = (await stub.ResumeCampaign(campaign_pb2.ResumeCampaignRequest(campaign_id=c.id))).campaign
    assert c.state == common_pb2.CAMPAIGN_STATE_ACTIVE
    c = (await stub.CompleteCampaign(campaign_pb2.CompleteCampaignRequest(campaign_id=c.id))).campaign
    assert c.state == common_pb2.CAMPAIGN_STATE_COMPLETED
    for call in (
        stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=c.id)),
        stub.ResumeCampaign(campaign_pb2.ResumeCampaignRequest(campaign_id=c.id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateCampaign(
            campaign_pb2.UpdateCampaignRequest(campaign=campaign_pb2.Campaign(id=c.id, name="n"))
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    c = (await stub.ArchiveCampaign(campaign_pb2.ArchiveCampaignRequest(campaign_id=c.id))).campaign
    assert c.state == common_pb2.CAMPAIGN_STATE_ARCHIVED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id="nope"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


async def test_list_pages_and_filter(services: Services) -> None:
    stub = await _stub(services)
    ids = {(await _create(stub, name=f"c{i}")).id for i in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        resp = await stub.ListCampaigns(campaign_pb2.ListCampaignsRequest(page_size=2, page_token=token))
        seen += [c.id for c in resp.campaigns]
        token = resp.next_page_token
        if not token:
            break
    assert set(seen) == ids and len(seen) == 5
    one = next(iter(ids))
    await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=one))
    resp = await stub.ListCampaigns(
        campaign_pb2.ListCampaignsRequest(states=[common_pb2.CAMPAIGN_STATE_ACTIVE])
    )
    assert [c.id for c in resp.campaigns] == [one]


async def test_agent_role_cannot_create(services: Services) -> None:
    stub = await _stub(services, role="agent")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(stub)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_scheduled_start_and_end(services: Services, redis) -> None:  # type: ignore[no-untyped-def]
    stub = await _stub(services)
    now = datetime.now(UTC)
    c = campaign_pb2.Campaign(
        name="sched", caller_id="+12125550100", seller_name="Sched Co", opt_out_number="+12125550199"
    )
    c.scheduled_start.FromDatetime(now + timedelta(seconds=1))
    c.scheduled_end.FromDatetime(now + timedelta(seconds=2.5))
    c = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign

    async def state_is(want: int) -> None:
        for _ in range(300):
            got = (await stub.GetCampaign(campaign_pb2.GetCampaignRequest(campaign_id=c.id))).campaign.state
            if got == want:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"campaign never reached state {want}")

    await state_is(common_pb2.CAMPAIGN_STATE_ACTIVE)
    await state_is(common_pb2.CAMPAIGN_STATE_COMPLETED)
    assert not await redis.sismember(keys.active_campaigns(), c.id)


async def test_preview_starts_and_agentless_needs_an_informational_message(services: Services) -> None:
    """A preview campaign starts like any other. An agentless one is refused, with its reason, until it has
    a message and declares it informational: a prerecorded telemarketing call needs written consent that
    outdial cannot check yet, so it fails closed."""
    stub = await _stub(services)
    p = await _create(stub, dial_mode=common_pb2.DIAL_MODE_PREVIEW)
    assert p.preview_timeout.seconds == 30
    assert p.preview_timeout_action == campaign_pb2.PREVIEW_TIMEOUT_ACTION_DIAL
    started = (await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=p.id))).campaign
    assert started.state == common_pb2.CAMPAIGN_STATE_ACTIVE

    c = await _create(stub, dial_mode=common_pb2.DIAL_MODE_AGENTLESS)
    for change, error_id in (
        ({}, "agentless_message_required"),
        ({"agentless_message": "Your pharmacy order is ready."}, "consent_required"),
    ):
        if change:
            await stub.UpdateCampaign(
                campaign_pb2.UpdateCampaignRequest(
                    campaign=campaign_pb2.Campaign(id=c.id, **change),
                    update_mask=field_mask_pb2.FieldMask(paths=list(change)),
                )
            )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=c.id))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error_id in (err.value.details() or "")
    await stub.UpdateCampaign(
        campaign_pb2.UpdateCampaignRequest(
            campaign=campaign_pb2.Campaign(id=c.id, message_informational=True),
            update_mask=field_mask_pb2.FieldMask(paths=["message_informational"]),
        )
    )
    started = (await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=c.id))).campaign
    assert started.state == common_pb2.CAMPAIGN_STATE_ACTIVE
    assert started.agentless_message == "Your pharmacy order is ready." and started.message_informational


async def test_configs_come_back_after_redis_lost_its_data(services: Services, redis) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL is the truth: when Redis comes back empty, every config and the active set are written
    again, without restarting the service, so dialing resumes."""
    stub = await _stub(services)
    active = await _create(stub, name="On")
    await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=active.id))
    draft = await _create(stub, name="Off")
    await redis.flushdb()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline and not await redis.sismember(keys.active_campaigns(), active.id):
        await asyncio.sleep(0.1)
    assert await redis.smembers(keys.active_campaigns()) == {active.id}
    assert json.loads(await redis.hget(keys.campaign_config(active.id), "json"))["state"] == "active"
    assert json.loads(await redis.hget(keys.campaign_config(draft.id), "json"))["state"] == "draft"
