"""Settings of the SIP/RTP gateway (environment, prefix ``OUTDIAL_``), built once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTDIAL_", extra="ignore")

    # Where SIP is heard (UDP) and the address put in Via/Contact/SDP (the pod's or host's address).
    sip_listen_host: str = "127.0.0.1"
    sip_listen_port: int = Field(default=5060, ge=1, le=65535)
    sip_public_host: str = ""

    # The carrier's SIP trunk. URI: sip:host[:port] (the Request-URI is sip:<number>@host[:port]).
    trunk_uri: str = "sip:127.0.0.1:5070"
    trunk_transport: Literal["udp", "tcp", "tls"] = "udp"
    # Digest credentials (RFC 8760 / RFC 2617), from a Secret; empty: no authentication.
    trunk_username: str = ""
    trunk_password: SecretStr = SecretStr("")
    # sip:host[:port] every request to the trunk is sent through (empty: straight to the trunk).
    trunk_outbound_proxy: str = ""
    # Carrier limits: calls in flight on the trunk, and new calls (INVITEs) per second.
    trunk_max_calls: int = Field(default=100, ge=1)
    trunk_cps: float = Field(default=10.0, gt=0)
    # A DNS name or IP the carrier expects in From (empty: the trunk's host).
    trunk_from_domain: str = ""
    # TCP or TLS trunks: sippy speaks UDP only, so the gateway starts a local SIP edge (Kamailio) that
    # carries its requests to the trunk over TCP/TLS (see gateway/edge.py). trunk_edge: the edge's UDP address
    # (the gateway's next hop); edge_trunk_listen: its TCP/TLS socket facing the trunk (the carrier reaches us
    # there); edge_advertise: host[:port] shown to the trunk behind NAT. With trunk_edge_external the edge is
    # run by someone else (a sidecar container) and the gateway only sends to trunk_edge.
    trunk_edge: str = "127.0.0.1:5062"
    trunk_edge_external: bool = False
    edge_trunk_listen: str = "0.0.0.0:5061"
    edge_advertise: str = ""
    edge_workdir: Path = Path("/tmp/outdial-edge")
    trunk_tls_ca_file: Path | None = None
    trunk_tls_verify: bool = True
    trunk_tls_cert_file: Path | None = None
    trunk_tls_key_file: Path | None = None
    trunk_tls_client_cert: bool = False

    # rtpengine's NG control socket and the UDP address it sends DTMF events to (we listen there).
    rtpengine_ng: str = "127.0.0.1:22222"
    rtpengine_dtmf_listen: str = "127.0.0.1:22299"
    rtpengine_timeout_s: float = Field(default=1.0, gt=0)

    # Agents' phones: the digest realm and a credentials file ("agent_id password" per line, from a Secret).
    sip_realm: str = "outdial"
    sip_agents_file: Path | None = None

    # Prompts rendered from text (espeak-ng) are cached here; recordings are written here by rtpengine.
    prompts_dir: Path = Path("/tmp/outdial-prompts")
    recordings_dir: Path = Path("/tmp/outdial-recordings")
    # The dialog journal: one BYE per answered dialog, so that a gateway restarted after a crash hangs up the
    # calls and phone legs its predecessor left up. Keep it on a volume that outlives the process.
    state_dir: Path = Path("/tmp/outdial-gateway-state")

    # The gateway's own gRPC address (call-control API, health, reflection).
    gateway_listen: str = "127.0.0.1:50055"
    # The agent service (to pause an agent whose phone leg dropped).
    agent_addr: str = "127.0.0.1:50054"
