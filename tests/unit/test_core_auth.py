"""Auth: tokens, the permission table, and that every RPC of the v1 API has an entry."""

from __future__ import annotations

import time

import jwt
import pytest

from outdial.core.auth import PERMISSIONS, Role, authorize, bearer_from_metadata, issue_token, verify_token
from outdial.core.errors import PermissionDenied, Unauthenticated
from outdial.v1 import agent_pb2, campaign_pb2, dnc_pb2, gateway_pb2, pacing_pb2

SECRET = "unit-test-secret-0123456789abcdef0123"


def _all_rpcs() -> set[str]:
    out = set()
    for mod in (campaign_pb2, dnc_pb2, agent_pb2, pacing_pb2, gateway_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out.add(f"/{svc.full_name}/{m.name}")
    return out


def test_every_rpc_has_a_permission_entry() -> None:
    missing = _all_rpcs() - set(PERMISSIONS)
    assert not missing, f"RPCs without a role table entry (they would be denied to all): {sorted(missing)}"
    assert not set(PERMISSIONS) - _all_rpcs(), "permission entries for RPCs that do not exist"


def test_admin_may_call_everything_and_agent_may_not_verify_audit() -> None:
    admin = verify_token(SECRET, issue_token(SECRET, "root", Role.ADMIN))
    for method in _all_rpcs():
        authorize(admin, method)
    agent = verify_token(SECRET, issue_token(SECRET, "a-1", Role.AGENT))
    with pytest.raises(PermissionDenied):
        authorize(agent, "/outdial.v1.DncService/VerifyAudit")
    authorize(agent, "/outdial.v1.AgentService/Connect")


def test_token_round_trip_and_rejections() -> None:
    p = verify_token(SECRET, issue_token(SECRET, "ops-1", "manager"))
    assert (p.subject, p.role) == ("ops-1", Role.MANAGER)
    with pytest.raises(Unauthenticated):
        verify_token("another-secret-0123456789abcdef0123", issue_token(SECRET, "ops-1", "manager"))
    expired = jwt.encode(
        {
            "sub": "x",
            "role": "admin",
            "iss": "outdial",
            "aud": "outdial-api",
            "iat": 1,
            "exp": int(time.time()) - 60,
        },
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(Unauthenticated, match="expired"):
        verify_token(SECRET, expired)
    bad_role = jwt.encode(
        {
            "sub": "x",
            "role": "root",
            "iss": "outdial",
            "aud": "outdial-api",
            "iat": 1,
            "exp": int(time.time()) + 60,
        },
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(Unauthenticated, match="role"):
        verify_token(SECRET, bad_role)


def test_bearer_metadata_parsing() -> None:
    assert bearer_from_metadata([("authorization", "Bearer abc")]) == "abc"
    with pytest.raises(Unauthenticated):
        bearer_from_metadata([])
    with pytest.raises(Unauthenticated):
        bearer_from_metadata([("authorization", "Basic abc")])
