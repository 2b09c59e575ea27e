"""Answering-machine detection and its false positives (issue 13, point 6; row ``uk.amd_false_positives``): a UK
campaign with AMD on starts only with its false-positive estimate and the estimate's basis, each refusal naming
the field; the statistics report the estimate and count the estimated false positives as abandoned; the pacing
budget's window counts them in the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import field_mask_pb2

from outdial.pacing import dialer
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2
from tests.conftest import Services

Stub = campaign_pb2_grpc.CampaignServiceStub


async def _stub(services: Services) -> Stub:
    rs = await services.start("campaign")
    return Stub(services.channel(rs, role="manager"))


def _uk(**kw: Any) -> campaign_pb2.Campaign:
    return campaign_pb2.Campaign(
        name="UK spring", caller_id="+442079460958", jurisdiction=common_pb2.JURISDICTION_UK,
        seller_name="Acme Ltd", opt_out_number="+442079460000", **kw,
    )  # fmt: skip


async def _refused(call: Any, code: grpc.StatusCode, *words: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is code, err.value.details()
    for w in words:
        assert w in (err.value.details() or ""), err.value.details()


async def test_a_uk_campaign_with_amd_starts_only_with_its_estimate_and_reports_it(
    services: Services, pg: asyncpg.Pool
) -> None:
    stub = await _stub(services)
    c = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=_uk()))).campaign
    assert c.amd == campaign_pb2.AMD_MODE_ON and not c.HasField("amd_false_positive_rate")
    start = campaign_pb2.StartCampaignRequest(campaign_id=c.id)
    await _refused(stub.StartCampaign(start), grpc.StatusCode.FAILED_PRECONDITION,
                   "amd_estimate_required", "amd_false_positive_rate", "Ofcom")  # fmt: skip

    # An estimate without its basis is refused when set, naming the basis.
    change = campaign_pb2.Campaign(id=c.id, amd_false_positive_rate=0.1)
    mask = field_mask_pb2.FieldMask(paths=["amd_false_positive_rate"])
    await _refused(stub.UpdateCampaign(campaign_pb2.UpdateCampaignRequest(campaign=change, update_mask=mask)),
                   grpc.StatusCode.INVALID_ARGUMENT, "[amd_false_positive_basis]")  # fmt: skip
    change = campaign_pb2.Campaign(id=c.id, amd_false_positive_rate=1.5, amd_false_positive_basis="x")
    mask = field_mask_pb2.FieldMask(paths=["amd_false_positive_rate", "amd_false_positive_basis"])
    await _refused(stub.UpdateCampaign(campaign_pb2.UpdateCampaignRequest(campaign=change, update_mask=mask)),
                   grpc.StatusCode.INVALID_ARGUMENT, "[amd_false_positive_rate]")  # fmt: skip

    basis = "listened to 400 machine-classified answers of March: 40 were people"
    change = campaign_pb2.Campaign(id=c.id, amd_false_positive_rate=0.1, amd_false_positive_basis=basis)
    c = (
        await stub.UpdateCampaign(campaign_pb2.UpdateCampaignRequest(campaign=change, update_mask=mask))
    ).campaign
    assert c.amd_false_positive_rate == pytest.approx(0.1) and c.amd_false_positive_basis == basis
    started = (await stub.StartCampaign(start)).campaign
    assert started.state == common_pb2.CAMPAIGN_STATE_ACTIVE

    # While active, the estimate cannot be taken away.
    clear = campaign_pb2.UpdateCampaignRequest(
        campaign=campaign_pb2.Campaign(id=c.id),
        update_mask=field_mask_pb2.FieldMask(paths=["amd_false_positive_rate"]),
    )
    await _refused(stub.UpdateCampaign(clear), grpc.StatusCode.FAILED_PRECONDITION, "amd_false_positive_rate")

    # 40 connected, 1 abandoned, 25 machine answers in the last hour: 10 % of 25 = 2.5, rounded up to 3
    # estimated false positives, counted as abandoned live answers: (1 + 3) / (41 + 3).
    end = datetime.now(UTC) - timedelta(hours=1)
    outcomes = ["connected"] * 40 + ["abandoned"] + ["machine"] * 25
    await pg.executemany(
        "INSERT INTO call_records (call_id, campaign_id, dial_at, end_at, outcome) VALUES ($1, $2, $3, $3, $4)",
        [(f"call{i}", c.id, end, o) for i, o in enumerate(outcomes)],
    )
    st = await stub.GetCampaignStats(campaign_pb2.GetCampaignStatsRequest(campaign_id=c.id))
    assert (
        st.amd and st.amd_false_positive_rate == pytest.approx(0.1) and st.amd_false_positive_basis == basis
    )
    assert st.amd_machine_answers == 25 and st.amd_estimated_false_positives == 3
    assert st.abandon_rate_window == pytest.approx(4 / 44)
    assert st.abandon_rate_24h == pytest.approx(4 / 44) and st.abandon_rate_30d == pytest.approx(4 / 44)
    assert st.abandoned == 1 and st.live_answers == 41  # the records themselves are not rewritten


async def test_amd_off_or_outside_the_uk_needs_no_estimate(services: Services, pg: asyncpg.Pool) -> None:
    stub = await _stub(services)
    off = (
        await stub.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=_uk(amd=campaign_pb2.AMD_MODE_OFF))
        )
    ).campaign
    assert (
        await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=off.id))
    ).campaign.state == (common_pb2.CAMPAIGN_STATE_ACTIVE)
    await pg.executemany(
        "INSERT INTO call_records (call_id, campaign_id, dial_at, end_at, outcome) VALUES ($1, $2, now(), now(), $3)",
        [("a1", off.id, "connected"), ("a2", off.id, "machine")],
    )
    st = await stub.GetCampaignStats(campaign_pb2.GetCampaignStatsRequest(campaign_id=off.id))
    assert not st.amd and st.amd_estimated_false_positives == 0 and not st.HasField("amd_false_positive_rate")
    us = campaign_pb2.Campaign(
        name="US spring", caller_id="+12125550100", seller_name="Acme Inc", opt_out_number="+12125550199"
    )
    made = (await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=us))).campaign
    assert made.amd == campaign_pb2.AMD_MODE_ON
    started = (await stub.StartCampaign(campaign_pb2.StartCampaignRequest(campaign_id=made.id))).campaign
    assert started.state == common_pb2.CAMPAIGN_STATE_ACTIVE


async def test_the_pacing_budget_counts_the_estimated_false_positives(redis: aioredis.Redis) -> None:
    key = "test:abandon"
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    members = {f"c{i}:h": now_ms - 1000 for i in range(30)}
    members |= {"x1:a": now_ms - 1000} | {f"m{i}:m": now_ms - 1000 for i in range(10)}
    members |= {"old:m": now_ms - 10_000_000}
    await redis.zadd(key, members)

    class Counter:
        _count = redis.register_script(dialer._COUNT_ABANDONED)
        _window_counts = dialer.Dialer._window_counts

    uk = {"jurisdiction": "UK", "amd_false_positive_rate": 0.25}
    since = now_ms - 3_600_000
    # 10 machine answers at 25 %: 2.5, rounded up to 3 false positives.
    assert await Counter()._window_counts(key, since, uk) == (31 + 3, 1 + 3)
    assert await Counter()._window_counts(key, since, {**uk, "amd": "off"}) == (31, 1)
    assert await Counter()._window_counts(key, since, {"jurisdiction": "UK"}) == (31, 1)
