"""A gateway on loopback for tests: rtpengine, the gateway (in-process, its own ports) and a client.

SIP tests are skipped only when a binary is missing and OUTDIAL_REQUIRE_SIP is not set (CI sets it: there, a
missing binary fails)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outdial.core.auth import Role
from outdial.core.clients import open_channel
from outdial.core.config import Settings
from outdial.gateway.rig import free_media_port, missing_binaries
from outdial.gateway.rig import free_port as rig_free_port
from outdial.gateway.rtpengine_proc import RtpengineProcess, start_rtpengine
from outdial.gateway.settings import GatewaySettings
from outdial.v1 import gateway_pb2 as pb
from outdial.v1 import gateway_pb2_grpc
from tests.conftest import make_token
from tests.tools import unavailable


def require_sip() -> None:
    """Skip the calling module when this machine cannot run SIP tests (fail instead under CI)."""
    lacking = missing_binaries()
    if lacking:
        unavailable(lacking, module=True)


#: A media port for SIPp (it binds the port and the one two above).
free_port = free_media_port


#: A port free for both UDP and TCP (SIP, gRPC).
free_tcp_udp_port = rig_free_port


@dataclass
class Rig:
    stub: gateway_pb2_grpc.GatewayServiceStub
    channel: grpc.aio.Channel
    settings: GatewaySettings
    rtp: RtpengineProcess
    sip_port: int
    tmp: Path
    events: asyncio.Queue[pb.StreamCallEventsResponse]
    metrics_port: int = 0
    owner: str = "test-dialer"
    proc: subprocess.Popen[bytes] | None = None
    follower: asyncio.Task[None] | None = None

    @property
    def log(self) -> Path:
        return self.tmp / "gateway.log"

    async def start_gateway(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "outdial.gateway"],
                env=gateway_env(self.settings, self.metrics_port),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        await wait_serving(self.channel, self.proc, self.log)

    def stop_gateway(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill_gateway(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    async def follow(self) -> None:
        """The owner's event stream, reconnected when the gateway restarts."""
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for ev in self.stub.StreamCallEvents(pb.StreamCallEventsRequest(owner=self.owner)):
                    self.events.put_nowait(ev)
            await asyncio.sleep(0.2)

    def metric(self, name: str, labels: dict[str, str]) -> float:
        """One sample of the gateway's Prometheus metrics."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        )
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def trunk_port(self) -> int:
        return int(self.settings.trunk_uri.rsplit(":", 1)[1])

    async def next_event(self, call_id: str, timeout: float = 30.0) -> pb.StreamCallEventsResponse:
        deadline = time.monotonic() + timeout
        while True:
            ev = await asyncio.wait_for(self.events.get(), max(0.01, deadline - time.monotonic()))
            if ev.call_id == call_id:
                return ev

    async def until(self, call_id: str, kind: int, timeout: float = 30.0) -> pb.StreamCallEventsResponse:
        deadline = time.monotonic() + timeout
        while True:
            ev = await self.next_event(call_id, max(0.01, deadline - time.monotonic()))
            if ev.kind == kind:
                return ev

    async def originate(self, call_id: str, number: str = "+14155550100", ring_s: float = 20.0) -> None:
        await self.stub.Originate(
            pb.OriginateRequest(
                call_id=call_id,
                number=number,
                caller_id="+12125550123",
                ring_timeout_s=ring_s,
                owner=self.owner,
                identity="eyJhbGciOiJFUzI1NiJ9.test.sig;info=<https://cert.example/c.pem>;alg=ES256;ppt=shaken",
            ),
            timeout=15,
        )


def gateway_env(gs: GatewaySettings, metrics_port: int) -> dict[str, str]:
    """The environment that makes ``python -m outdial.gateway`` run with these settings."""
    env = dict(os.environ)
    for name, value in gs.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"OUTDIAL_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["OUTDIAL_DEV"] = "1"
    env["OUTDIAL_METRICS_PORT"] = str(metrics_port)
    env["OUTDIAL_LOG_LEVEL"] = "INFO"
    return env


async def wait_serving(channel: grpc.aio.Channel, proc: subprocess.Popen[bytes], log: Path) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(grpc.aio.AioRpcError):
            r = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if r.status == health_pb2.HealthCheckResponse.SERVING:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"gateway not SERVING: {log.read_text()[-3000:]}")


@contextlib.asynccontextmanager
async def gateway_rig(tmp_path: Path, **overrides: object) -> AsyncIterator[Rig]:
    """rtpengine, the gateway as its own process (``python -m outdial.gateway``: sippy's dispatcher is one
    per process, and the kill tests need a process anyway) and a client following the event stream."""
    ng, dtmf = free_port(), free_port()
    base = 46000 + (os.getpid() % 40) * 80
    rtp = start_rtpengine(
        ng_port=ng, dtmf_port=dtmf, port_min=base, port_max=base + 79, recording_dir=tmp_path / "rec"
    )
    creds = tmp_path / "agents.txt"
    creds.write_text("agent7 s3cret-pass\n")
    gs = GatewaySettings(
        sip_listen_host="127.0.0.1",
        sip_listen_port=free_tcp_udp_port(),
        trunk_uri=f"sip:127.0.0.1:{free_tcp_udp_port()}",
        trunk_max_calls=20,
        trunk_cps=20,
        rtpengine_ng=f"127.0.0.1:{ng}",
        rtpengine_dtmf_listen=f"127.0.0.1:{dtmf}",
        prompts_dir=tmp_path / "prompts",
        recordings_dir=tmp_path / "rec",
        gateway_listen=f"127.0.0.1:{free_tcp_udp_port()}",
        agent_addr="127.0.0.1:1",
        sip_agents_file=creds,
        edge_workdir=tmp_path / "edge",
        state_dir=tmp_path / "state",
    )
    gs = gs.model_copy(update=overrides)
    rig = Rig(
        stub=None,  # type: ignore[arg-type]
        channel=None,  # type: ignore[arg-type]
        settings=gs,
        rtp=rtp,
        sip_port=gs.sip_listen_port,
        tmp=tmp_path,
        events=asyncio.Queue(),
        metrics_port=free_tcp_udp_port(),
    )
    # The rig drives the gateway as both pacing and the agent service do: an admin token may call both sets.
    token = make_token(Role.ADMIN, "gateway-rig")
    rig.channel = open_channel(Settings(dev=True), gs.gateway_listen, lambda: token)
    rig.stub = gateway_pb2_grpc.GatewayServiceStub(rig.channel)
    try:
        await rig.start_gateway()
        rig.follower = asyncio.create_task(rig.follow())
        yield rig
    finally:
        if rig.follower is not None:
            rig.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await rig.follower
        rig.stop_gateway()
        await rig.channel.close()
        rtp.stop()


class LoopbackCapture:
    """A packet capture on the loopback interface (an AF_PACKET socket, as tcpdump opens; needs root, which
    the test machine and CI have): UDP datagrams to the given ports, with their arrival time. What a peer
    received, seen on the wire, not as the sender reports it."""

    def __init__(self, ports: set[int]) -> None:
        self.ports = ports
        self.packets: list[tuple[float, int, int, bytes]] = []  # (time, src port, dst port, UDP payload)
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.ntohs(0x0800))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 28 or data[9] != 17:  # IPv4, UDP
                continue
            ihl = (data[0] & 0x0F) * 4
            src, dst = int.from_bytes(data[ihl : ihl + 2]), int.from_bytes(data[ihl + 2 : ihl + 4])
            if dst in self.ports:
                self.packets.append((time.time(), src, dst, data[ihl + 8 :]))

    def to(self, port: int, after: float = 0.0) -> list[tuple[float, int, int, bytes]]:
        return [p for p in self.packets if p[2] == port and p[0] >= after]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self._sock.close()
