"""TLS between the services, with real certificates made by ``cryptography`` (a throwaway CA per test).

- OUTDIAL_TLS_CERT/KEY: the server speaks TLS; a client trusting OUTDIAL_TLS_CA gets through.
- OUTDIAL_TLS_CA on the server too: mutual TLS. A client presenting a certificate signed by that CA gets
  through; a client with no certificate, or with one from another CA, is refused in the handshake.
- OUTDIAL_REFLECTION: public (no token), authenticated (any valid token), off (not served).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from outdial.core import healthcheck, tls
from outdial.core.clients import open_channel
from outdial.core.config import Settings
from outdial.v1 import dnc_pb2, dnc_pb2_grpc
from tests.certs import Issued, TestCA
from tests.conftest import Services, make_token


def _client(base: Settings, ca: Path | None, leaf: Issued | None) -> Settings:
    """A client's settings: trusts ``ca``, presents ``leaf`` (or nothing), has no server certificate."""
    return base.model_copy(
        update={
            "tls_cert": None,
            "tls_key": None,
            "tls_ca": ca,
            "tls_client_cert": leaf.cert if leaf else None,
            "tls_client_key": leaf.key if leaf else None,
        }
    )


async def _health(settings: Settings, target: str, timeout: float = 5) -> int:
    async with open_channel(settings, target, lambda: None) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return int(resp.status)


async def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(
    services: Services, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path, "outdial-ca")
    server = ca.issue("dnc", dns=("localhost", "dnc"), ips=("127.0.0.1",), server=True)
    base = services.settings
    services.settings = base.model_copy(
        update={"tls_cert": server.cert, "tls_key": server.key, "tls_ca": ca.ca_file}
    )
    assert services.settings.mtls_required
    rs = await services.start("dnc", wait_serving=False)
    target = f"localhost:{rs.port}"

    # A client whose certificate the outdial CA signed: health, then an authenticated RPC.
    pacing = _client(base, ca.ca_file, ca.issue("pacing", dns=("pacing",), server=False))
    for _ in range(100):
        if await _health(pacing, target) == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.1)
    assert await _health(pacing, target) == health_pb2.HealthCheckResponse.SERVING
    token = make_token("compliance")
    async with open_channel(pacing, target, lambda: token) as ch:
        try:
            await dnc_pb2_grpc.DncServiceStub(ch).ListLists(dnc_pb2.ListListsRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
    # The server's own certificate works as a client's too (the services call each other with it).
    assert await _health(services.settings, target) == health_pb2.HealthCheckResponse.SERVING

    # Refused in the handshake, even for health and with a valid token: no certificate at all ...
    no_cert = _client(base, ca.ca_file, None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _health(no_cert, target)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    async with open_channel(no_cert, target, lambda: token) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await dnc_pb2_grpc.DncServiceStub(ch).ListLists(dnc_pb2.ListListsRequest(), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    # ... a certificate from another CA (the client still trusts ours) ...
    stranger = TestCA(tmp_path, "stranger-ca").issue("pacing", dns=("pacing",), server=False)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _health(_client(base, ca.ca_file, stranger), target)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    # ... or plaintext.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rs.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)


async def test_server_only_tls_when_client_auth_is_off(services: Services, tmp_path: Path) -> None:
    """OUTDIAL_TLS_CLIENT_AUTH=false: TLS without client certificates (the pre-mTLS behaviour, for a
    listener whose callers cannot hold one); a client trusting the CA gets through without a certificate."""
    ca = TestCA(tmp_path, "outdial-ca")
    server = ca.issue("dnc", dns=("localhost",), server=True)
    base = services.settings
    services.settings = base.model_copy(
        update={
            "tls_cert": server.cert,
            "tls_key": server.key,
            "tls_ca": ca.ca_file,
            "tls_client_auth": False,
        }
    )
    rs = await services.start("dnc", wait_serving=False)
    status = await _health(_client(base, ca.ca_file, None), f"localhost:{rs.port}")
    assert status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)


# ------------------------------------------------------------------------------------------- reflection


async def _list_services(ch: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    call = stub.ServerReflectionInfo(timeout=5)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    reply = await call.read()
    assert reply is not grpc.aio.EOF
    if reply.HasField("error_response"):
        raise AssertionError(reply.error_response.error_message)
    return [s.name for s in reply.list_services_response.service]


async def test_reflection_is_public_authenticated_or_off(services: Services) -> None:
    public = await services.start("dnc", reflection="public")
    authenticated = await services.start("dnc", reflection="authenticated")
    off = await services.start("dnc", reflection="off")

    # public (the development default): no token needed
    assert "outdial.v1.DncService" in await _list_services(services.channel(public, role=None))
    # authenticated: refused without a token, any valid token of any role is enough
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _list_services(services.channel(authenticated, role=None))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    for role in ("agent", "compliance"):
        names = await _list_services(services.channel(authenticated, role=role, sub="u1"))
        assert "outdial.v1.DncService" in names
    # off: not served at all, with or without a token
    for role in (None, "admin"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _list_services(services.channel(off, role=role))
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
    # health stays public in every mode (the kubelet's probes carry no token)
    for rs in (public, authenticated, off):
        async with grpc.aio.insecure_channel(rs.addr) as ch:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_health_probe_presents_the_service_certificate(tmp_path: Path) -> None:
    """The prod overlay's exec probe (``python -m outdial.core.healthcheck``) runs with the service's own
    settings: under mutual TLS it must present the service's certificate, or no pod would ever be ready."""
    ca = TestCA(tmp_path, "outdial-ca")
    leaf = ca.issue("dnc", dns=("dnc",), server=True)
    service = Settings(tls_cert=leaf.cert, tls_key=leaf.key, tls_ca=ca.ca_file)
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    creds = tls.server_credentials(service)
    assert creds is not None
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        probe = service.model_copy(update={"dnc_addr": f"dnc:{port}"})
        assert await asyncio.to_thread(healthcheck.check, probe, "dnc", timeout=5) == healthcheck.SERVING
        no_cert = _client(probe, ca.ca_file, None)
        assert (
            await asyncio.to_thread(healthcheck.check, no_cert, "dnc", timeout=5) == healthcheck.UNREACHABLE
        )
    finally:
        await server.stop(None)
