"""Auth: tokens (Ed25519, by kid, bound to what each key may sign, capped, with leeway and jti), the
permission table, the per-service allow-lists, and that every RPC of the v1 API has an entry."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from outdial.core.auth import (
    LEEWAY_SECONDS,
    PERMISSIONS,
    SERVICE_CALLS,
    Principal,
    Role,
    authorize,
    bearer_from_metadata,
    issue_token,
    verify_token,
)
from outdial.core.errors import PermissionDenied, Unauthenticated, Unavailable
from outdial.core.revocation import Revocation, RevocationList
from outdial.core.signing import dev_jwks, dev_key, generate_key, jwks_of
from outdial.v1 import agent_pb2, campaign_pb2, dnc_pb2, gateway_pb2, pacing_pb2
from tests.conftest import make_token

JWKS = dev_jwks()
ISSUER = dev_key("issuer")


def _all_rpcs() -> set[str]:
    out = set()
    for mod in (campaign_pb2, dnc_pb2, agent_pb2, pacing_pb2, gateway_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out.add(f"/{svc.full_name}/{m.name}")
    return out


def _raw(key: object, kid: str, **claims: object) -> str:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": "x",
        "role": "admin",
        "iss": "outdial",
        "aud": "outdial-api",
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    base.update(claims)
    return jwt.encode(
        {k: v for k, v in base.items() if v is not None}, key, algorithm="EdDSA", headers={"kid": kid}
    )  # type: ignore[arg-type]


def test_every_rpc_has_a_permission_entry() -> None:
    missing = _all_rpcs() - set(PERMISSIONS)
    assert not missing, f"RPCs without a role table entry (they would be denied to all): {sorted(missing)}"
    assert not set(PERMISSIONS) - _all_rpcs(), "permission entries for RPCs that do not exist"
    for service, rpcs in SERVICE_CALLS.items():
        assert not rpcs - _all_rpcs(), f"{service}'s allow-list names RPCs that do not exist"


def test_admin_may_call_everything_and_agent_may_not_verify_audit() -> None:
    admin = verify_token(JWKS, make_token(Role.ADMIN, "root"))
    for method in _all_rpcs():
        authorize(admin, method)
    agent = verify_token(JWKS, make_token(Role.AGENT, "a-1"))
    with pytest.raises(PermissionDenied):
        authorize(agent, "/outdial.v1.DncService/VerifyAudit")
    authorize(agent, "/outdial.v1.AgentService/Connect")


def test_token_round_trip_and_rejections() -> None:
    p = verify_token(JWKS, make_token("manager", "ops-1"))
    assert (p.subject, p.role) == ("ops-1", Role.MANAGER)
    assert p.token_id and p.issued_at > 0
    # signed by a key that is not in the JWKS
    with pytest.raises(Unauthenticated, match="unknown key"):
        verify_token(JWKS, issue_token(generate_key("issuer"), "ops-1", "manager"))
    with pytest.raises(Unauthenticated, match="expired"):
        verify_token(JWKS, _raw(ISSUER.private, ISSUER.kid, iat=1, exp=int(time.time()) - 60))
    with pytest.raises(Unauthenticated, match="role"):
        verify_token(JWKS, _raw(ISSUER.private, ISSUER.kid, role="root"))


def test_the_old_hs256_tokens_are_refused() -> None:
    old = jwt.encode(
        {"sub": "x", "role": "admin", "iss": "outdial", "aud": "outdial-api", "exp": int(time.time()) + 60},
        "outdial-dev-secret-change-me-before-production",
        algorithm="HS256",
    )
    with pytest.raises(Unauthenticated, match="EdDSA only"):
        verify_token(JWKS, old)


def test_jti_is_required() -> None:
    with pytest.raises(Unauthenticated, match="jti"):
        verify_token(JWKS, _raw(ISSUER.private, ISSUER.kid, jti=None))


def test_ttl_is_capped_at_issue_and_at_verification() -> None:
    with pytest.raises(ValueError, match="positive"):
        issue_token(ISSUER, "ops-1", Role.MANAGER, 0)
    with pytest.raises(ValueError, match="positive"):
        issue_token(ISSUER, "ops-1", Role.MANAGER, -5)
    with pytest.raises(ValueError, match="cap"):
        issue_token(ISSUER, "ops-1", Role.MANAGER, 24 * 3600 + 1)
    issue_token(ISSUER, "ops-1", Role.MANAGER, 24 * 3600)
    with pytest.raises(ValueError, match="cap"):
        issue_token(dev_key("pacing"), "svc:pacing", Role.SERVICE, 3601)
    # A token minted by hand with a week of life is refused even with a valid signature.
    now = int(time.time())
    week = _raw(ISSUER.private, ISSUER.kid, iat=now, exp=now + 7 * 24 * 3600)
    with pytest.raises(Unauthenticated, match="cap"):
        verify_token(JWKS, week)


def test_leeway_accepts_a_clock_running_20_seconds_ahead() -> None:
    ahead = issue_token(ISSUER, "ops-1", Role.MANAGER, 600, now=time.time() + 20)
    assert verify_token(JWKS, ahead).subject == "ops-1"
    expired_15s_ago = issue_token(ISSUER, "ops-1", Role.MANAGER, 60, now=time.time() - 75)
    assert verify_token(JWKS, expired_15s_ago).subject == "ops-1"
    too_far = issue_token(ISSUER, "ops-1", Role.MANAGER, 600, now=time.time() + LEEWAY_SECONDS + 30)
    with pytest.raises(Unauthenticated):
        verify_token(JWKS, too_far)


def test_a_service_key_mints_only_its_own_identity() -> None:
    pacing = dev_key("pacing")
    assert verify_token(JWKS, issue_token(pacing, "svc:pacing:pod-1", Role.SERVICE, 600)).service == "pacing"
    # at issue ...
    with pytest.raises(ValueError, match="may not sign"):
        issue_token(pacing, "svc:dnc", Role.SERVICE, 600)
    with pytest.raises(ValueError, match="only role 'service'"):
        issue_token(pacing, "root", Role.ADMIN, 600)
    # ... and, for a token forged by hand with the pacing key, at verification
    for claims in ({"sub": "svc:dnc", "role": "service"}, {"sub": "root", "role": "admin"},
                   {"sub": "svc:pacingx", "role": "service"}):  # fmt: skip
        with pytest.raises(Unauthenticated, match="token refused"):
            verify_token(JWKS, _raw(pacing.private, pacing.kid, **claims))


def test_the_issuer_may_not_mint_a_service_identity() -> None:
    with pytest.raises(ValueError, match="issuer key may not sign service"):
        issue_token(ISSUER, "svc:pacing", Role.SERVICE, 600)
    with pytest.raises(ValueError, match="issuer key may not sign service"):
        issue_token(ISSUER, "svc:pacing", Role.ADMIN, 600)
    with pytest.raises(Unauthenticated, match="issuer key may not sign service"):
        verify_token(JWKS, _raw(ISSUER.private, ISSUER.kid, sub="svc:pacing", role="service"))


def test_kid_rotation_old_and_new_verify_and_a_removed_kid_is_refused() -> None:
    old, new = generate_key("issuer"), generate_key("issuer")
    pacing = generate_key("pacing")
    before = jwks_of([old, pacing])
    during = jwks_of([old, new, pacing])
    after = jwks_of([new, pacing])
    old_token = issue_token(old, "ops-1", Role.MANAGER, 600)
    new_token = issue_token(new, "ops-1", Role.MANAGER, 600)
    assert verify_token(before, old_token).subject == "ops-1"
    assert verify_token(during, old_token).subject == verify_token(during, new_token).subject == "ops-1"
    assert verify_token(after, new_token).subject == "ops-1"
    with pytest.raises(Unauthenticated, match="unknown key"):
        verify_token(after, old_token)


def test_a_service_may_call_only_its_allow_list() -> None:
    pacing = Principal("svc:pacing:pod-1", Role.SERVICE)
    authorize(pacing, "/outdial.v1.AgentService/OfferCall")
    authorize(pacing, "/outdial.v1.DncService/CheckNumbers")
    with pytest.raises(PermissionDenied) as err:
        authorize(pacing, "/outdial.v1.DncService/SetConsent")
    assert "svc:pacing:pod-1" in err.value.message and "needs role" in err.value.message
    campaign = Principal("svc:campaign", Role.SERVICE)
    authorize(campaign, "/outdial.v1.DncService/CheckNumbers")
    with pytest.raises(PermissionDenied, match="services allowed: pacing"):
        authorize(campaign, "/outdial.v1.AgentService/OfferCall")
    with pytest.raises(PermissionDenied):
        authorize(Principal("svc:dnc", Role.SERVICE), "/outdial.v1.DncService/AddNumbers")
    # a service subject that names no service, or an unknown one
    for sub in ("tester", "svc:bogus"):
        with pytest.raises(PermissionDenied):
            authorize(Principal(sub, Role.SERVICE), "/outdial.v1.DncService/CheckNumbers")
    # the shared wildcard is gone: no service may reach what no service calls
    called = set().union(*SERVICE_CALLS.values())
    for method in ("/outdial.v1.DncService/SetConsent", "/outdial.v1.DncService/AddNumbers",
                   "/outdial.v1.CampaignService/CreateCampaign"):  # fmt: skip
        assert method not in called


def test_revocation_list_by_jti_and_by_subject_fails_closed_until_loaded() -> None:
    clock = [100.0]
    rl = RevocationList(max_stale_seconds=60, monotonic=lambda: clock[0])
    p = Principal("ops-1", Role.MANAGER, token_id="j1", issued_at=int(time.time()) - 10)
    with pytest.raises(Unavailable, match="not loaded"):
        rl.check(p)
    rl.mark_fresh()
    rl.check(p)
    rl.merge([Revocation("jti", "j1", 0.0, time.time() + 60)])
    with pytest.raises(Unauthenticated, match="revoked"):
        rl.check(p)
    rl.check(Principal("ops-1", Role.MANAGER, token_id="j2", issued_at=p.issued_at))
    rl.merge([Revocation("subject", "svc:pacing", time.time() - 5, time.time() + 60)])
    with pytest.raises(Unauthenticated, match="svc:pacing"):
        rl.check(Principal("svc:pacing:pod-1", Role.SERVICE, "j3", int(time.time()) - 10))
    rl.check(Principal("svc:pacing:pod-1", Role.SERVICE, "j4", int(time.time())))  # issued after T
    clock[0] += 61
    with pytest.raises(Unavailable, match="refused"):
        rl.check(Principal("ops-2", Role.MANAGER, "j5", int(time.time())))


def test_bearer_metadata_parsing() -> None:
    assert bearer_from_metadata([("authorization", "Bearer abc")]) == "abc"
    with pytest.raises(Unauthenticated):
        bearer_from_metadata([])
    with pytest.raises(Unauthenticated):
        bearer_from_metadata([("authorization", "Basic abc")])
