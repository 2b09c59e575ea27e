"""Authorization, table-driven (issue 12, finding 4): every RPC of every service × every role, through real
servers, then the ownership rules no table can say (whose call, whose lead, which campaign).

One set of services serves the whole module (started once: the calls are cheap, the start-up is not). A call
is made with an empty request: a role the table refuses gets PERMISSION_DENIED from the interceptor before the
handler runs; a role it allows gets anything else (mostly INVALID_ARGUMENT for the empty request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from outdial.core.auth import PERMISSIONS, Principal, Role, authorize
from outdial.core.errors import PermissionDenied
from outdial.core.server import SERVER_OPTIONS, CoreInterceptor
from outdial.core.signing import verifier_jwks
from outdial.core.verifier import Verifier
from outdial.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    campaign_pb2,
    campaign_pb2_grpc,
    common_pb2,
    dnc_pb2,
    dnc_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    pacing_pb2,
)
from tests import conftest
from tests.conftest import Services, make_token, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

# ----------------------------------------------------------------------------------------------- the policy
# Who may call what, written out (admin may call everything). A = admin, M = manager, G = agent,
# C = compliance. The `service` role's column belongs to the per-service allow-lists (core/auth.py): it is
# checked against that table below, as the pacing identity, not written out here. A new RPC needs a row
# here and in core/auth.PERMISSIONS, or test_every_rpc_has_a_row fails.
HUMAN_ROLES = {"M": Role.MANAGER, "G": Role.AGENT, "C": Role.COMPLIANCE}
EXPECTED: dict[str, dict[str, str]] = {
    "CampaignService": {
        "CreateCampaign": "M",
        "UpdateCampaign": "M",
        "GetCampaign": "MCG",
        "ListCampaigns": "MCG",
        "StartCampaign": "M",
        "PauseCampaign": "MC",
        "ResumeCampaign": "M",
        "CompleteCampaign": "M",
        "ArchiveCampaign": "M",
        "UploadLeads": "M",
        "GetLeadList": "MC",
        "ListLeadLists": "MC",
        "ListLeadRejects": "MC",
        "GetCampaignStats": "MC",
        "ScheduleCallback": "MG",  # an agent: the lead of their own last call only (below)
        "ListCampaignVersions": "MC",
        "RunRetention": "C",
    },
    "DncService": {
        "CheckNumbers": "MC",  # dial_time=true: the pacing identity only (below)
        "AddNumbers": "MC",
        "RemoveNumbers": "C",
        "ListLists": "MC",
        "ImportRegistry": "C",
        "QueryAudit": "C",
        "VerifyAudit": "C",
        "ExplainDecision": "MC",
        "RecordOptOut": "MGC",
        "SetConsent": "C",
        "RebuildIndex": "C",
        "ImportRndResults": "C",
        "GetRndResults": "C",
        "RecordInboundMessage": "MC",
    },
    "AgentService": {
        "Login": "G",  # to assigned campaigns only (below)
        "Logout": "MG",
        "SetState": "MG",
        "Connect": "G",
        "Heartbeat": "G",
        "EndCall": "G",
        "SetDisposition": "G",
        "ListAgents": "MC",
        "WatchAgents": "MC",
        "OfferCall": "",
        "GetAgentCounts": "M",
        "ReserveAgent": "",
        "ReleaseAgent": "",
        "PreviewLead": "",
        "DecidePreview": "G",
        "AssignAgents": "M",
        "UnassignAgents": "M",
        "ListAssignments": "MCG",  # an agent: their own only (below)
    },
    "PacingService": {
        "GetPacingState": "MC",
        "UpdatePacingSettings": "M",
        "WatchPacing": "MC",
        "ListPacingSettingsVersions": "MC",
    },
    "GatewayService": {
        "Originate": "",
        "CancelCall": "",
        "HangupCall": "",
        "PlayPrompt": "",
        "BridgeCall": "",
        "OpenAgentLeg": "",
        "CloseAgentLeg": "",
        "ListCalls": "",
        "StreamCallEvents": "",
        "GetGatewayStatus": "MC",
    },
}

SERVICES: dict[str, ServiceDescriptor] = {
    d.name: d
    for d in (
        campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"],
        dnc_pb2.DESCRIPTOR.services_by_name["DncService"],
        agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
        pacing_pb2.DESCRIPTOR.services_by_name["PacingService"],
        gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    )
}
ALL_FILES = (campaign_pb2, dnc_pb2, agent_pb2, pacing_pb2, gateway_pb2)
# Callers: (name, role, subject). The service caller is the pacing identity.
CALLERS = [
    ("admin", Role.ADMIN, "root"),
    ("manager", Role.MANAGER, "mgr-1"),
    ("agent", Role.AGENT, "ann"),
    ("compliance", Role.COMPLIANCE, "cco-1"),
    ("svc:pacing", Role.SERVICE, "svc:pacing"),
]
SERVICE_PROCESS = {
    "CampaignService": "campaign",
    "DncService": "dnc",
    "AgentService": "agent",
    "PacingService": "pacing",
    "GatewayService": "gateway",
}


def _method(full: str) -> MethodDescriptor:
    svc, _, name = full.partition("/")
    return SERVICES[svc].methods_by_name[name]


def _expected(service: str, rpc: str, role: Role, subject: str) -> bool:
    if role is Role.ADMIN:
        return True
    if role is Role.SERVICE:  # the per-service allow-lists are the policy for service identities
        try:
            authorize(Principal(subject, role), f"/outdial.v1.{service}/{rpc}")
        except PermissionDenied:
            return False
        return True
    letter = next(k for k, v in HUMAN_ROLES.items() if v is role)
    return letter in EXPECTED[service][rpc]


async def test_every_rpc_has_a_row() -> None:
    """Every RPC of every service descriptor is in the permission table and in the policy above, and
    neither names an RPC that does not exist."""
    declared = {f"/outdial.v1.{s.name}/{m.name}" for f in ALL_FILES for s in f.DESCRIPTOR.services_by_name.values() for m in s.methods}  # fmt: skip
    assert set(PERMISSIONS) == declared
    assert {f"/outdial.v1.{s}/{r}" for s, t in EXPECTED.items() for r in t} == declared
    for s, table in EXPECTED.items():  # the written-out policy agrees with the table the servers enforce
        for rpc, letters in table.items():
            for letter, role in HUMAN_ROLES.items():
                allowed = role in PERMISSIONS[f"/outdial.v1.{s}/{rpc}"]
                assert allowed == (letter in letters), f"{s}/{rpc} for {role.value}"


# ----------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def module_db(infra: conftest.TestInfra, template_db: str) -> Iterator[str]:
    name = f"odt_{infra.run_id}_authz_{uuid.uuid4().hex[:6]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(infra.server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    yield infra.db_url(name)
    with contextlib.suppress(Exception):
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Stack:
    def __init__(self, services: Services, addrs: dict[str, str], pool: asyncpg.Pool) -> None:
        self.services = services
        self.addrs = addrs
        self.pool = pool
        self.channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, process: str) -> grpc.aio.Channel:
        """A plain channel (no interceptor): each call carries its own token."""
        if process not in self.channels:
            self.channels[process] = grpc.aio.insecure_channel(self.addrs[process])
        return self.channels[process]

    def stub(self, cls: Any, process: str, role: Role | str, sub: str) -> Any:
        return cls(self.services.channel(self.addrs[process], role, sub))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(infra: conftest.TestInfra, module_db: str) -> AsyncIterator[Stack]:
    import redis.asyncio as aioredis

    r = aioredis.from_url(infra.redis_url)
    await r.flushdb()
    await r.aclose()
    settings = service_settings(module_db, infra.redis_url)
    services = Services(settings)
    addrs: dict[str, str] = {}
    for name in ("dnc", "campaign", "agent", "pacing"):  # each start points the next ones at it
        addrs[name] = (await services.start(name)).addr  # type: ignore[arg-type]
    # The gateway's own process needs SIP and rtpengine; its calls are authorized by the same interceptor,
    # in front of the generated servicer (every handler UNIMPLEMENTED): what is checked here is the table.
    gateway = grpc.aio.server(
        interceptors=[CoreInterceptor("gateway", Verifier(verifier_jwks(settings), None, dev=True))],
        options=SERVER_OPTIONS,
    )
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(gateway_pb2_grpc.GatewayServiceServicer(), gateway)
    addrs["gateway"] = f"127.0.0.1:{gateway.add_insecure_port('127.0.0.1:0')}"
    await gateway.start()
    pool = await asyncpg.create_pool(module_db, min_size=1, max_size=3)
    st = Stack(services, addrs, pool)
    try:
        yield st
    finally:
        for ch in st.channels.values():
            await ch.close()
        await pool.close()
        await gateway.stop(0)
        await services.close()


async def call(stack: Stack, full: str, token: str | None, request: Any = None) -> grpc.StatusCode:
    """Call ``/outdial.v1.<full>`` with ``request`` (default: empty) and return its status code. A server
    stream counts as answered at its first message."""
    m = _method(full)
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    path = f"/outdial.v1.{full}"
    ch = stack.channel(SERVICE_PROCESS[full.partition("/")[0]])
    md = (("authorization", f"Bearer {token}"),) if token else ()
    req = request if request is not None else req_cls()
    kw: dict[str, Any] = {"metadata": md, "timeout": 5}
    ser, de = req_cls.SerializeToString, resp_cls.FromString
    try:
        if m.client_streaming and m.server_streaming:
            stream = ch.stream_stream(path, request_serializer=ser, response_deserializer=de)(iter(()), **kw)
            await stream.read()
            stream.cancel()
        elif m.client_streaming:
            await ch.stream_unary(path, request_serializer=ser, response_deserializer=de)(iter(()), **kw)
        elif m.server_streaming:
            stream = ch.unary_stream(path, request_serializer=ser, response_deserializer=de)(req, **kw)
            await stream.read()
            stream.cancel()
        else:
            await ch.unary_unary(path, request_serializer=ser, response_deserializer=de)(req, **kw)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


CASES = [
    pytest.param(f"{s}/{rpc}", name, role, sub, id=f"{s.removesuffix('Service')}.{rpc}-{name}")
    for s, table in EXPECTED.items()
    for rpc in table
    for name, role, sub in CALLERS
]


@pytest.mark.parametrize(("full", "name", "role", "sub"), CASES)
async def test_rpc_by_role(stack: Stack, full: str, name: str, role: Role, sub: str) -> None:
    code = await call(stack, full, make_token(role, sub))
    service, _, rpc = full.partition("/")
    if _expected(service, rpc, role, sub):
        assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), code
    else:
        assert code is grpc.StatusCode.PERMISSION_DENIED


async def test_every_rpc_needs_a_token(stack: Stack) -> None:
    fulls = [f"{s}/{rpc}" for s, t in EXPECTED.items() for rpc in t]
    codes = await asyncio.gather(*(call(stack, f, None) for f in fulls))
    assert {f: c for f, c in zip(fulls, codes, strict=True) if c is not grpc.StatusCode.UNAUTHENTICATED} == {}


# ----------------------------------------------------------------------------------------------- ownership


def _ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


async def _denied(coro: Any, code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    assert err.value.code() is code, err.value.details()
    return err.value.details() or ""


async def test_dial_time_checks_are_for_the_pacing_identity_only(stack: Stack) -> None:
    req = dnc_pb2.CheckNumbersRequest(numbers=["+12025550123"], dial_time=True, campaign_id="c-dt")
    for role, sub in (
        (Role.ADMIN, "root"),
        (Role.MANAGER, "mgr-1"),
        (Role.COMPLIANCE, "cco-1"),
        (Role.SERVICE, "svc:campaign"),
        (Role.SERVICE, "svc:agent"),
    ):
        stub = stack.stub(dnc_pb2_grpc.DncServiceStub, "dnc", role, sub)
        details = await _denied(stub.CheckNumbers(req))
        assert "pacing" in details
        if sub != "svc:agent":  # the agent service may not check numbers at all (its allow-list)
            # the same check without dial_time (nothing audited) stays theirs to make
            await stub.CheckNumbers(dnc_pb2.CheckNumbersRequest(numbers=["+12025550123"]))
    pacing = stack.stub(dnc_pb2_grpc.DncServiceStub, "dnc", Role.SERVICE, "svc:pacing:p-1")
    (d,) = (await pacing.CheckNumbers(req)).decisions
    assert d.audit_seq > 0
    actors = await stack.pool.fetch("SELECT actor FROM dnc_audit WHERE campaign_id = 'c-dt'")
    assert [r["actor"] for r in actors] == ["service:svc:pacing:p-1"]


async def test_set_consent_needs_compliance_and_evidence(stack: Stack) -> None:
    number = "+14155550188"
    for role, sub in ((Role.MANAGER, "mgr-1"), (Role.SERVICE, "svc:agent"), (Role.AGENT, "ann")):
        stub = stack.stub(dnc_pb2_grpc.DncServiceStub, "dnc", role, sub)
        full = dnc_pb2.SetConsentRequest(
            number=number,
            kind=dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN,
            evidence="form 12",
            obtained_at=_ts(datetime.now(UTC) - timedelta(days=1)),
            obtained_via="web_form",
            text_agreed="I agree to calls from Acme.",
            ip_address="198.51.100.4",
        )
        await _denied(stub.SetConsent(full))
    cco = stack.stub(dnc_pb2_grpc.DncServiceStub, "dnc", Role.COMPLIANCE, "cco-1")
    good = {
        "number": number,
        "kind": dnc_pb2.CONSENT_KIND_EXPRESS_WRITTEN,
        "evidence": "signed form #4471",
        "obtained_at": _ts(datetime.now(UTC) - timedelta(days=3)),
        "obtained_via": "signed_paper",
        "text_agreed": "I agree to receive marketing calls from Acme, made with an autodialer.",
        "recording_ref": "rec-2026-4471",
    }
    # Each piece of evidence is required, and the error names it (IP address or recording: at least one).
    for missing in ("obtained_at", "obtained_via", "text_agreed", "recording_ref"):
        details = await _denied(
            cco.SetConsent(dnc_pb2.SetConsentRequest(**{k: v for k, v in good.items() if k != missing})),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert f"[{missing if missing != 'recording_ref' else 'ip_address'}]" in details
    details = await _denied(
        cco.SetConsent(dnc_pb2.SetConsentRequest(**{**good, "ip_address": "not-an-ip"})),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "[ip_address]" in details
    ebr = {**good, "kind": dnc_pb2.CONSENT_KIND_EXISTING_BUSINESS_RELATIONSHIP}
    details = await _denied(
        cco.SetConsent(dnc_pb2.SetConsentRequest(**ebr)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "[ebr_basis]" in details
    opt_in = {**good, "kind": dnc_pb2.CONSENT_KIND_CAMPAIGN_OPT_IN}
    details = await _denied(
        cco.SetConsent(dnc_pb2.SetConsentRequest(**opt_in)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "[campaign_id]" in details
    future = {**good, "obtained_at": _ts(datetime.now(UTC) + timedelta(days=1))}
    details = await _denied(
        cco.SetConsent(dnc_pb2.SetConsentRequest(**future)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "[obtained_at]" in details
    assert await stack.pool.fetchval("SELECT count(*) FROM dnc_consent WHERE number = $1", number) == 0
    resp = await cco.SetConsent(dnc_pb2.SetConsentRequest(**good))
    row = await stack.pool.fetchrow("SELECT * FROM dnc_consent WHERE number = $1", number)
    assert (row["evidence"], row["obtained_via"], row["actor"]) == (
        "signed form #4471",
        "signed_paper",
        "compliance:cco-1",
    )
    audit = await stack.pool.fetchrow("SELECT actor, details FROM dnc_audit WHERE seq = $1", resp.audit_seq)
    details_of = json.loads(audit["details"])
    assert (details_of["obtained_via"], details_of["recording_ref"]) == ("signed_paper", "rec-2026-4471")
    assert (row["kind"], row["text_agreed"]) == ("prior_express_written_consent", good["text_agreed"])
    # a revocation needs no evidence
    await cco.SetConsent(dnc_pb2.SetConsentRequest(number=number, revoke=True))
    assert (
        await stack.pool.fetchval("SELECT revoked_by FROM dnc_consent WHERE number = $1", number)
        == "compliance:cco-1"
    )


async def test_the_audit_actor_comes_from_the_token(stack: Stack) -> None:
    svc = stack.stub(dnc_pb2_grpc.DncServiceStub, "dnc", Role.SERVICE, "svc:agent")
    r1 = await svc.RecordOptOut(
        dnc_pb2.RecordOptOutRequest(number="+15035550171", source="agent_disposition", agent_id="mallory")
    )
    ann = stack.stub(dnc_pb2_grpc.DncServiceStub, "dnc", Role.AGENT, "ann")
    await _denied(ann.RecordOptOut(dnc_pb2.RecordOptOutRequest(number="+15035550172", agent_id="bob")))
    r2 = await ann.RecordOptOut(dnc_pb2.RecordOptOutRequest(number="+15035550172", agent_id="ann"))
    rows = {
        r["seq"]: r
        for r in await stack.pool.fetch(
            "SELECT seq, actor, details FROM dnc_audit WHERE seq = ANY($1::bigint[])",
            [r1.audit_seq, r2.audit_seq],
        )
    }
    assert rows[r1.audit_seq]["actor"] == "service:svc:agent"
    assert json.loads(rows[r1.audit_seq]["details"])["reported_agent_id"] == "mallory"
    assert rows[r2.audit_seq]["actor"] == "agent:ann"


async def test_login_only_to_assigned_campaigns(stack: Stack) -> None:
    mgr = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.MANAGER, "mgr-1")
    liz = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.AGENT, "liz")

    def login(*cids: str) -> Any:
        return liz.Login(
            agent_pb2.LoginRequest(campaigns=[agent_pb2.CampaignMembership(campaign_id=c) for c in cids])
        )

    details = await _denied(login("camp-x"))
    assert "camp-x" in details and "not_assigned" in details
    await mgr.AssignAgents(agent_pb2.AssignAgentsRequest(campaign_id="camp-x", agent_ids=["liz", "max"]))
    again = await mgr.AssignAgents(agent_pb2.AssignAgentsRequest(campaign_id="camp-x", agent_ids=["liz"]))
    assert (again.assigned, again.already_assigned) == (0, 1)
    details = await _denied(login("camp-x", "camp-y"))  # one campaign not assigned refuses the login
    assert "camp-y" in details and "camp-x" not in details
    resp = await login("camp-x")
    assert [c.campaign_id for c in resp.status.campaigns] == ["camp-x"]
    # an agent sees their own assignments only
    mine = await liz.ListAssignments(agent_pb2.ListAssignmentsRequest())
    assert [(a.campaign_id, a.agent_id, a.assigned_by) for a in mine.assignments] == [
        ("camp-x", "liz", "manager:mgr-1")
    ]
    await _denied(liz.ListAssignments(agent_pb2.ListAssignmentsRequest(agent_id="max")))
    await _denied(liz.AssignAgents(agent_pb2.AssignAgentsRequest(campaign_id="camp-y", agent_ids=["liz"])))
    for bad, field in ((agent_pb2.AssignAgentsRequest(agent_ids=["liz"]), "campaign_id"), (agent_pb2.AssignAgentsRequest(campaign_id="camp-x"), "agent_ids"), (agent_pb2.AssignAgentsRequest(campaign_id="camp-x", agent_ids=["l iz"]), "agent_ids")):  # fmt: skip
        assert f"[{field}]" in await _denied(mgr.AssignAgents(bad), grpc.StatusCode.INVALID_ARGUMENT)
    await liz.Logout(agent_pb2.LogoutRequest())


async def test_unassigning_takes_the_campaign_out_of_a_running_session(stack: Stack) -> None:
    admin = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.ADMIN, "root")
    pacing = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.SERVICE, "svc:pacing")
    kit = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.AGENT, "kit")
    for cid in ("camp-u1", "camp-u2"):
        await admin.AssignAgents(agent_pb2.AssignAgentsRequest(campaign_id=cid, agent_ids=["kit"]))
    await kit.Login(
        agent_pb2.LoginRequest(
            campaigns=[agent_pb2.CampaignMembership(campaign_id=c) for c in ("camp-u1", "camp-u2")]
        )
    )
    counts = await pacing.GetAgentCounts(agent_pb2.GetAgentCountsRequest(campaign_id="camp-u2"))
    assert counts.counts.ready == 1
    out = await admin.UnassignAgents(
        agent_pb2.UnassignAgentsRequest(campaign_id="camp-u2", agent_ids=["kit", "nobody"])
    )
    assert (out.unassigned, out.not_assigned, list(out.sessions_changed)) == (1, 1, ["kit"])
    counts = await pacing.GetAgentCounts(agent_pb2.GetAgentCountsRequest(campaign_id="camp-u2"))
    assert counts.counts.logged_in == 0  # no offer of camp-u2 can reach kit any more
    st = await kit.Heartbeat(agent_pb2.HeartbeatRequest())
    assert [c.campaign_id for c in st.status.campaigns] == ["camp-u1"]
    # an offer of the campaign kit lost finds nobody; one of the campaign kit kept would reach them
    req = agent_pb2.OfferCallRequest(campaign_id="camp-u2", call_id="u-1", lead_id="1", number="+12025550123")
    req.deadline.FromMilliseconds(100)
    assert not (await pacing.OfferCall(req)).assigned
    # the last campaign gone: an idle agent is logged out
    await admin.UnassignAgents(agent_pb2.UnassignAgentsRequest(campaign_id="camp-u1", agent_ids=["kit"]))
    await _denied(kit.Heartbeat(agent_pb2.HeartbeatRequest()), grpc.StatusCode.FAILED_PRECONDITION)
    await _denied(
        kit.Login(agent_pb2.LoginRequest(campaigns=[agent_pb2.CampaignMembership(campaign_id="camp-u1")]))
    )
    history = await admin.ListAssignments(agent_pb2.ListAssignmentsRequest(agent_id="kit", history=True))
    assert list(history.assignments) == []
    assert sorted((h.action, h.campaign_id, h.actor) for h in history.history) == [
        ("assign", "camp-u1", "admin:root"),
        ("assign", "camp-u2", "admin:root"),
        ("unassign", "camp-u1", "admin:root"),
        ("unassign", "camp-u2", "admin:root"),
    ]

    async def last_reason() -> str:
        return str(
            await stack.pool.fetchval(
                "SELECT reason FROM agent_state_events WHERE agent_id = 'kit' ORDER BY at DESC, seq DESC LIMIT 1"
            )
        )

    for _ in range(100):  # the timeline writer is asynchronous
        if await last_reason() == "unassigned":
            break
        await asyncio.sleep(0.05)
    assert await last_reason() == "unassigned"


async def _campaign_with_leads(stack: Stack, name: str, n: int) -> tuple[str, list[int]]:
    mgr = stack.stub(campaign_pb2_grpc.CampaignServiceStub, "campaign", Role.MANAGER, "mgr-1")
    c = campaign_pb2.Campaign(name=name, caller_id="+12125550100")
    cid = (await mgr.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=c))).campaign.id
    csv = "phone\n" + "".join(f"21255501{i:02d}\n" for i in range(n))
    md = (("authorization", f"Bearer {make_token(Role.MANAGER, 'mgr-1')}"),)
    reqs = [
        campaign_pb2.UploadLeadsRequest(header=campaign_pb2.UploadLeadsHeader(campaign_id=cid)),
        campaign_pb2.UploadLeadsRequest(chunk=csv.encode()),
    ]
    await campaign_pb2_grpc.CampaignServiceStub(stack.channel("campaign")).UploadLeads(
        iter(reqs), metadata=md
    )
    leads = [
        r["id"]
        for r in await stack.pool.fetch("SELECT id FROM leads WHERE campaign_id = $1 ORDER BY id", cid)
    ]
    return cid, leads


async def _connected(stack: Stack, cid: str, lead: int, agent: str, minutes_ago: int) -> None:
    """A call detail record as the campaign's event consumer writes it: ``agent`` was connected to ``lead``."""
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    await stack.pool.execute(
        """INSERT INTO call_records (call_id, campaign_id, lead_id, dial_at, connect_at, end_at, outcome, agent_id)
           VALUES ($1, $2, $3, $4, $4, $4, 'connected', $5)""",
        uuid.uuid4().hex,
        cid,
        lead,
        at,
        agent,
    )


async def test_schedule_callback_ownership(stack: Stack) -> None:
    cid, (l1, l2, l3, l4) = await _campaign_with_leads(stack, "cb", 4)
    other, (o1,) = await _campaign_with_leads(stack, "cb-other", 1)
    await _connected(stack, cid, l3, "ann", 30)  # ann's earlier call
    await _connected(stack, cid, l1, "ann", 5)  # ann's last call
    await _connected(stack, cid, l2, "bob", 1)  # bob's last call
    at = _ts(datetime.now(UTC) + timedelta(hours=2))
    ann = stack.stub(campaign_pb2_grpc.CampaignServiceStub, "campaign", Role.AGENT, "ann")
    bob = stack.stub(campaign_pb2_grpc.CampaignServiceStub, "campaign", Role.AGENT, "bob")
    mgr = stack.stub(campaign_pb2_grpc.CampaignServiceStub, "campaign", Role.MANAGER, "mgr-1")

    def req(lead: int, agent: str = "", campaign: str = cid) -> campaign_pb2.ScheduleCallbackRequest:
        return campaign_pb2.ScheduleCallbackRequest(
            campaign_id=campaign, lead_id=str(lead), at=at, agent_id=agent
        )

    # agent A and agent B's lead; an older call of A's; routing to someone else
    assert "not_own_call" in await _denied(ann.ScheduleCallback(req(l2)))
    assert "not_own_call" in await _denied(ann.ScheduleCallback(req(l3)))
    assert "not_self" in await _denied(ann.ScheduleCallback(req(l1, agent="bob")))
    cb = await ann.ScheduleCallback(req(l1))
    assert await stack.pool.fetchval("SELECT agent_id FROM callbacks WHERE id = $1", cb.callback_id) == "ann"
    await bob.ScheduleCallback(req(l2, agent="bob"))
    # a manager: any lead of the campaign in the request, routed to anyone; never another campaign's lead
    await mgr.ScheduleCallback(req(l4, agent="cat"))
    await _denied(mgr.ScheduleCallback(req(o1)), grpc.StatusCode.NOT_FOUND)
    await _denied(mgr.ScheduleCallback(req(l1, campaign=other)), grpc.StatusCode.NOT_FOUND)
    # closed leads stay closed, with one answer whatever closed them (DNC status is not revealed)
    answers = []
    for reason in ("dnc", "exhausted", "wrong_number", "not_interested"):
        await stack.pool.execute(
            "UPDATE leads SET status = 'final', final_reason = $2 WHERE id = $1", l1, reason
        )
        for who in (ann, mgr):
            answers.append(await _denied(who.ScheduleCallback(req(l1)), grpc.StatusCode.FAILED_PRECONDITION))
    assert set(answers) == {f"lead_not_callable: lead {l1} is not callable"}
    status = await stack.pool.fetchval("SELECT final_reason FROM leads WHERE id = $1", l1)
    assert status == "not_interested"
    # a lead closed only by its connected call (the disposition is what decides) takes the agent's callback
    await stack.pool.execute(
        "UPDATE leads SET status = 'final', final_reason = 'connected' WHERE id = $1", l1
    )
    await ann.ScheduleCallback(req(l1))
    assert await stack.pool.fetchval("SELECT status FROM leads WHERE id = $1", l1) == "callback"
    # a completed campaign takes no callbacks
    await mgr.CompleteCampaign(campaign_pb2.CompleteCampaignRequest(campaign_id=other))
    await _denied(mgr.ScheduleCallback(req(o1, campaign=other)), grpc.StatusCode.FAILED_PRECONDITION)


async def test_a_callback_disposition_on_a_closed_lead_is_refused_for_good(stack: Stack) -> None:
    """The agent's "call me back" on a lead closed meanwhile (here: do not call): the agent service's
    follow-up gets lead_not_callable and marks it failed with the reason, instead of retrying for ever."""
    cid, (lead,) = await _campaign_with_leads(stack, "cb-followup", 1)
    await stack.pool.execute("UPDATE leads SET status = 'final', final_reason = 'dnc' WHERE id = $1", lead)
    admin = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.ADMIN, "root")
    await admin.AssignAgents(agent_pb2.AssignAgentsRequest(campaign_id=cid, agent_ids=["dee"]))
    dee = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.AGENT, "dee")
    await dee.Login(agent_pb2.LoginRequest(campaigns=[agent_pb2.CampaignMembership(campaign_id=cid)]))
    stream = dee.Connect(
        agent_pb2.ConnectRequest(), metadata=(("authorization", f"Bearer {make_token(Role.AGENT, 'dee')}"),)
    )
    try:
        await stream.read()  # the status: the console is there
        pacing = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.SERVICE, "svc:pacing")
        offer = pacing.OfferCall(
            agent_pb2.OfferCallRequest(
                campaign_id=cid, call_id="f-1", lead_id=str(lead), number="+12125550100"
            )
        )
        while not (await stream.read()).HasField("offer"):
            pass
        assert (await offer).assigned
        await dee.EndCall(agent_pb2.EndCallRequest(call_id="f-1"))
        await dee.SetDisposition(
            agent_pb2.SetDispositionRequest(
                call_id="f-1", disposition="callback", callback_at=_ts(datetime.now(UTC) + timedelta(hours=1))
            )
        )
    finally:
        stream.cancel()
    row = await stack.pool.fetchrow(
        "SELECT callback_status, last_error, event_id FROM agent_dispositions WHERE call_id = 'f-1' AND agent_id = 'dee'"
    )
    assert row["callback_status"] == "failed" and "lead_not_callable" in row["last_error"]
    # nor does the disposition's event reopen it when the campaign's consumer applies it
    for _ in range(200):
        q = "SELECT 1 FROM campaign_events_applied WHERE event_id = $1"
        if await stack.pool.fetchval(q, row["event_id"]):
            break
        await asyncio.sleep(0.05)
    assert await stack.pool.fetchval(q, row["event_id"]), "the disposition event was not applied"
    assert await stack.pool.fetchrow("SELECT status, final_reason FROM leads WHERE id = $1", lead) == (
        "final",
        "dnc",
    )
    assert await stack.pool.fetchval("SELECT count(*) FROM callbacks WHERE lead_id = $1", lead) == 0
    await dee.Logout(agent_pb2.LogoutRequest())


async def test_cli_assign_unassign_and_list(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from outdial.cli.main import main

    for k, v in {
        "OUTDIAL_AGENT_ADDR": stack.addrs["agent"],
        "OUTDIAL_CAMPAIGN_ADDR": stack.addrs["campaign"],
        "OUTDIAL_TOKEN": make_token(Role.MANAGER, "mgr-cli"),
    }.items():
        monkeypatch.setenv(k, v)
    cid, _ = await _campaign_with_leads(stack, "cli", 1)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["agent", "assign", cid, "zed", "yan"]) == 0
    assert "2 agent(s) assigned" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["agent", "assign", "no-such-campaign", "zed"]) == 2
    assert "no campaign 'no-such-campaign'" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["agent", "unassign", cid, "yan"]) == 0
    capsys.readouterr()
    assert (
        await asyncio.to_thread(main, ["agent", "assignments", "--campaign", cid, "--history", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [(a["agent_id"], a["assigned_by"]) for a in out["assignments"]] == [("zed", "manager:mgr-cli")]
    assert sorted((h["action"], h["agent_id"]) for h in out["history"]) == [
        ("assign", "yan"),
        ("assign", "zed"),
        ("unassign", "yan"),
    ]
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token(Role.AGENT, "zed"))  # an agent may not assign
    assert await asyncio.to_thread(main, ["agent", "assign", "--no-check", cid, "zed"]) == 4
    assert "PERMISSION_DENIED" in capsys.readouterr().err


async def test_cli_consent_names_the_missing_evidence(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from outdial.cli.main import main

    monkeypatch.setenv("OUTDIAL_DNC_ADDR", stack.addrs["dnc"])
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token(Role.COMPLIANCE, "cco-cli"))
    base = ["dnc", "consent", "+14155550199", "--kind", "express_written", "--evidence", "recording 88"]
    assert await asyncio.to_thread(main, [*base, "--obtained-at", "2026-01-02T10:00:00Z"]) == 2
    assert "[obtained_via]" in capsys.readouterr().err
    base += ["--obtained-at", "2026-01-02T10:00:00Z", "--via", "recorded_call"]
    assert await asyncio.to_thread(main, base) == 2
    assert "[text_agreed]" in capsys.readouterr().err
    base += ["--text", "Yes, Acme may call me with offers."]
    assert await asyncio.to_thread(main, base) == 2
    assert "[ip_address]" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [*base, "--recording", "rec-88"]) == 0
    assert "granted: audit record #" in capsys.readouterr().out
    row = await stack.pool.fetchrow(
        "SELECT obtained_at, obtained_via FROM dnc_consent WHERE number = '+14155550199'"
    )
    assert (row["obtained_at"], row["obtained_via"]) == (
        datetime(2026, 1, 2, 10, tzinfo=UTC),
        "recorded_call",
    )
    monkeypatch.setenv("OUTDIAL_TOKEN", make_token(Role.MANAGER, "mgr-cli"))
    assert await asyncio.to_thread(main, ["dnc", "consent", "+14155550199", "--revoke"]) == 4
    assert "PERMISSION_DENIED" in capsys.readouterr().err


async def test_an_unassignment_racing_a_login_does_not_leave_the_campaign_in_the_session(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UnassignAgents commits just after Login checked the assignments, and finds no session to change yet
    (it is not logged in): Login's second look after its own session change takes the campaign out."""
    from outdial.agent.store import Assignments

    admin = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.ADMIN, "root")
    pacing = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.SERVICE, "svc:pacing")
    for cid in ("camp-r1", "camp-r2"):
        await admin.AssignAgents(agent_pb2.AssignAgentsRequest(campaign_id=cid, agent_ids=["rae", "roy"]))
    original = Assignments.assigned
    removed: dict[str, list[str]] = {"rae": ["camp-r2"], "roy": ["camp-r1", "camp-r2"]}
    looked: set[str] = set()

    async def racing(self: Assignments, agent_id: str, campaign_ids: list[str]) -> set[str]:
        got = await original(self, agent_id, campaign_ids)
        if agent_id in removed and agent_id not in looked:  # right after Login's first look
            looked.add(agent_id)
            await stack.pool.execute(
                "DELETE FROM agent_assignments WHERE agent_id = $1 AND campaign_id = ANY($2::text[])",
                agent_id,
                removed[agent_id],
            )
        return got

    monkeypatch.setattr(Assignments, "assigned", racing)
    both = [agent_pb2.CampaignMembership(campaign_id=c) for c in ("camp-r1", "camp-r2")]
    rae = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.AGENT, "rae")
    resp = await rae.Login(agent_pb2.LoginRequest(campaigns=both))
    assert [c.campaign_id for c in resp.status.campaigns] == ["camp-r1"]
    counts = await pacing.GetAgentCounts(agent_pb2.GetAgentCountsRequest(campaign_id="camp-r2"))
    assert counts.counts.logged_in == 0
    roy = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.AGENT, "roy")
    assert "not_assigned" in await _denied(roy.Login(agent_pb2.LoginRequest(campaigns=both)))
    await _denied(roy.Heartbeat(agent_pb2.HeartbeatRequest()), grpc.StatusCode.FAILED_PRECONDITION)
    await rae.Logout(agent_pb2.LogoutRequest())


async def test_assignment_batches_are_bounded(stack: Stack) -> None:
    mgr = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.MANAGER, "mgr-1")
    many = [f"a{i}" for i in range(1001)]
    for rpc in (mgr.AssignAgents, mgr.UnassignAgents):
        req_cls = (
            agent_pb2.AssignAgentsRequest if rpc is mgr.AssignAgents else agent_pb2.UnassignAgentsRequest
        )
        details = await _denied(
            rpc(req_cls(campaign_id="camp-b", agent_ids=many)), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert "[agent_ids]" in details and "1000" in details
    ok = await mgr.AssignAgents(agent_pb2.AssignAgentsRequest(campaign_id="camp-b", agent_ids=many[:1000]))
    assert ok.assigned == 1000


async def test_an_agent_unassigned_on_a_call_finishes_it_and_gets_nothing_new(stack: Stack) -> None:
    admin = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.ADMIN, "root")
    pacing = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.SERVICE, "svc:pacing")
    await admin.AssignAgents(agent_pb2.AssignAgentsRequest(campaign_id="camp-busy", agent_ids=["bea"]))
    bea = stack.stub(agent_pb2_grpc.AgentServiceStub, "agent", Role.AGENT, "bea")
    await bea.Login(agent_pb2.LoginRequest(campaigns=[agent_pb2.CampaignMembership(campaign_id="camp-busy")]))
    stream = bea.Connect(
        agent_pb2.ConnectRequest(), metadata=(("authorization", f"Bearer {make_token(Role.AGENT, 'bea')}"),)
    )
    try:
        await stream.read()
        offer = pacing.OfferCall(
            agent_pb2.OfferCallRequest(
                campaign_id="camp-busy", call_id="b-1", lead_id="999991", number="+12125550100"
            )
        )
        while not (await stream.read()).HasField("offer"):
            pass
        assert (await offer).assigned
        out = await admin.UnassignAgents(
            agent_pb2.UnassignAgentsRequest(campaign_id="camp-busy", agent_ids=["bea"])
        )
        assert list(out.sessions_changed) == ["bea"]
        st = (await bea.Heartbeat(agent_pb2.HeartbeatRequest())).status
        assert (st.state, st.call_id, list(st.campaigns)) == (common_pb2.AGENT_STATE_ON_CALL, "b-1", [])
        # the person on the line is not dropped: the call ends and is dispositioned as usual
        await bea.EndCall(agent_pb2.EndCallRequest(call_id="b-1"))
        await bea.SetDisposition(agent_pb2.SetDispositionRequest(call_id="b-1", disposition="sale"))
        st = (await bea.Heartbeat(agent_pb2.HeartbeatRequest())).status
        assert st.state == common_pb2.AGENT_STATE_READY
        req = agent_pb2.OfferCallRequest(
            campaign_id="camp-busy", call_id="b-2", lead_id="999992", number="+12125550101"
        )
        req.deadline.FromMilliseconds(200)
        assert not (await pacing.OfferCall(req)).assigned
    finally:
        stream.cancel()
    await bea.Logout(agent_pb2.LogoutRequest())
