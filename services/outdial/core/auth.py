"""Bearer-token auth: JWTs signed with Ed25519 (EdDSA) and verified against a JWKS, each carrying a
subject and a role; one table of who may call what, and one allow-list per service identity.

Signing keys and the JWKS are in :mod:`outdial.core.signing`; revocation in :mod:`outdial.core.revocation`;
docs/security.md is the operator's guide.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import jwt

from outdial.core.errors import PermissionDenied, Unauthenticated
from outdial.core.signing import Jwks, SigningKey

ISSUER = "outdial"
AUDIENCE = "outdial-api"
ALGORITHM = "EdDSA"

# Longest lifetime a token may have (exp - iat), by who holds it. People: a working day and more, refused
# above; services re-mint their own token every half hour.
PERSON_MAX_TTL_SECONDS = 24 * 3600
SERVICE_MAX_TTL_SECONDS = 3600
# Clock skew tolerated between pods (exp, nbf and iat): a pod whose clock runs a few seconds fast or slow
# must not lose its calls.
LEEWAY_SECONDS = 30


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    AGENT = "agent"
    COMPLIANCE = "compliance"
    # The services themselves, calling each other (dialer -> DNC gate, agent -> DNC opt-out, …). Each has its
    # own subject (svc:<name>), its own signing key, and its own allow-list (SERVICE_CALLS).
    SERVICE = "service"


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    token_id: str = ""
    # The token's iat (seconds since the epoch): a subject revoked at T refuses tokens issued before T.
    issued_at: int = 0

    @property
    def service(self) -> str | None:
        """The calling service's name ("pacing", "agent", …) when a service calls, else None.

        A service's subject is ``svc:<name>`` or ``svc:<name>:<instance>``."""
        if self.role is not Role.SERVICE or not self.subject.startswith("svc:"):
            return None
        return self.subject.split(":", 2)[1] or None


def max_ttl_seconds(role: Role | str) -> int:
    return SERVICE_MAX_TTL_SECONDS if Role(role) is Role.SERVICE else PERSON_MAX_TTL_SECONDS


def check_ttl(role: Role | str, ttl_seconds: int) -> None:
    """Refuse a lifetime that is not positive or above the cap of ``role`` (ValueError naming --ttl)."""
    cap = max_ttl_seconds(role)
    if ttl_seconds <= 0:
        raise ValueError(f"--ttl must be a positive number of seconds (got {ttl_seconds})")
    if ttl_seconds > cap:
        raise ValueError(
            f"--ttl {ttl_seconds} is above the {cap} s cap for role {Role(role).value!r}: "
            "issue a shorter token and renew it"
        )


def issue_token(
    key: SigningKey,
    subject: str,
    role: Role | str,
    ttl_seconds: int = 12 * 3600,
    *,
    now: float | None = None,
) -> str:
    """Sign a token with ``key``; refuses what a verifier would refuse (a lifetime above the cap, a subject
    or role the key may not sign for) with a ValueError."""
    role = Role(role)
    subject = subject.strip()
    if not subject:
        raise ValueError("--sub must not be empty")
    check_ttl(role, ttl_seconds)
    refused = key.public().may_sign(role.value, subject)
    if refused is not None:
        raise ValueError(refused)
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": subject,
        "role": role.value,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": issued,
        "nbf": issued - 5,
        "exp": issued + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})


def _invalid(message: str, error_id: str = "token_invalid") -> Unauthenticated:
    return Unauthenticated(message, error_id=error_id)


def verify_token(jwks: Jwks, token: str) -> Principal:
    """Check signature (by kid), issuer, audience, lifetime (30 s leeway, capped TTL), jti, and that the key
    may sign this subject and role. Revocation is checked by the caller (:mod:`outdial.core.revocation`)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise _invalid(f"invalid token ({type(exc).__name__})") from exc
    if header.get("alg") != ALGORITHM:
        raise _invalid(f"token algorithm {header.get('alg')!r} is not accepted (EdDSA only)")
    kid = header.get("kid")
    public = jwks.get(kid) if isinstance(kid, str) else None
    if public is None:
        raise _invalid(
            f"token signed by an unknown key (kid {kid!r} is not in the JWKS)", "token_unknown_key"
        )
    try:
        claims = jwt.decode(
            token,
            public.key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY_SECONDS,
            options={"require": ["sub", "role", "exp", "iat", "jti"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise _invalid("token expired", "token_expired") from exc
    except jwt.PyJWTError as exc:
        raise _invalid(f"invalid token ({type(exc).__name__}: {exc})") from exc
    try:
        role = Role(claims["role"])
    except ValueError as exc:
        raise _invalid(f"unknown role {claims['role']!r}") from exc
    sub = str(claims["sub"]).strip()
    if not sub:
        raise _invalid("token has an empty subject")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti.strip():
        raise _invalid("token has no jti")
    refused = public.may_sign(role.value, sub)
    if refused is not None:
        raise _invalid(f"token refused: {refused}", "token_wrong_signer")
    iat, exp = claims["iat"], claims["exp"]
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise _invalid("token iat/exp must be numbers")
    if exp - iat > max_ttl_seconds(role):
        raise _invalid(
            f"token lifetime {int(exp - iat)} s is above the {max_ttl_seconds(role)} s cap for role "
            f"{role.value!r}",
            "token_ttl_too_long",
        )
    return Principal(subject=sub, role=role, token_id=jti, issued_at=int(iat))


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


_A, _M, _G, _C = Role.ADMIN, Role.MANAGER, Role.AGENT, Role.COMPLIANCE

# People: full RPC name -> roles allowed. Admin may call everything. Anything not listed is denied. The services
# are not in this table: each service identity has its own allow-list (SERVICE_CALLS below).
PERMISSIONS: dict[str, frozenset[Role]] = {
    f"/outdial.v1.{svc}/{rpc}": frozenset({_A, *roles})
    for svc, table in {
        "CampaignService": {
            "CreateCampaign": {_M},
            "UpdateCampaign": {_M},
            "GetCampaign": {_M, _C, _G},
            "ListCampaigns": {_M, _C, _G},
            "StartCampaign": {_M},
            "PauseCampaign": {_M, _C},
            "ResumeCampaign": {_M},
            "CompleteCampaign": {_M},
            "ArchiveCampaign": {_M},
            "UploadLeads": {_M},
            "GetLeadList": {_M, _C},
            "ListLeadLists": {_M, _C},
            "ListLeadRejects": {_M, _C},
            "GetCampaignStats": {_M, _C},
            "ScheduleCallback": {_M, _G},
            # Who changed which setting when: the managers who change them and compliance.
            "ListCampaignVersions": {_M, _C},
            # Removes old call records (never below the rules' minimum): compliance, and admins.
            "RunRetention": {_C},
        },
        "DncService": {
            "CheckNumbers": {_M, _C},
            "AddNumbers": {_M, _C},
            "RemoveNumbers": {_C},
            "ListLists": {_M, _C},
            "ImportRegistry": {_C},
            "QueryAudit": {_C},
            "VerifyAudit": {_C},
            "ExplainDecision": {_C, _M},
            "RecordOptOut": {_G, _M, _C},
            # Consent overrides the national and wireless lists: compliance only (with evidence, dnc/service.py).
            "SetConsent": {_C},
            "RebuildIndex": {_C},
            # Reassigned Numbers Database results decide whether consent may be relied on: compliance only.
            "ImportRndResults": {_C},
            "GetRndResults": {_C},
            # An SMS/email reply that revokes consent only ever blocks more: the people who run the
            # inbox integrations (managers) and compliance.
            "RecordInboundMessage": {_M, _C},
        },
        "AgentService": {
            "Login": {_G},
            "Logout": {_G, _M},
            # A supervisor (manager) may pause an agent, with a reason recorded with who did it.
            "SetState": {_G, _M},
            "Connect": {_G},
            "Heartbeat": {_G},
            "EndCall": {_G},
            "SetDisposition": {_G},
            "ListAgents": {_M, _C},
            "WatchAgents": {_M, _C},
            "OfferCall": set(),
            "GetAgentCounts": {_M},
            "ReserveAgent": set(),
            "ReleaseAgent": set(),
            "PreviewLead": set(),
            "DecidePreview": {_G},
            # Which agent may log in to which campaign (agent/service.py); an agent lists only their own.
            "AssignAgents": {_M},
            "UnassignAgents": {_M},
            "ListAssignments": {_M, _C, _G},
        },
        "PacingService": {
            "GetPacingState": {_M, _C},
            "UpdatePacingSettings": {_M},
            "WatchPacing": {_M, _C},
            "ListPacingSettingsVersions": {_M, _C},
        },
        # The gateway's call control is for the dialer and the agent service only (SERVICE_CALLS).
        "GatewayService": {
            "Originate": set(),
            "CancelCall": set(),
            "HangupCall": set(),
            "PlayPrompt": set(),
            "BridgeCall": set(),
            "OpenAgentLeg": set(),
            "CloseAgentLeg": set(),
            "ListCalls": set(),
            "StreamCallEvents": set(),
            "GetGatewayStatus": {_M, _C},
        },
    }.items()
    for rpc, roles in table.items()
}

# Services: which RPCs each service identity (subject svc:<name>[:<instance>], token signed by its own key) may
# call on the others: what its code calls, found on the stubs it uses (core/clients.py channels from
# campaign/feeder.py, pacing/gate.py, pacing/agents.py, pacing/actions.py, telephony/sip.py,
# agent/followups.py, agent/service.py, gateway/app.py). Nothing else: a service calling an RPC missing here
# is refused with PERMISSION_DENIED. One line per RPC, so that adding a call is adding a line.
SERVICE_CALLS: dict[str, frozenset[str]] = {
    service: frozenset(f"/outdial.v1.{rpc}" for rpc in rpcs)
    for service, rpcs in {
        "campaign": {
            "DncService/CheckNumbers",  # feeder: the DNC pre-check before a lead enters the hopper
        },
        "pacing": {
            "DncService/CheckNumbers",  # the dial-time gate (dial_time=true), before every dial
            "DncService/RecordOptOut",  # an opt-out pressed during the abandonment message
            "AgentService/ReserveAgent",
            "AgentService/ReleaseAgent",
            "AgentService/OfferCall",
            "AgentService/PreviewLead",
            "AgentService/DecidePreview",  # a preview the agent never answered
            "AgentService/EndCall",  # the customer hung up first
            "AgentService/GetAgentCounts",  # read-only; the dialer API of agent.proto (today read from Redis)
            "GatewayService/Originate",
            "GatewayService/CancelCall",
            "GatewayService/HangupCall",
            "GatewayService/PlayPrompt",
            "GatewayService/BridgeCall",
            "GatewayService/ListCalls",
            "GatewayService/StreamCallEvents",
            "GatewayService/GetGatewayStatus",
        },
        "agent": {
            "DncService/RecordOptOut",  # a "do not call" disposition
            "CampaignService/ScheduleCallback",  # a "callback" disposition
            "GatewayService/OpenAgentLeg",
            "GatewayService/CloseAgentLeg",
        },
        "gateway": {
            "AgentService/SetState",  # pause an agent whose phone leg dropped
        },
        "dnc": set(),  # calls no other service
    }.items()
}


# Reachable with no token at all: health always; server reflection only with OUTDIAL_REFLECTION=public.
HEALTH_PREFIXES = ("/grpc.health.v1.Health/",)
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
PUBLIC_PREFIXES = HEALTH_PREFIXES + REFLECTION_PREFIXES


def is_public(method: str, *, reflection: bool = True) -> bool:
    """No token needed: health, and reflection when ``reflection`` (OUTDIAL_REFLECTION=public)."""
    return method.startswith(PUBLIC_PREFIXES if reflection else HEALTH_PREFIXES)


def _who_may(method: str) -> str:
    roles = sorted(r.value for r in PERMISSIONS.get(method, ()))
    services = sorted(s for s, rpcs in SERVICE_CALLS.items() if method in rpcs)
    needed = f"needs role {' or '.join(roles)}" if roles else "no role may call it"
    return needed + (f"; services allowed: {', '.join(services)}" if services else "; no service may call it")


def authorize(principal: Principal, method: str) -> None:
    """Refuse a call the tables do not allow, naming what it needs (the role or service allowed)."""
    if method.startswith(REFLECTION_PREFIXES):  # OUTDIAL_REFLECTION=authenticated: any valid token
        return
    if principal.role is Role.SERVICE:
        name = principal.service
        if name is None or method not in SERVICE_CALLS.get(name, frozenset()):
            raise PermissionDenied(
                f"{principal.subject} may not call {method}: not on the allow-list of service "
                f"{name or '(none)'!r} ({_who_may(method)})",
                error_id="service_not_allowed",
            )
        return
    allowed = PERMISSIONS.get(method)
    if allowed is None or principal.role not in allowed:
        raise PermissionDenied(
            f"role {principal.role.value!r} may not call {method} ({_who_may(method)})",
            error_id="role_not_allowed",
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
