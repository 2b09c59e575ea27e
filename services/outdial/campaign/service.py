"""CampaignService: the gRPC glue over model/store/upload (thin: validation and SQL live there)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC
from typing import Any

import grpc
import phonenumbers

from outdial.campaign import model, retention, store
from outdial.campaign.events import EventConsumer
from outdial.campaign.feeder import Feeder
from outdial.campaign.model import CampaignRecord
from outdial.campaign.scheduler import CampaignScheduler
from outdial.campaign.settings import CampaignSettings
from outdial.campaign.upload import LeadUpload, UploadSummary
from outdial.core import keys, versions
from outdial.core.auth import Role, current_actor, current_principal
from outdial.core.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from outdial.core.metrics import LEAD_ROWS
from outdial.core.server import ServiceContext
from outdial.rules.table import load_tables
from outdial.v1 import campaign_pb2, campaign_pb2_grpc

log = logging.getLogger("outdial.campaign")


class CampaignServicer(campaign_pb2_grpc.CampaignServiceServicer):
    def __init__(
        self,
        ctx: ServiceContext,
        settings: CampaignSettings,
        on_change: Callable[[CampaignRecord], Awaitable[None]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.on_change = on_change
        # The running background parts, set by app.setup (tests and tools reach them here).
        self.feeder: Feeder | None = None
        self.consumer: EventConsumer | None = None
        self.scheduler: CampaignScheduler | None = None
        # Years call records are kept, None: each jurisdiction's minimum (campaign/retention.py; checked here,
        # at start: a setting below the rules' minimum refuses the service).
        self.retention_years = retention.retention_years(
            settings.retention_years, load_tables(), ctx.clock.now().date()
        )

    async def _changed(self, rec: CampaignRecord) -> None:
        await store.publish(self.ctx.redis, rec)
        if self.on_change is not None:
            await self.on_change(rec)

    # ------------------------------------------------------------------------------- campaigns

    async def CreateCampaign(
        self, request: campaign_pb2.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.CreateCampaignResponse:
        if not request.HasField("campaign"):
            raise InvalidArgument("campaign is required", field="campaign")
        name, desc, s, start, end = model.apply_proto(None, request.campaign, None)
        rec = await store.insert_campaign(
            self.ctx.pool,
            name=name,
            description=desc,
            settings=s,
            start=start,
            end=end,
            actor=current_actor(),
            now=self.ctx.clock.now(),
        )
        await self._changed(rec)
        return campaign_pb2.CreateCampaignResponse(campaign=rec.to_proto())

    async def UpdateCampaign(
        self, request: campaign_pb2.UpdateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.UpdateCampaignResponse:
        cid = request.campaign.id
        paths = list(request.update_mask.paths) or None
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            rec = await store.get_campaign(conn, cid, lock=True)
            if rec.state in ("completed", "archived"):
                raise FailedPrecondition(
                    f"a {rec.state} campaign cannot be changed", error_id="campaign_closed"
                )
            name, desc, s, start, end = model.apply_proto(rec, request.campaign, paths)
            if rec.state == "active" and not s.get("caller_id"):
                raise InvalidArgument("an active campaign needs a caller ID", field="caller_id")
            if rec.state == "active":
                model.check_message_identity(name, s)
                model.check_amd(s)
            before = rec
            now = self.ctx.clock.now()
            rec = await store.update_campaign(
                conn, cid, name=name, description=desc, settings=s, start=start, end=end, now=now
            )
            # Versioned and audited in the same transaction: who, when, the whole settings, what changed.
            await store.record_version(conn, before, rec, current_actor(), now)
        await self._changed(rec)
        return campaign_pb2.UpdateCampaignResponse(campaign=rec.to_proto())

    async def ListCampaignVersions(
        self, request: campaign_pb2.ListCampaignVersionsRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.ListCampaignVersionsResponse:
        rows = await store.list_versions(self.ctx.pool, request.campaign_id)
        return campaign_pb2.ListCampaignVersionsResponse(versions=[versions.to_pb(r) for r in rows])

    async def RunRetention(
        self, request: campaign_pb2.RunRetentionRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.RunRetentionResponse:
        out = await self.run_retention(dry_run=request.dry_run, actor=current_actor())
        return campaign_pb2.RunRetentionResponse(
            run_ids=out.run_ids,
            dry_run=request.dry_run,
            years=self.retention_years or 0,
            floors=out.floors,
            removed=out.removed,
        )

    async def run_retention(self, *, dry_run: bool, actor: str) -> retention.RunResult:
        """The retention job (scheduled in app.setup, or RunRetention): every batch recorded in
        retention_runs by the database."""

        async def prune(
            years: int, dry: bool, who: str, limit: int
        ) -> tuple[int, dict[str, int], dict[str, int]]:
            return await store.prune(self.ctx.pool, years, dry, who, limit)

        return await retention.run(
            prune,
            retention.years_asked(self.retention_years, load_tables(), self.ctx.clock.now().date()),
            dry_run=dry_run,
            actor=actor,
            batch=self.settings.retention_batch,
            max_batches=self.settings.retention_max_batches,
        )

    async def GetCampaign(
        self, request: campaign_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.GetCampaignResponse:
        rec = await store.get_campaign(self.ctx.pool, request.campaign_id)
        return campaign_pb2.GetCampaignResponse(campaign=rec.to_proto())

    async def ListCampaigns(
        self, request: campaign_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.ListCampaignsResponse:
        size = request.page_size or 100
        if size < 0 or size > 1000:
            raise InvalidArgument("page_size must be between 1 and 1000", field="page_size")
        states = [model.state_from_proto(s) for s in request.states if s]
        recs = await store.list_campaigns(self.ctx.pool, states, size + 1, request.page_token or None)
        more = len(recs) > size
        recs = recs[:size]
        return campaign_pb2.ListCampaignsResponse(
            campaigns=[r.to_proto() for r in recs], next_page_token=recs[-1].id if more and recs else ""
        )

    async def _move(self, cid: str, action: str) -> CampaignRecord:
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            rec = await store.get_campaign(conn, cid, lock=True)
            to = model.transition(rec, action)
            now = self.ctx.clock.now()
            rec = await store.set_state(conn, cid, to, now)
            if to == "active":
                # Who started it, when, and the identity the message speaks from now on: one row, appended
                # in the same transaction as the move.
                await store.record_start(conn, rec, action, current_actor(), now)
        log.info("campaign %s: %s -> %s by %s", cid, action, to, current_actor())
        await self._changed(rec)
        return rec

    async def StartCampaign(
        self, request: campaign_pb2.StartCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.StartCampaignResponse:
        return campaign_pb2.StartCampaignResponse(
            campaign=(await self._move(request.campaign_id, "start")).to_proto()
        )

    async def PauseCampaign(
        self, request: campaign_pb2.PauseCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.PauseCampaignResponse:
        return campaign_pb2.PauseCampaignResponse(
            campaign=(await self._move(request.campaign_id, "pause")).to_proto()
        )

    async def ResumeCampaign(
        self, request: campaign_pb2.ResumeCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.ResumeCampaignResponse:
        return campaign_pb2.ResumeCampaignResponse(
            campaign=(await self._move(request.campaign_id, "resume")).to_proto()
        )

    async def CompleteCampaign(
        self, request: campaign_pb2.CompleteCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.CompleteCampaignResponse:
        return campaign_pb2.CompleteCampaignResponse(
            campaign=(await self._move(request.campaign_id, "complete")).to_proto()
        )

    async def ArchiveCampaign(
        self, request: campaign_pb2.ArchiveCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.ArchiveCampaignResponse:
        return campaign_pb2.ArchiveCampaignResponse(
            campaign=(await self._move(request.campaign_id, "archive")).to_proto()
        )

    # ------------------------------------------------------------------------------- leads

    async def UploadLeads(
        self,
        request_iterator: AsyncIterator[campaign_pb2.UploadLeadsRequest],
        context: grpc.aio.ServicerContext,
    ) -> campaign_pb2.UploadLeadsResponse:
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument("empty upload: send the header first", field="header") from None
        if first.WhichOneof("payload") != "header":
            raise InvalidArgument("the first message must carry the header", field="header")
        h = first.header
        rec = await store.get_campaign(self.ctx.pool, h.campaign_id)
        if rec.state in ("completed", "archived"):
            raise FailedPrecondition(
                f"cannot add leads to a {rec.state} campaign", error_id="campaign_closed"
            )
        if h.request_id:
            prior = await store.find_list_by_request(self.ctx.pool, rec.id, h.request_id)
            if prior is not None:
                return _summary_proto_from_row(prior)
        region = (h.default_region or rec.settings["default_region"]).upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise InvalidArgument(f"{h.default_region!r} is not an ISO 3166 region", field="default_region")

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in it:
                if msg.WhichOneof("payload") != "chunk":
                    raise InvalidArgument("only chunks may follow the header", field="chunk")
                yield msg.chunk

        async with self.ctx.pool.acquire() as conn:
            up = LeadUpload(
                conn,
                campaign_id=rec.id,
                jurisdiction=rec.settings["jurisdiction"],
                default_region=region,
                mapping=dict(h.column_mapping),
                file_name=h.file_name,
                request_id=h.request_id,
                actor=current_actor(),
                now=self.ctx.clock.now(),
                max_bytes=self.settings.upload_max_bytes,
                max_line=self.settings.upload_max_line_bytes,
                batch_rows=self.settings.upload_batch_rows,
                max_columns=self.settings.upload_max_columns,
                statement_timeout_s=self.settings.upload_statement_timeout_s,
            )
            summary = await up.run(chunks())
        log.info(
            "lead list %s for campaign %s: %d rows, %d accepted, %d duplicates, %d rejected",
            summary.list_id,
            rec.id,
            summary.rows,
            summary.accepted,
            summary.duplicates,
            summary.rejected,
        )
        for result, n in (
            ("accepted", summary.accepted),
            ("duplicate", summary.duplicates),
            ("rejected", summary.rejected),
        ):
            LEAD_ROWS.labels(result).inc(n)
        return _summary_proto(summary)

    async def GetLeadList(
        self, request: campaign_pb2.GetLeadListRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.GetLeadListResponse:
        row = await store.get_list(self.ctx.pool, request.list_id)
        return campaign_pb2.GetLeadListResponse(list=_list_proto(row))

    async def ListLeadLists(
        self, request: campaign_pb2.ListLeadListsRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.ListLeadListsResponse:
        prefix = request.id_prefix.lower()
        if prefix and not re.fullmatch(r"[0-9a-f]{1,32}", prefix):
            raise InvalidArgument("id_prefix is a list ID's first hexadecimal digits", field="id_prefix")
        if request.campaign_id or not prefix:
            await store.get_campaign(self.ctx.pool, request.campaign_id)
        rows = await store.lists_of(self.ctx.pool, request.campaign_id, prefix)
        return campaign_pb2.ListLeadListsResponse(lists=[_list_proto(r) for r in rows])

    async def ListLeadRejects(
        self, request: campaign_pb2.ListLeadRejectsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[campaign_pb2.ListLeadRejectsResponse]:
        await store.get_list(self.ctx.pool, request.list_id)
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            cur = conn.cursor(
                """SELECT row_number, field, raw_value, reason, detail FROM lead_rejects WHERE list_id = $1
                   ORDER BY row_number, field""",
                request.list_id,
                prefetch=1000,
            )
            page: list[campaign_pb2.LeadReject] = []
            async for r in cur:
                page.append(campaign_pb2.LeadReject(**dict(r)))
                if len(page) >= 1000:
                    yield campaign_pb2.ListLeadRejectsResponse(rejects=page)
                    page = []
            if page:
                yield campaign_pb2.ListLeadRejectsResponse(rejects=page)

    # ------------------------------------------------------------------------------- stats, callbacks

    async def GetCampaignStats(
        self, request: campaign_pb2.GetCampaignStatsRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.GetCampaignStatsResponse:
        rec = await store.get_campaign(self.ctx.pool, request.campaign_id)
        st = await store.stats(self.ctx.pool, rec.id, self.ctx.clock.now(), rec.settings)
        hopper = int(await self.ctx.redis.zcard(keys.hopper(rec.id)))
        return campaign_pb2.GetCampaignStatsResponse(
            campaign_id=rec.id,
            leads_by_state=st["leads_by_state"],
            leads_total=st["leads_total"],
            attempts=st["attempts"],
            live_answers=st["live_answers"],
            connected=st["connected"],
            abandoned=st["abandoned"],
            abandon_rate_24h=st["abandon_rate_24h"],
            abandon_rate_30d=st["abandon_rate_30d"],
            contacts_per_hour=st["contacts_per_hour"],
            list_penetration=(st["touched"] / st["leads_total"]) if st["leads_total"] else 0.0,
            outcomes=st["outcomes"],
            blocked=st["blocked"],
            hopper_size=hopper,
            abandon_cap=float(rec.settings["abandon_cap"]),
            leads_need_consent=st["leads_need_consent"],
            leads_need_fresh_list=st["leads_need_fresh_list"],
            abandon_rate_window=st["abandon_rate_window"],
            amd=st["amd"],
            amd_false_positive_rate=st["amd_false_positive_rate"],
            amd_false_positive_basis=st["amd_false_positive_basis"],
            amd_machine_answers=st["amd_machine_answers"],
            amd_estimated_false_positives=st["amd_estimated_false_positives"],
        )

    async def ScheduleCallback(
        self, request: campaign_pb2.ScheduleCallbackRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.ScheduleCallbackResponse:
        """A callback for a lead of the campaign in the request (managers: any of its leads). An agent may
        ask only for the lead of the call they were last connected to, and the callback is theirs. A closed
        lead is never reopened (store.CALLBACK_REOPENS)."""
        rec = await store.get_campaign(self.ctx.pool, request.campaign_id)
        try:
            lead_id = int(request.lead_id)
        except ValueError:
            raise InvalidArgument(f"lead_id {request.lead_id!r} is not a lead id", field="lead_id") from None
        if not request.HasField("at"):
            raise InvalidArgument("at (when to call back) is required", field="at")
        if rec.state in ("completed", "archived"):
            raise FailedPrecondition(f"a {rec.state} campaign takes no callbacks", error_id="campaign_closed")
        at = request.at.ToDatetime(tzinfo=UTC)
        agent_id = request.agent_id.strip()
        principal = current_principal()
        if principal.role is Role.AGENT:
            if agent_id and agent_id != principal.subject:
                raise PermissionDenied(
                    f"an agent routes a callback only to themselves, not {agent_id!r}", error_id="not_self"
                )
            agent_id = principal.subject
            if await store.last_call_of(self.ctx.pool, agent_id) != (rec.id, lead_id):
                raise PermissionDenied(
                    "an agent may schedule a callback only for the lead of their own last call",
                    error_id="not_own_call",
                )
        cb = await store.schedule_callback(
            self.ctx.pool, rec.id, lead_id, at, agent_id, request.note, current_actor()
        )
        resp = campaign_pb2.ScheduleCallbackResponse(callback_id=cb)
        resp.at.FromDatetime(at)
        return resp


def _summary_proto(s: UploadSummary) -> campaign_pb2.UploadLeadsResponse:
    return campaign_pb2.UploadLeadsResponse(
        list_id=s.list_id,
        rows=s.rows,
        accepted=s.accepted,
        duplicates=s.duplicates,
        rejected=s.rejected,
        rejected_by_reason=s.rejected_by_reason,
        committed=s.committed,
        numbers_accepted=s.numbers_accepted,
    )


def _reasons(v: Any) -> dict[str, int]:
    d = json.loads(v) if isinstance(v, str) else dict(v or {})
    return {str(k): int(n) for k, n in d.items()}


def _summary_proto_from_row(r: Any) -> campaign_pb2.UploadLeadsResponse:
    return campaign_pb2.UploadLeadsResponse(
        list_id=r["id"],
        rows=r["rows"],
        accepted=r["accepted"],
        duplicates=r["duplicates"],
        rejected=r["rejected"],
        rejected_by_reason=_reasons(r["rejected_by_reason"]),
        committed=True,
        numbers_accepted=r["numbers_accepted"],
    )


def _list_proto(r: Any) -> campaign_pb2.LeadList:
    m = campaign_pb2.LeadList(
        id=r["id"],
        campaign_id=r["campaign_id"],
        file_name=r["file_name"],
        rows=r["rows"],
        accepted=r["accepted"],
        duplicates=r["duplicates"],
        rejected=r["rejected"],
        rejected_by_reason=_reasons(r["rejected_by_reason"]),
        uploaded_by=r["uploaded_by"],
        sha256=r["sha256"],
    )
    m.uploaded_at.FromDatetime(r["uploaded_at"])
    return m
