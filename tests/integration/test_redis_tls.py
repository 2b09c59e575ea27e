"""rediss:// with a pinned CA and a Redis ACL user per service, against a real redis-server speaking TLS.

The prod overlay gives each service ``OUTDIAL_REDIS_URL=rediss://outdial-<svc>:PASSWORD@host/0`` and
``OUTDIAL_REDIS_TLS_CA``: the client verifies the server's certificate and host name against that CA, and the
ACL user of a service other than dnc cannot write the DNC index (docs/security.md).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.exceptions

from outdial.core import keys
from outdial.core.config import SERVICES, Settings
from outdial.core.infra import _wait_port, find_binary, free_port
from outdial.core.redis import RedisTLS, create_redis
from outdial.core.redis_acl import acl_rules
from outdial.v1 import dnc_pb2, dnc_pb2_grpc
from tests.certs import Issued, TestCA
from tests.conftest import Services
from tests.integration.test_dnc_gate import NO_REGISTRY, wait_index
from tests.tools import unavailable

# The users of deploy/redis/users.acl (core/redis_acl.py), with a password each.
USERS = {f"outdial-{svc}": acl_rules(svc) for svc in SERVICES}


@dataclass
class TlsRedis:
    port: int
    ca: TestCA
    client: Issued


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    binary = find_binary("redis-server")
    if binary is None:
        unavailable("redis-server")
    assert binary is not None
    ca = TestCA(tmp_path, "redis-ca")
    server = ca.issue("redis", dns=("localhost",), server=True)
    port = free_port()
    conf = tmp_path / "redis.conf"
    lines = [
        "port 0",
        "bind 127.0.0.1",
        f"tls-port {port}",
        f"tls-cert-file {server.cert}",
        f"tls-key-file {server.key}",
        f"tls-ca-cert-file {ca.ca_file}",
        "tls-auth-clients optional",
        'save ""',
        "appendonly no",
        f"dir {tmp_path}",
        "user default off",
        *(f"user {name} on >{name}-pw {rules}" for name, rules in USERS.items()),
    ]
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([str(binary), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc, "redis (TLS)", timeout=20)
        yield TlsRedis(port, ca, ca.issue("outdial-dnc", server=False))
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


def _url(user: str, port: int, host: str = "localhost") -> str:
    return f"rediss://{user}:{user}-pw@{host}:{port}/0"


async def test_rediss_verifies_the_server_and_acl_users_keep_to_their_keys(tls_redis: TlsRedis) -> None:
    tls = RedisTLS.from_settings(Settings(redis_tls_ca=tls_redis.ca.ca_file))
    dnc = create_redis(_url("outdial-dnc", tls_redis.port), tls=tls)
    campaign = create_redis(_url("outdial-campaign", tls_redis.port), tls=tls)
    try:
        assert await dnc.ping()
        assert await dnc.acl_whoami() == "outdial-dnc"
        await dnc.set(keys.dnc_index_current(), "7")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await dnc.set(keys.number_abandoned("+14155550100"), "1")  # the dialer's key, not dnc's
        with pytest.raises(redis.exceptions.NoPermissionError):
            await dnc.publish(keys.agent_offers("a1"), "forged offer")
        # another service's user cannot change what the DNC gate answers, nor read it
        assert await campaign.sadd(keys.active_campaigns(), "c1") == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            await campaign.set(keys.dnc_index_current(), "0")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await campaign.get(keys.dnc_index_current())
        with pytest.raises(redis.exceptions.NoPermissionError):
            await campaign.flushall()
        assert await dnc.get(keys.dnc_index_current()) == "7"
    finally:
        await dnc.aclose()
        await campaign.aclose()


async def test_rediss_refuses_an_unverified_server(tls_redis: TlsRedis, tmp_path: Path) -> None:
    stranger = TestCA(tmp_path, "stranger")
    cases = {
        "another CA": create_redis(_url("outdial-dnc", tls_redis.port), tls=RedisTLS(ca=stranger.ca_file)),
        "the system roots": create_redis(_url("outdial-dnc", tls_redis.port)),
        # the certificate names localhost, not 127.0.0.1: the host name is checked
        "a wrong host name": create_redis(
            _url("outdial-dnc", tls_redis.port, host="127.0.0.1"), tls=RedisTLS(ca=tls_redis.ca.ca_file)
        ),
        "plaintext": create_redis(f"redis://outdial-dnc:outdial-dnc-pw@localhost:{tls_redis.port}/0"),
    }
    for what, client in cases.items():
        try:
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
        except BaseException as exc:
            raise AssertionError(f"{what}: {exc!r}") from exc
        finally:
            await client.aclose()


async def test_rediss_client_certificate(tls_redis: TlsRedis) -> None:
    """OUTDIAL_REDIS_TLS_CERT/KEY: a client certificate for a server with tls-auth-clients."""
    leaf = tls_redis.client
    tls = RedisTLS(ca=tls_redis.ca.ca_file, cert=leaf.cert, key=leaf.key)
    client = create_redis(_url("outdial-dnc", tls_redis.port), tls=tls)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    with pytest.raises(ValueError, match="OUTDIAL_REDIS_TLS_CERT and OUTDIAL_REDIS_TLS_KEY"):
        create_redis(_url("outdial-dnc", tls_redis.port), tls=RedisTLS(cert=leaf.cert))
    with pytest.raises(ValueError, match="OUTDIAL_REDIS_TLS_CA: no such file"):
        create_redis(_url("outdial-dnc", tls_redis.port), tls=RedisTLS(ca=leaf.cert.with_name("nope.crt")))
    # plain redis:// ignores the TLS settings (no ValueError: development keeps working with them set)
    plain = create_redis("redis://127.0.0.1:1/0", tls=RedisTLS(cert=leaf.cert))
    await plain.aclose()


async def test_the_dnc_service_runs_as_its_own_acl_user_over_rediss(
    services: Services, tls_redis: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DNC service with the prod overlay's Redis settings (rediss://, its ACL user, the CA): it builds
    its index, answers, adds and rebuilds; everything it needs is within deploy/redis/users.acl."""
    for k, v in NO_REGISTRY.items():
        monkeypatch.setenv(k, v)
    rs = await services.start(
        "dnc", redis_url=_url("outdial-dnc", tls_redis.port), redis_tls_ca=tls_redis.ca.ca_file
    )
    stub = dnc_pb2_grpc.DncServiceStub(services.channel(rs, role="compliance"))
    await wait_index(stub)
    await stub.AddNumbers(dnc_pb2.AddNumbersRequest(numbers=["+12025550181"], reason="asked"), timeout=10)
    resp = await stub.CheckNumbers(dnc_pb2.CheckNumbersRequest(numbers=["+12025550181"]), timeout=10)
    assert not resp.decisions[0].allowed
    rebuilt = await stub.RebuildIndex(dnc_pb2.RebuildIndexRequest(), timeout=30)
    assert rebuilt.numbers >= 1
    admin = create_redis(_url("outdial-dnc", tls_redis.port), tls=RedisTLS(ca=tls_redis.ca.ca_file))
    try:
        assert await admin.get(keys.dnc_index_current()) == str(rebuilt.index_version)
    finally:
        await admin.aclose()
