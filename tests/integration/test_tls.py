"""TLS: with OUTDIAL_TLS_CERT/KEY set the server speaks TLS; a client trusting OUTDIAL_TLS_CA gets through."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outdial.core.clients import open_channel
from outdial.v1 import dnc_pb2, dnc_pb2_grpc
from tests.conftest import Services, make_token


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "tls.key", tmp / "tls.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_round_trip(services: Services, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    services.settings = services.settings.model_copy(
        update={"tls_cert": cert, "tls_key": key, "tls_ca": cert}
    )
    rs = await services.start("dnc", wait_serving=False)
    token = make_token("compliance")
    async with open_channel(services.settings, f"localhost:{rs.port}", lambda: token) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for _ in range(100):
            resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        # An authenticated RPC reaches the servicer over TLS (any answer but UNAUTHENTICATED/UNAVAILABLE).
        try:
            await dnc_pb2_grpc.DncServiceStub(ch).ListLists(dnc_pb2.ListListsRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
    # A plaintext client cannot talk to it.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rs.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)
