"""Wiring and lifecycle of the gateway process (``python -m outdial.gateway``).

The gateway needs neither PostgreSQL nor Redis: it holds SIP dialogs and rtpengine sessions, and reports what
happens to the dialer that placed each call. So it has its own small lifecycle beside the services' one
(same interceptor for auth, logging and error mapping; same health, reflection and metrics; same graceful
shutdown): its health follows rtpengine's reachability and the SIP stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from outdial.core import logging as odlog
from outdial.core import tls
from outdial.core.clients import ServiceToken, open_channel
from outdial.core.config import Settings
from outdial.core.limits import Limits, server_options
from outdial.core.metrics import (
    GATEWAY_AGENT_LEGS,
    GATEWAY_IN_FLIGHT,
    GATEWAY_MEDIA_UP,
    GATEWAY_TRUNK_UP,
    SERVING,
    start_metrics_server,
)
from outdial.core.server import SERVER_OPTIONS, CoreInterceptor, enable_reflection
from outdial.core.signing import KeyConfigError, service_keys
from outdial.core.verifier import Verifier
from outdial.gateway.edge import EdgeConfig, EdgeProcess, start_edge
from outdial.gateway.engine import Gateway, TrunkConfig, parse_sip_uri
from outdial.gateway.prompts import PromptCache
from outdial.gateway.recordings import summarise
from outdial.gateway.rtpengine import DtmfListener, Media, RtpEngine
from outdial.gateway.service import GatewayServicer
from outdial.gateway.settings import GatewaySettings
from outdial.gateway.sip import SipStack
from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2

log = logging.getLogger("outdial.gateway")
FULL_NAME = "outdial.v1.GatewayService"
METRICS_PORT_OFFSET = 5  # campaign 9101 … agent 9104, gateway 9105


def trunk_config(s: GatewaySettings) -> TrunkConfig:
    """The trunk from settings; errors name the setting."""
    try:
        _user, host, port = parse_sip_uri(s.trunk_uri)
    except ValueError as exc:
        raise ValueError(f"OUTDIAL_TRUNK_URI: {exc}") from exc
    proxy: tuple[str, int] | None = None
    if s.trunk_outbound_proxy:
        try:
            _u, phost, pport = parse_sip_uri(s.trunk_outbound_proxy)
        except ValueError as exc:
            raise ValueError(f"OUTDIAL_TRUNK_OUTBOUND_PROXY: {exc}") from exc
        proxy = (phost, pport or 5060)
    next_hop = proxy or (host, port or 5060)
    if s.trunk_transport != "udp":
        ehost, eport = _host_port(s.trunk_edge, "OUTDIAL_TRUNK_EDGE")
        next_hop = (ehost, eport)
    password = s.trunk_password.get_secret_value()
    return TrunkConfig(
        host=host,
        port=port,
        next_hop=next_hop,
        from_domain=s.trunk_from_domain or host,
        auth=(s.trunk_username, password) if s.trunk_username else None,
        proxy=proxy if s.trunk_transport == "udp" else None,
        max_calls=s.trunk_max_calls,
        cps=s.trunk_cps,
    )


def _host_port(value: str, setting: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{setting}: expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def _listen(server: grpc.aio.Server, addr: str, core: Settings) -> int:
    """The gRPC listener, with TLS when the services use it (the dialer and the agent service dial it so)."""
    creds = tls.server_credentials(core)  # mutual TLS when OUTDIAL_TLS_CA is set, like the services
    if creds is not None:
        return int(server.add_secure_port(addr, creds))
    return int(server.add_insecure_port(addr))


def _kill_stale_edge(workdir: Path) -> None:
    """A gateway killed with SIGKILL leaves its Kamailio edge running (its own process group): stop it."""
    pidfile = workdir / "edge.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"kamailio" in cmdline:
        log.warning("stopping the SIP edge (pid %d) a killed gateway left running", pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def edge_config(s: GatewaySettings) -> EdgeConfig:
    """The Kamailio edge for a TCP/TLS trunk, from the gateway's settings."""
    _user, host, port = parse_sip_uri(s.trunk_uri)
    transport: Literal["tcp", "tls"] = "tls" if s.trunk_transport == "tls" else "tcp"
    return EdgeConfig(
        listen_udp=s.trunk_edge,
        gateway_udp=f"{s.sip_listen_host}:{s.sip_listen_port}",
        listen_trunk=s.edge_trunk_listen,
        trunk_host=host,
        trunk_port=port or (5061 if transport == "tls" else 5060),
        transport=transport,
        tls_ca_file=s.trunk_tls_ca_file,
        tls_verify=s.trunk_tls_verify,
        tls_cert_file=s.trunk_tls_cert_file,
        tls_key_file=s.trunk_tls_key_file,
        tls_client_cert=s.trunk_tls_client_cert,
        advertise=s.edge_advertise or None,
    )


class AgentCredentials:
    """``agent_id password`` per line (a Secret mounted as a file); re-read when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mtime = -1.0
        self._table: dict[str, str] = {}

    def reload(self) -> None:
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            log.error("agents' SIP credentials %s unreadable: %s", self.path, exc)
            return
        if mtime == self._mtime:
            return
        table: dict[str, str] = {}
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                log.error("%s line %d: expected 'agent_id password'", self.path, n)
                continue
            table[parts[0]] = parts[1]
        self._table, self._mtime = table, mtime

    def password_of(self, user: str) -> str | None:
        return self._table.get(user)


async def serve(
    s: GatewaySettings,
    core: Settings,
    *,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> None:
    # Before anything starts: refuse missing, weak or development keys outside development mode.
    keys = service_keys(core, "gateway")
    trunk = trunk_config(s)
    edge: EdgeProcess | None = None
    if s.trunk_transport != "udp" and not s.trunk_edge_external:
        _kill_stale_edge(s.edge_workdir)
        edge = await asyncio.to_thread(start_edge, edge_config(s), s.edge_workdir)
        (s.edge_workdir / "edge.pid").write_text(str(edge.pid))
        log.info("SIP edge (Kamailio) up: UDP %s <-> %s trunk", s.trunk_edge, s.trunk_transport.upper())
    ng_host, ng_port = s.rtpengine_ng.rsplit(":", 1)
    engine = RtpEngine(ng_host, int(ng_port), s.rtpengine_timeout_s)
    media = GatewayMedia(engine, s.recordings_dir, sink_host=s.sip_listen_host)
    await media.start()
    prompts = PromptCache(s.prompts_dir)
    creds = AgentCredentials(s.sip_agents_file)
    creds.reload()

    token = ServiceToken(keys.signer, f"svc:gateway:{os.getpid()}")
    agent_channel = open_channel(core, s.agent_addr, token)
    agent_stub = agent_pb2_grpc.AgentServiceStub(agent_channel)

    async def pause_agent(agent_id: str, reason: str) -> None:
        for attempt in range(5):
            try:
                await agent_stub.SetState(
                    agent_pb2.SetStateRequest(
                        agent_id=agent_id, state=common_pb2.AGENT_STATE_PAUSED, pause_reason=reason
                    ),
                    timeout=3.0,
                )
                return
            except grpc.aio.AioRpcError as exc:
                # UNAVAILABLE: the agent service restarts; FAILED_PRECONDITION: the agent is still being
                # taken off the customer call this drop hung up (wrap-up comes first). Both pass.
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ):
                    log.warning("agent %s not paused: %s", agent_id, exc.details())
                    return
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        log.error("agent %s could not be paused after the phone leg dropped", agent_id)

    gw = Gateway(
        trunk,
        media,
        _Prompts(prompts),
        pause_agent=pause_agent,
        summarise=_summarise,
        journal_dir=s.state_dir / "dialogs",
    )
    sip = SipStack(
        s.sip_listen_host,
        s.sip_listen_port,
        s.sip_public_host or s.sip_listen_host,
        s.sip_realm,
        creds.password_of,
        gw.on_sip,
    )
    await sip.start()
    gw.sip = sip
    replayed = gw.replay_journal()
    if replayed:
        log.warning("hung up %d dialogs a killed gateway left up (journalled BYEs)", replayed)
    dtmf_host, dtmf_port = s.rtpengine_dtmf_listen.rsplit(":", 1)
    dtmf = DtmfListener(dtmf_host, int(dtmf_port), lambda call_id, tag, digit: gw.on_dtmf(tag, digit))
    await dtmf.start()
    # Sessions a killed gateway left in rtpengine: their dialogs are gone with it, so free their ports.
    with contextlib.suppress(Exception):
        freed = await media.release_all()
        if freed:
            log.warning("released %d rtpengine sessions left by an earlier gateway", freed)

    # No revocation list here: the gateway has no store. It accepts service tokens (an hour at most, each
    # service's key removable from the JWKS, which is re-read when it changes) and managers' status reads.
    verifier = Verifier(keys.jwks, None, jwks_path=core.jwks, dev=core.dev)
    server = grpc.aio.server(
        interceptors=[
            CoreInterceptor("gateway", verifier, reflection=core.reflection, limits=Limits("gateway", core))
        ],
        options=[*server_options(core), *SERVER_OPTIONS],
    )
    gateway_servicer = GatewayServicer(gw)
    from outdial.v1 import gateway_pb2_grpc

    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(gateway_servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, (FULL_NAME,), core)
    port = _listen(server, s.gateway_listen, core)
    if port == 0:
        raise RuntimeError(f"cannot listen on {s.gateway_listen}")
    await server.start()
    start_metrics_server(core.metrics_host, core.metrics_port or core.metrics_base_port + METRICS_PORT_OFFSET)
    log.info("gateway: gRPC on %s, SIP on %s:%d", s.gateway_listen, s.sip_listen_host, s.sip_listen_port)
    if started is not None:
        started(port)

    tasks = [
        asyncio.create_task(gw.watch_media(), name="gateway:media"),
        asyncio.create_task(_health_loop(gw, creds, health_servicer), name="gateway:health"),
        asyncio.create_task(verifier.watch_jwks(core.jwks_reload_seconds), name="gateway:jwks"),
    ]
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("gateway shutting down: hanging up calls and agent legs")
        await health_servicer.enter_graceful_shutdown()
        await gw.close()
        await asyncio.sleep(0.3)  # let the BYEs/CANCELs leave
        await server.stop(core.grace_seconds)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        dtmf.close()
        await sip.stop()
        media.close()
        await agent_channel.close()
        if edge is not None:
            await asyncio.to_thread(edge.stop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


async def _health_loop(
    gw: Gateway, creds: AgentCredentials, health_servicer: health.aio.HealthServicer
) -> None:
    """Health follows rtpengine (no media: no call can be placed); metrics of the gateway's state."""
    last = None
    while True:
        creds.reload()
        ok = gw.media_up
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != last:
            for n in ("", FULL_NAME):
                await health_servicer.set(n, status)
            last = status
        SERVING.labels("gateway").set(1 if ok else 0)
        GATEWAY_MEDIA_UP.set(1 if gw.media_up else 0)
        GATEWAY_TRUNK_UP.set(1 if gw.health.state == "up" else 0)
        GATEWAY_IN_FLIGHT.set(gw.in_flight())
        GATEWAY_AGENT_LEGS.set(sum(1 for leg in gw.legs.values() if leg.state == "up"))
        await asyncio.sleep(1.0)


class GatewayMedia(Media):
    """The media recipes plus what the engine's health and restart need."""

    async def ping(self) -> bool:
        return await self.engine.ping()

    async def release_all(self) -> int:
        """Delete every session rtpengine holds for this gateway's naming scheme (after a crash)."""
        freed = 0
        for call_id in await self.engine.list_calls():
            if call_id.startswith(("c-", "a-")):
                await self.engine.delete(call_id)
                freed += 1
        return freed


def _summarise(pcap: Path) -> tuple[str, int, str]:
    """A finished recording: its path, length and SHA-256, for the call record."""
    r = summarise(pcap)
    return str(r.path), r.duration_ms, r.sha256


class _Prompts:
    def __init__(self, cache: PromptCache) -> None:
        self.cache = cache

    async def render(self, text: str) -> tuple[Path, int]:
        p = await self.cache.render(text)
        return p.path, p.duration_ms

    async def recording(self, path: Path) -> tuple[Path, int]:
        p = await self.cache.use_recording(path)
        return p.path, p.duration_ms


def main() -> None:
    core = Settings()
    odlog.configure("gateway", core.log_level, core.log_json)
    try:
        asyncio.run(serve(GatewaySettings(), core))
    except KeyConfigError as exc:
        log.critical("gateway refuses to start: %s", exc)
        raise SystemExit(2) from None
