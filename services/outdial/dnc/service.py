"""gRPC glue of the DncService: protobuf <-> domain objects, nothing else."""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from outdial.core.auth import Role, current_actor, current_principal
from outdial.core.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from outdial.core.jurisdictions import jurisdiction_from_pb, jurisdiction_to_pb
from outdial.core.metrics import DNC_DECISIONS
from outdial.dnc import gate, store
from outdial.dnc.audit import AuditRecord
from outdial.dnc.engine import CallSpec, DialerDecision, DncEngine, Evidence
from outdial.dnc.verify import verification_response
from outdial.rules.consent import AUTODIALLED, MANUAL, PRERECORDED
from outdial.v1 import common_pb2, dnc_pb2, dnc_pb2_grpc

KIND_TO_PB = {
    "internal": dnc_pb2.LIST_KIND_INTERNAL,
    "campaign": dnc_pb2.LIST_KIND_CAMPAIGN,
    "national": dnc_pb2.LIST_KIND_NATIONAL,
    "state": dnc_pb2.LIST_KIND_STATE,
    "wireless": dnc_pb2.LIST_KIND_WIRELESS,
}
PB_TO_KIND = {v: k for k, v in KIND_TO_PB.items()}
#: How far in the future a consent's obtained_at may be (clock skew between the caller and us).
CONSENT_CLOCK_SKEW = timedelta(minutes=5)
#: The one identity whose checks are dial-time evidence in the audit log.
DIAL_TIME_SERVICE = "pacing"
RND_ANSWER = {
    "yes": dnc_pb2.RND_ANSWER_YES,
    "no": dnc_pb2.RND_ANSWER_NO,
    "no_data": dnc_pb2.RND_ANSWER_NO_DATA,
}
#: The proto's consent kinds as the rules table names them (rules/data/*.yaml ``requires_any``).
CONSENT = {
    dnc_pb2.CONSENT_KIND_EXPRESS: "prior_express_consent",
    dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN: "prior_express_written_consent",
    dnc_pb2.CONSENT_KIND_EXISTING_BUSINESS_RELATIONSHIP: "established_business_relationship",
    dnc_pb2.CONSENT_KIND_CAMPAIGN_OPT_IN: "campaign_opt_in",
}
EBR_BASIS = {dnc_pb2.EBR_BASIS_PURCHASE: "purchase", dnc_pb2.EBR_BASIS_INQUIRY: "inquiry"}
CHANNEL = {dnc_pb2.INBOUND_CHANNEL_SMS: "sms", dnc_pb2.INBOUND_CHANNEL_EMAIL: "email"}
#: The call type of a check (unspecified: the dialer's usual autodialled telemarketing call).
METHODS = {
    common_pb2.CALL_METHOD_UNSPECIFIED: AUTODIALLED,
    common_pb2.CALL_METHOD_AUTODIALLED: AUTODIALLED,
    common_pb2.CALL_METHOD_PRERECORDED: PRERECORDED,
    common_pb2.CALL_METHOD_MANUAL: MANUAL,
}
PURPOSES = {
    common_pb2.CALL_PURPOSE_UNSPECIFIED: "telemarketing",
    common_pb2.CALL_PURPOSE_TELEMARKETING: "telemarketing",
    common_pb2.CALL_PURPOSE_INFORMATIONAL: "informational",
}


def call_spec(method: int, purpose: int) -> CallSpec:
    if method not in METHODS:
        raise InvalidArgument(f"unknown call_method {method}", field="call_method")
    if purpose not in PURPOSES:
        raise InvalidArgument(f"unknown call_purpose {purpose}", field="call_purpose")
    return CallSpec(METHODS[method], PURPOSES[purpose])  # type: ignore[index]


def ts(dt: datetime | None) -> Timestamp | None:
    if dt is None:
        return None
    t = Timestamp()
    t.FromDatetime(dt.astimezone(UTC))
    return t


def from_ts(t: Timestamp, has: bool) -> datetime | None:
    if not has:
        return None
    return t.ToDatetime(tzinfo=UTC)


def reason_pb(r: gate.Reason) -> dnc_pb2.BlockReason:
    return dnc_pb2.BlockReason(
        code=r.code,
        list_id=r.list_id,
        list_kind=KIND_TO_PB.get(r.list_kind, dnc_pb2.LIST_KIND_UNSPECIFIED),
        since=ts(r.since),
        expires_at=ts(r.expires_at),
        detail=r.detail,
    )


def decision_pb(d: gate.Decision, seq: int = 0) -> dnc_pb2.NumberDecision:
    return dnc_pb2.NumberDecision(
        number=d.number, allowed=d.allowed, reasons=[reason_pb(r) for r in d.reasons], audit_seq=seq
    )


def record_pb(r: AuditRecord) -> dnc_pb2.AuditRecord:
    return dnc_pb2.AuditRecord(
        seq=r.seq,
        at=ts(r.at),
        actor=r.actor,
        action=r.action,
        number=r.number,
        campaign_id=r.campaign_id,
        result=r.result,
        reason=r.reason,
        details_json=r.details,
        prev_hash=r.prev_hash,
        hash=r.hash,
        call_id=r.call_id,
    )


def _dialer_decision(i: int, d: dnc_pb2.DialerDecision) -> DialerDecision:
    """One ``dialer`` entry of a CheckNumbers request: its inputs must be a JSON object (kept verbatim)."""
    try:
        inputs = json.loads(d.inputs_json) if d.inputs_json else {}
    except ValueError as exc:
        raise InvalidArgument(f"dialer[{i}].inputs_json is not JSON: {exc}", field="dialer") from exc
    if not isinstance(inputs, dict):
        raise InvalidArgument(f"dialer[{i}].inputs_json must be a JSON object", field="dialer")
    codes = tuple(d.blocked)
    if any(not c.strip() for c in codes):
        raise InvalidArgument(f"dialer[{i}].blocked has an empty code", field="dialer")
    return DialerDecision(codes, inputs)


def _token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"a1:{seq}".encode()).decode()


def _untoken(tok: str) -> int:
    try:
        kind, seq = base64.urlsafe_b64decode(tok.encode()).decode().split(":", 1)
        if kind != "a1":
            raise ValueError(kind)
        return int(seq)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("bad page token", field="page_token") from exc


class DncServicer(dnc_pb2_grpc.DncServiceServicer):
    def __init__(self, engine: DncEngine) -> None:
        self.engine = engine

    def _list(self, req: Any) -> gate.ListInfo:
        return self.engine.resolve_list(
            req.list_id,
            PB_TO_KIND.get(req.list_kind, ""),
            req.campaign_id,
            req.state,
            jurisdiction_from_pb(req.jurisdiction),
        )

    async def CheckNumbers(
        self, request: dnc_pb2.CheckNumbersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.CheckNumbersResponse:
        if request.dial_time and current_principal().service != DIAL_TIME_SERVICE:
            # A dial-time check is audited as the evidence of a dial: only the dialer writes that evidence.
            raise PermissionDenied(
                "dial_time checks are for the pacing service only (they are audited as dials)",
                error_id="dial_time_not_pacing",
            )
        decisions, seqs = await self.engine.check(
            list(request.numbers),
            request.campaign_id,
            jurisdiction_from_pb(request.jurisdiction),
            dial_time=request.dial_time,
            call_ids=list(request.call_ids),
            actor=current_actor(),
            call=call_spec(request.call_method, request.call_purpose),
            dialer=[_dialer_decision(i, d) for i, d in enumerate(request.dialer)],
        )
        when = "true" if request.dial_time else "false"
        for d in decisions:
            DNC_DECISIONS.labels(
                when, "allowed" if d.allowed else "blocked", d.reasons[0].code if d.reasons else ""
            ).inc()
        return dnc_pb2.CheckNumbersResponse(
            decisions=[decision_pb(d, s) for d, s in zip(decisions, seqs, strict=True)]
        )

    async def AddNumbers(
        self, request: dnc_pb2.AddNumbersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.AddNumbersResponse:
        li = self._list(request)
        if li.kind == "national":
            raise FailedPrecondition("national registry lists change only by ImportRegistry")
        ok, bad = await self.engine.parse_batch(list(request.numbers), li.jurisdiction)
        if not ok and not bad:
            raise InvalidArgument("no numbers given", field="numbers")
        added, _ = await self.engine.add(
            li,
            ok,
            actor=current_actor(),
            reason=request.reason,
            source=request.source or "api",
            expires_at=from_ts(request.expires_at, request.HasField("expires_at")),
        )
        return dnc_pb2.AddNumbersResponse(
            added=len(added), already_present=len(ok) - len(added), invalid=bad, list_id=li.id
        )

    async def RemoveNumbers(
        self, request: dnc_pb2.RemoveNumbersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.RemoveNumbersResponse:
        li = self._list(request)
        if not request.reason:
            raise InvalidArgument("a removal needs a reason (it is audited)", field="reason")
        ok, _bad = await self.engine.parse_batch(list(request.numbers), li.jurisdiction)
        removed = await self.engine.remove(li, ok, actor=current_actor(), reason=request.reason)
        return dnc_pb2.RemoveNumbersResponse(
            removed=len(removed), not_present=len(request.numbers) - len(removed), list_id=li.id
        )

    async def ListLists(
        self, request: dnc_pb2.ListListsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.ListListsResponse:
        async with self.engine.pool.acquire() as conn:
            rows = await store.list_counts(conn)
        return dnc_pb2.ListListsResponse(
            lists=[
                dnc_pb2.DncList(
                    id=li.id,
                    kind=KIND_TO_PB[li.kind],
                    name=li.name,
                    jurisdiction=jurisdiction_to_pb(li.jurisdiction),
                    state=li.state,
                    campaign_id=li.campaign_id,
                    entries=n,
                    registry_date=ts(li.registry_date),
                    updated_at=ts(updated),
                )
                for li, n, updated in rows
            ]
        )

    async def ImportRegistry(
        self,
        request_iterator: AsyncIterator[dnc_pb2.ImportRegistryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dnc_pb2.ImportRegistryResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("the first message must be the header", field="header")
        h = first.header
        kind = PB_TO_KIND.get(h.list_kind, "national")
        li = self.engine.resolve_list(
            h.list_id, kind, "", h.state, jurisdiction_from_pb(h.jurisdiction, "US")
        )
        if li.kind in ("internal", "campaign"):
            raise InvalidArgument("import into national, state or wireless lists", field="list_kind")
        downloaded = from_ts(h.downloaded_at, h.HasField("downloaded_at"))
        if downloaded is None:
            raise InvalidArgument(
                "downloaded_at is required (the registry copy's age is checked)", field="downloaded_at"
            )
        mode = "changes" if h.mode == dnc_pb2.IMPORT_MODE_CHANGES else "full"

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in request_iterator:
                if msg.HasField("header"):
                    raise InvalidArgument("only one header", field="header")
                yield msg.chunk

        res = await self.engine.import_registry(
            li, mode, downloaded, chunks(), actor=current_actor(), source=h.source or "import"
        )
        return dnc_pb2.ImportRegistryResponse(
            list_id=res.list_id,
            lines=res.lines,
            added=res.added,
            removed=res.removed,
            invalid=res.invalid,
            invalid_samples=res.invalid_samples,
            index_version=res.index_version,
        )

    def _one_number(self, raw: str) -> str:
        """The request's ``number`` in E.164, or INVALID_ARGUMENT naming the field."""
        ok, bad = self.engine.normalise_many([raw])
        if bad or not ok:
            raise InvalidArgument("not a phone number", field="number")
        return ok[0]

    async def QueryAudit(
        self, request: dnc_pb2.QueryAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[dnc_pb2.QueryAuditResponse]:
        number = self._one_number(request.number) if request.number else ""
        f = store.AuditFilter(
            number=number,
            campaign_id=request.campaign_id,
            since=from_ts(request.since, request.HasField("since")),
            until=from_ts(request.until, request.HasField("until")),
            actor=request.actor,
            action=request.action,
            result=request.result,
        )
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative", field="page_size")
        after = _untoken(request.page_token) if request.page_token else 0
        one_page = request.page_size > 0 or bool(request.page_token)
        size = min(request.page_size or 1000, 5000)
        while True:
            async with self.engine.pool.acquire() as conn:
                recs = await store.query_audit(conn, f, after, size + 1)
            more = len(recs) > size
            recs = recs[:size]
            after = recs[-1].seq if recs else after
            yield dnc_pb2.QueryAuditResponse(
                records=[record_pb(r) for r in recs], next_page_token=_token(after) if more else ""
            )
            if one_page or not more:
                return

    async def VerifyAudit(
        self, request: dnc_pb2.VerifyAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.VerifyAuditResponse:
        if request.from_seq < 0:
            raise InvalidArgument("from_seq must be 0 or more", field="from_seq")
        v = await self.engine.verify(request.from_seq)
        return verification_response(v)

    async def ExplainDecision(
        self, request: dnc_pb2.ExplainDecisionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.ExplainDecisionResponse:
        number = self._one_number(request.number)
        at = from_ts(request.at, request.HasField("at")) or self.engine.clock.now()
        e = await self.engine.explain(
            number, at, request.campaign_id, call_spec(request.call_method, request.call_purpose)
        )
        return dnc_pb2.ExplainDecisionResponse(
            number=e.number,
            at=ts(e.at),
            decision=decision_pb(e.decision),
            records=[record_pb(r) for r in e.records],
            explanation=e.text,
        )

    async def RecordOptOut(
        self, request: dnc_pb2.RecordOptOutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.RecordOptOutResponse:
        number = self._one_number(request.number)
        # The audit actor is the token's, never a name from the request. The agent a service reports (the
        # agent service, which authenticated that agent) goes in the details, marked as reported.
        principal = current_principal()
        reported = request.agent_id.strip()
        if principal.role is Role.AGENT and reported and reported != principal.subject:
            raise PermissionDenied(
                f"an agent records opt-outs only as themselves, not {reported!r}", error_id="not_self"
            )
        extra = {"reported_agent_id": reported} if reported and principal.role is Role.SERVICE else None
        _, records = await self.engine.add(
            gate.ListInfo("internal", "internal"),
            [number],
            actor=current_actor(),
            reason="opt-out",
            source=request.source or "api",
            expires_at=None,
            action="opt_out",
            call_id=request.call_id,
            campaign_id=request.campaign_id,
            extra_details=extra,
        )
        return dnc_pb2.RecordOptOutResponse(list_id="internal", audit_seq=records[-1].seq if records else 0)

    async def SetConsent(
        self, request: dnc_pb2.SetConsentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.SetConsentResponse:
        number = self._one_number(request.number)
        evidence = (
            _evidence(request, self.engine.clock.now()) if not request.revoke else Evidence("", None, "")
        )
        kind = CONSENT.get(request.kind, "")
        basis = EBR_BASIS.get(request.ebr_basis, "")
        if not request.revoke:
            if not kind:
                raise InvalidArgument("consent kind is required", field="kind")
            if kind == "established_business_relationship" and not basis:
                raise InvalidArgument(
                    "an established business relationship needs its basis: purchase or inquiry (each counts for "
                    "the months the rules table gives it)",
                    field="ebr_basis",
                )
            if kind != "established_business_relationship" and request.ebr_basis:
                raise InvalidArgument(
                    "ebr_basis belongs to an established business relationship", field="ebr_basis"
                )
            if kind == "campaign_opt_in" and not request.campaign_id.strip():
                raise InvalidArgument("a campaign opt-in names its campaign", field="campaign_id")
        rec = await self.engine.set_consent(
            number,
            kind,
            request.revoke,
            request.campaign_id,
            evidence,
            current_actor(),
            from_ts(request.expires_at, request.HasField("expires_at")),
            basis,
        )
        return dnc_pb2.SetConsentResponse(audit_seq=rec.seq)

    async def RecordInboundMessage(
        self, request: dnc_pb2.RecordInboundMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.RecordInboundMessageResponse:
        channel = CHANNEL.get(request.channel)
        if channel is None:
            raise InvalidArgument("channel is required: sms or email", field="channel")
        sender = request.sender.strip()
        if not sender:
            raise InvalidArgument("sender is required: who sent the message", field="sender")
        if not request.body.strip():
            raise InvalidArgument("body is required: the message's text", field="body")
        received_at = from_ts(request.received_at, request.HasField("received_at"))
        if received_at is None:
            raise InvalidArgument("received_at is required: when the message arrived", field="received_at")
        raw = request.number.strip() or (sender if channel == "sms" else "")
        if not raw:
            raise InvalidArgument(
                "number is required for an email reply: the phone number the reply is about", field="number"
            )
        ok, bad = self.engine.normalise_many([raw])
        if bad or not ok:
            raise InvalidArgument(
                "not a phone number" + ("" if request.number.strip() else " (the sender of an SMS)"),
                field="number" if request.number.strip() else "sender",
            )
        res = await self.engine.record_inbound(
            channel=channel,
            sender=sender,
            number=ok[0],
            body=request.body,
            received_at=received_at,
            campaign_id=request.campaign_id,
            actor=current_actor(),
        )
        return dnc_pb2.RecordInboundMessageResponse(
            revocation=res.revocation,
            matched=res.matched,
            consents_revoked=res.consents_revoked,
            number=res.number,
            audit_seq=res.audit_seq,
        )

    async def RebuildIndex(
        self, request: dnc_pb2.RebuildIndexRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.RebuildIndexResponse:
        version, n = await self.engine.rebuild(current_actor())
        return dnc_pb2.RebuildIndexResponse(index_version=version, numbers=n)

    async def ImportRndResults(
        self,
        request_iterator: AsyncIterator[dnc_pb2.ImportRndResultsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dnc_pb2.ImportRndResultsResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("the first message must be the header", field="header")

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in request_iterator:
                if msg.HasField("header"):
                    raise InvalidArgument("only one header", field="header")
                yield msg.chunk

        res = await self.engine.import_rnd(
            chunks(), actor=current_actor(), source=first.header.source.strip()[:200] or "import"
        )
        return dnc_pb2.ImportRndResultsResponse(
            rows=res.rows,
            imported=res.imported,
            already_present=res.already_present,
            rejects=[
                dnc_pb2.RndReject(row=r.row, field=r.field, reason=r.reason, value=r.value)
                for r in res.rejects
            ],
            rejected=res.rejected,
            import_id=res.import_id,
            audit_seq=res.audit_seq,
        )

    async def GetRndResults(
        self, request: dnc_pb2.GetRndResultsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> dnc_pb2.GetRndResultsResponse:
        number = self._one_number(request.number)
        results = await self.engine.rnd_for(number)
        return dnc_pb2.GetRndResultsResponse(
            number=number,
            results=[
                dnc_pb2.RndResult(
                    number=number,
                    queried_date=r.queried_date.isoformat(),
                    answer=RND_ANSWER[r.answer],
                    disconnect_date=r.disconnect_date.isoformat() if r.disconnect_date else "",
                    imported_at=ts(r.imported_at),
                    import_id=r.import_id,
                )
                for r in results
            ],
        )


def _evidence(request: dnc_pb2.SetConsentRequest, now: datetime) -> Evidence:
    """A grant's evidence: its source (``obtained_via``), when it was given (``obtained_at``), the text the
    person agreed to and an IP address or a recording reference (at least one). INVALID_ARGUMENT names the
    first field missing or wrong."""
    obtained_at = from_ts(request.obtained_at, request.HasField("obtained_at"))
    via = request.obtained_via.strip()
    text = request.text_agreed.strip()
    ip = request.ip_address.strip()
    rec = request.recording_ref.strip()
    if not via:
        raise InvalidArgument(
            "obtained_via is required: the consent's source, how it was obtained (web_form, signed_paper, "
            "recorded_call, …)",
            field="obtained_via",
        )
    if obtained_at is None:
        raise InvalidArgument("obtained_at is required: when the consent was given", field="obtained_at")
    if obtained_at > now + CONSENT_CLOCK_SKEW:
        raise InvalidArgument("obtained_at is in the future", field="obtained_at")
    if not text:
        raise InvalidArgument("text_agreed is required: the text the person agreed to", field="text_agreed")
    if not ip and not rec:
        raise InvalidArgument(
            "ip_address or recording_ref is required: the IP address the consent came from, or a reference to "
            "its recording",
            field="ip_address",
        )
    if ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidArgument(f"not an IP address: {ip[:64]!r}", field="ip_address") from None
    return Evidence(request.evidence.strip(), obtained_at, via, text, ip, rec)
