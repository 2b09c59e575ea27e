"""``python -m outdial.core.healthcheck SERVICE``: ask a local service for its grpc.health.v1 status.

The kubelet's native ``grpc`` probe speaks plaintext HTTP/2 only, so it cannot probe a server that runs with
TLS. The production overlay therefore uses this command as an ``exec`` probe: it reads the same ``OUTDIAL_``
settings as the service, connects to ``127.0.0.1:<the service's listen port>`` with TLS when the service has
TLS (trusting ``OUTDIAL_TLS_CA``, checking the certificate against the host name clients use, e.g. ``dnc``,
or ``OUTDIAL_TLS_SERVER_NAME``), and exits 0 only when the overall health (service "") is SERVING.

Exit codes: 0 SERVING, 1 NOT_SERVING or unknown, 2 unreachable / error. It keeps no state and writes nothing
to disk, so it runs under a read-only root filesystem.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outdial.core.config import SERVICES, ServiceName, Settings
from outdial.core.tls import channel_credentials

SERVING = 0
NOT_SERVING = 1
UNREACHABLE = 2


def target_for(settings: Settings, service: ServiceName, host: str = "127.0.0.1") -> str:
    """``host:port`` of the service's own listener (the probe runs in the service's container)."""
    port = settings.listen_addr(service).rsplit(":", 1)[1]
    return f"{host}:{port}"


def server_name_for(settings: Settings, service: ServiceName) -> str:
    """The TLS name to verify: OUTDIAL_TLS_SERVER_NAME, else the host part of OUTDIAL_<SVC>_ADDR."""
    return settings.tls_server_name or settings.addr(service).rsplit(":", 1)[0]


def check(settings: Settings, service: ServiceName, *, timeout: float = 3.0, host: str = "127.0.0.1") -> int:
    """One health check; returns the exit code (see the module docstring)."""
    target = target_for(settings, service, host)
    creds = channel_credentials(settings)  # the service's own certificate doubles as the client's (mTLS)
    if creds is not None:
        options = [("grpc.ssl_target_name_override", server_name_for(settings, service))]
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        print(f"{service} at {target}: unreachable ({code})", file=sys.stderr)
        return UNREACHABLE
    finally:
        channel.close()
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return SERVING
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{service} at {target}: {status}", file=sys.stderr)
    return NOT_SERVING


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m outdial.core.healthcheck",
        description="exit 0 when the local outdial service reports grpc.health.v1 SERVING (TLS aware)",
    )
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    parser.add_argument("--host", default="127.0.0.1", help="address to connect to (default 127.0.0.1)")
    args = parser.parse_args(argv)
    return check(Settings(), args.service, timeout=args.timeout, host=args.host)


if __name__ == "__main__":
    sys.exit(main())


async def wait_until_serving(addr: str, timeout: float = 30.0, *, service: str = "") -> None:
    """Wait (plaintext) until the gRPC health of ``addr`` reports SERVING; RuntimeError after ``timeout``.
    Used by the demo, the benchmarks and the tests when they start services themselves."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            async with grpc.aio.insecure_channel(addr) as ch:
                resp = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError as exc:
            last = exc.code().name
        if loop.time() > deadline:
            raise RuntimeError(f"{addr} did not become SERVING within {timeout:.0f}s (last: {last})")
        await asyncio.sleep(0.1)
