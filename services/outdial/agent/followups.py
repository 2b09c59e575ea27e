"""What a disposition sets off in other services: a "do not call" reaches DncService.RecordOptOut at once,
a callback reaches CampaignService.ScheduleCallback. When the other service cannot be reached, the row in
``agent_dispositions`` stays 'pending' and a background loop retries it (the agent.disposition event is
written in any case, so the DNC consumer can also pick the opt-out up). Nothing is dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import grpc

from outdial.agent.store import Dispositions
from outdial.core.config import ServiceName
from outdial.v1 import campaign_pb2, campaign_pb2_grpc, dnc_pb2, dnc_pb2_grpc

log = logging.getLogger("outdial.agent.followups")

DO_NOT_CALL = "do_not_call"
CALLBACK = "callback"
RPC_TIMEOUT_S = 2.0
#: Answers that a retry cannot change (the lead is not callable, the request is invalid): the row is marked
#: 'failed' with the reason. Anything else (down, overloaded, a permission an operator can still fix) is
#: retried.
FINAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


def _refused(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    """(status, last_error) for a follow-up the other service did not take."""
    if exc.code() in FINAL_CODES:
        return "failed", f"{exc.code().name}: {exc.details() or ''}"[:500]
    return "pending", exc.code().name


class Followups:
    def __init__(
        self, dispositions: Dispositions, channel: Callable[[ServiceName], grpc.aio.Channel]
    ) -> None:
        self.dispositions = dispositions
        self.channel = channel

    async def opt_out(
        self, row_id: int, *, number: str, campaign_id: str, call_id: str, agent_id: str
    ) -> bool:
        stub = dnc_pb2_grpc.DncServiceStub(self.channel("dnc"))
        try:
            await stub.RecordOptOut(
                dnc_pb2.RecordOptOutRequest(
                    number=number,
                    campaign_id=campaign_id,
                    call_id=call_id,
                    source="agent_disposition",
                    agent_id=agent_id,
                ),
                timeout=RPC_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            status, why = _refused(exc)
            log.warning(
                "DNC opt-out not delivered (%s); %s", why, "will retry" if status == "pending" else "refused"
            )
            await self.dispositions.mark(row_id, "dnc_status", status, why)
            return False
        await self.dispositions.mark(row_id, "dnc_status", "done")
        return True

    async def callback(
        self, row_id: int, *, campaign_id: str, lead_id: str, at: datetime, agent_id: str, note: str
    ) -> bool:
        stub = campaign_pb2_grpc.CampaignServiceStub(self.channel("campaign"))
        req = campaign_pb2.ScheduleCallbackRequest(
            campaign_id=campaign_id, lead_id=lead_id, agent_id=agent_id, note=note
        )
        req.at.FromDatetime(at)
        try:
            await stub.ScheduleCallback(req, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            status, why = _refused(exc)
            log.warning(
                "callback not delivered (%s); %s", why, "will retry" if status == "pending" else "refused"
            )
            await self.dispositions.mark(row_id, "callback_status", status, why)
            return False
        await self.dispositions.mark(row_id, "callback_status", "done")
        return True

    async def retry_pending(self) -> int:
        done = 0
        for row in await self.dispositions.pending():
            done += await self._retry_row(row)
        return done

    async def _retry_row(self, row: asyncpg.Record | dict[str, Any]) -> int:
        done = 0
        if row["dnc_status"] == "pending":
            done += await self.opt_out(
                row["id"],
                number=row["number"],
                campaign_id=row["campaign_id"],
                call_id=row["call_id"],
                agent_id=row["agent_id"],
            )
        if row["callback_status"] == "pending" and row["callback_at"] is not None:
            done += await self.callback(
                row["id"],
                campaign_id=row["campaign_id"],
                lead_id=row["lead_id"],
                at=row["callback_at"],
                agent_id=row["agent_id"],
                note=row["notes"],
            )
        return done

    async def run(self, ready: asyncio.Event, interval_s: float) -> None:
        await ready.wait()
        while True:
            try:
                await self.retry_pending()
            except Exception:
                log.exception("follow-up retry pass failed")
            await asyncio.sleep(interval_s)
