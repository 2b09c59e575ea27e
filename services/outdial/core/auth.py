"""Bearer-token auth: signed JWTs (HS256) with a subject and a role, and one table of who may call what."""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import jwt

from outdial.core.errors import PermissionDenied, Unauthenticated

ISSUER = "outdial"
AUDIENCE = "outdial-api"


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    AGENT = "agent"
    COMPLIANCE = "compliance"
    # The services themselves, calling each other (dialer -> DNC gate, agent -> DNC opt-out, …).
    SERVICE = "service"


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    token_id: str = ""

    @property
    def service(self) -> str | None:
        """The calling service's name ("pacing", "agent", …) when a service calls, else None.

        A service's subject is ``svc:<name>`` or ``svc:<name>:<instance>``."""
        if self.role is not Role.SERVICE or not self.subject.startswith("svc:"):
            return None
        return self.subject.split(":", 2)[1] or None


def issue_token(secret: str, subject: str, role: Role | str, ttl_seconds: int = 12 * 3600) -> str:
    now = int(time.time())
    claims = {
        "sub": subject,
        "role": Role(role).value,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now - 5,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: str, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["sub", "role", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("token expired", error_id="token_expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"invalid token ({type(exc).__name__})", error_id="token_invalid") from exc
    try:
        role = Role(claims["role"])
    except ValueError as exc:
        raise Unauthenticated(f"unknown role {claims['role']!r}", error_id="token_invalid") from exc
    sub = str(claims["sub"]).strip()
    if not sub:
        raise Unauthenticated("token has an empty subject", error_id="token_invalid")
    return Principal(subject=sub, role=role, token_id=str(claims.get("jti", "")))


def bearer_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "authorization metadata must be 'Bearer <token>'", error_id="token_missing"
                )
            return token.strip()
    raise Unauthenticated("no bearer token: set OUTDIAL_TOKEN or pass --token", error_id="token_missing")


_A, _M, _G, _C, _S = Role.ADMIN, Role.MANAGER, Role.AGENT, Role.COMPLIANCE, Role.SERVICE

# The one table: full RPC name -> roles allowed. Admin may call everything. Anything not listed is denied.
PERMISSIONS: dict[str, frozenset[Role]] = {
    f"/outdial.v1.{svc}/{rpc}": frozenset({_A, *roles})
    for svc, table in {
        "CampaignService": {
            "CreateCampaign": {_M},
            "UpdateCampaign": {_M},
            "GetCampaign": {_M, _C, _S, _G},
            "ListCampaigns": {_M, _C, _S, _G},
            "StartCampaign": {_M},
            "PauseCampaign": {_M, _C},
            "ResumeCampaign": {_M},
            "CompleteCampaign": {_M},
            "ArchiveCampaign": {_M},
            "UploadLeads": {_M},
            "GetLeadList": {_M, _C},
            "ListLeadLists": {_M, _C},
            "ListLeadRejects": {_M, _C},
            "GetCampaignStats": {_M, _C, _S},
            "ScheduleCallback": {_M, _G, _S},
        },
        "DncService": {
            "CheckNumbers": {_M, _C, _S},
            "AddNumbers": {_M, _C, _S},
            "RemoveNumbers": {_C},
            "ListLists": {_M, _C, _S},
            "ImportRegistry": {_C},
            "QueryAudit": {_C},
            "VerifyAudit": {_C},
            "ExplainDecision": {_C, _M},
            "RecordOptOut": {_S, _G, _M, _C},
            # Consent overrides the national and wireless lists: compliance only (with evidence, dnc/service.py).
            "SetConsent": {_C},
            "RebuildIndex": {_C},
        },
        "AgentService": {
            "Login": {_G, _S},
            "Logout": {_G, _M, _S},
            "SetState": {_G, _S},
            "Connect": {_G, _S},
            "Heartbeat": {_G, _S},
            "EndCall": {_G, _S},
            "SetDisposition": {_G, _S},
            "ListAgents": {_M, _C, _S},
            "OfferCall": {_S},
            "GetAgentCounts": {_M, _S},
            "ReserveAgent": {_S},
            "ReleaseAgent": {_S},
            "PreviewLead": {_S},
            "DecidePreview": {_G, _S},
            # Which agent may log in to which campaign (agent/service.py); an agent lists only their own.
            "AssignAgents": {_M},
            "UnassignAgents": {_M},
            "ListAssignments": {_M, _C, _G},
        },
        "PacingService": {
            "GetPacingState": {_M, _C, _S},
            "UpdatePacingSettings": {_M},
            "WatchPacing": {_M, _C, _S},
        },
        # The gateway's call control is for the dialer and the agent service only.
        "GatewayService": {
            "Originate": {_S},
            "CancelCall": {_S},
            "HangupCall": {_S},
            "PlayPrompt": {_S},
            "BridgeCall": {_S},
            "OpenAgentLeg": {_S},
            "CloseAgentLeg": {_S},
            "ListCalls": {_S},
            "StreamCallEvents": {_S},
            "GetGatewayStatus": {_M, _C, _S},
        },
    }.items()
    for rpc, roles in table.items()
}

# Reachable with no token at all.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def is_public(method: str) -> bool:
    return method.startswith(PUBLIC_PREFIXES)


def authorize(principal: Principal, method: str) -> None:
    allowed = PERMISSIONS.get(method)
    if allowed is None or principal.role not in allowed:
        raise PermissionDenied(
            f"role {principal.role.value!r} may not call {method}", error_id="role_not_allowed"
        )


def agent_may_act_for(principal: Principal, agent_id: str) -> bool:
    """An agent acts only for themselves; managers, admins and the services for anyone."""
    return principal.role is not Role.AGENT or principal.subject == agent_id


# The caller of the RPC being handled, set by the server's auth interceptor.

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _principal.set(principal)


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller", error_id="token_missing")
    return principal


def current_actor(default: str = "system") -> str:
    principal = _principal.get()
    return f"{principal.role.value}:{principal.subject}" if principal else default
