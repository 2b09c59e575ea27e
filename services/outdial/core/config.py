"""Settings, read only from environment variables with the ``OUTDIAL_`` prefix.

Built once in ``__main__`` (or the CLI) and passed down; nothing reads the environment elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ServiceName = Literal["campaign", "pacing", "dnc", "agent"]
SERVICES: tuple[ServiceName, ...] = ("campaign", "pacing", "dnc", "agent")


class StartupRefused(RuntimeError):
    """A service may not start as configured (the message says what to do); the process exits non-zero."""


class Settings(BaseSettings):
    """Every setting of every service and of the CLI."""

    model_config = SettingsConfigDict(env_prefix="OUTDIAL_", extra="ignore")

    # Infrastructure. Unset: PostgreSQL/Redis on 127.0.0.1 when they answer, else private throwaway servers
    # (only for `outdial run`, `outdial demo` and the tests; a service process needs them set or local).
    database_url: str | None = None
    # Production: each service logs in as its own role (outdial_campaign, outdial_pacing, outdial_dnc,
    # outdial_agent; privileges in outdial/migrations/grants.py) with its own URL; unset: database_url (the
    # development/all-in-one setting). `outdial db migrate` logs in as the migration role (owner of the
    # schema) with migrate_database_url (unset: database_url); no service uses that URL.
    campaign_database_url: str | None = None
    pacing_database_url: str | None = None
    dnc_database_url: str | None = None
    agent_database_url: str | None = None
    migrate_database_url: str | None = None
    redis_url: str | None = None
    db_pool_min: int = 0
    db_pool_max: int = 10

    # Where clients reach each service (host:port) ...
    campaign_addr: str = "127.0.0.1:50051"
    pacing_addr: str = "127.0.0.1:50052"
    dnc_addr: str = "127.0.0.1:50053"
    agent_addr: str = "127.0.0.1:50054"
    # The SIP/RTP gateway (issue 11), when telephony is "sip".
    gateway_addr: str = "127.0.0.1:50055"
    # ... and where a service listens (default: the port of its *_addr on `listen_host`).
    listen_host: str = "127.0.0.1"
    listen_port: int | None = None

    # Prometheus metrics: port = metrics_base_port + index (campaign 9101, pacing 9102, dnc 9103, agent 9104);
    # OUTDIAL_METRICS_PORT overrides for one process; 0 disables.
    metrics_host: str = "127.0.0.1"
    metrics_base_port: int = 9100
    metrics_port: int | None = None

    # TLS: when cert and key are set the servers speak TLS; clients trust tls_ca. Mutual TLS: a server with
    # TLS on and tls_ca set requires every client to present a certificate signed by that CA (unless
    # tls_client_auth is false), and clients present tls_client_cert/tls_client_key (default: tls_cert/tls_key,
    # a certificate whose usages include client auth).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_server_name: str | None = None
    tls_client_auth: bool = True
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None

    # gRPC server reflection (grpcurl, grpcui): "public" answers anyone (development), "authenticated" only a
    # caller with a valid token, "off" does not serve it at all. The prod overlay sets "off".
    reflection: Literal["off", "public", "authenticated"] = "public"

    # Redis over TLS (rediss:// URLs): the CA bundle to verify the server with (default: the system's), and a
    # client certificate when the server asks for one. The user and password go in the URL (an ACL user per
    # service in production: rediss://outdial-dnc:PASSWORD@redis.example:6380/0).
    redis_tls_ca: Path | None = None
    redis_tls_cert: Path | None = None
    redis_tls_key: Path | None = None

    # Development mode (OUTDIAL_DEV=1: `make run`, `make demo`, the tests): development keys are accepted and
    # services migrate the database at start (production: they refuse to start while a migration is pending).
    # Never set in production.
    dev: bool = False

    # Auth (docs/security.md): tokens are Ed25519-signed JWTs. Every service verifies them against the
    # JWKS file (public keys, selected by kid); each service signs its own identity with its own private key;
    # only the token-issuing path (`outdial token issue`) holds the issuer's private key. Paths to files
    # (Secret volumes in Kubernetes). Unset in development mode: the public development keyset.
    jwks: Path | None = None
    service_key: Path | None = None
    issuer_key: Path | None = None
    # The retired HS256 shared secret: refused outside development mode (a leftover in a Secret must not go
    # unnoticed); ignored with a warning in development mode.
    auth_secret: str | None = None
    # How often a running service re-reads OUTDIAL_JWKS (a rotation publishes a new file; no restart needed).
    jwks_reload_seconds: float = Field(default=5.0, gt=0)
    # Lifetime of people's tokens from `outdial token issue` (capped at 24 h).
    token_ttl_seconds: int = Field(default=12 * 3600, gt=0, le=24 * 3600)
    # Revocation list: the in-process copy is refreshed from Redis this often (and at once on pub/sub), and
    # from PostgreSQL, the record, every `revocation_pg_seconds`. When no refresh has succeeded for
    # `revocation_max_stale_seconds`, tokens are refused (fail closed) until one does.
    revocation_refresh_seconds: float = Field(default=1.0, gt=0)
    revocation_pg_seconds: float = Field(default=10.0, gt=0)
    revocation_max_stale_seconds: float = Field(default=60.0, gt=0)
    # The CLI's bearer token.
    token: str | None = None

    # Input and load limits (core/limits.py; docs/security.md). 0 disables a cap or a rate.
    # Largest gRPC message a server accepts (files travel as 1 MiB chunks of a stream).
    grpc_max_receive_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    # Items in any repeated or map field of a request (DNC number batches: OUTDIAL_DNC_MAX_BATCH).
    limit_list_items: int = Field(default=1000, ge=0)
    # Per caller (role and subject) that is a person: open server streams, open uploads, and the token
    # bucket of changing RPCs (calls a second, bucket size).
    limit_streams: int = Field(default=16, ge=0)
    limit_uploads: int = Field(default=2, ge=0)
    limit_rate: float = Field(default=50.0, ge=0)
    limit_burst: int = Field(default=1000, ge=1)
    # The same per service identity (svc:<name>:<instance>): generous, the dialer must never be throttled
    # (at full pace a pacing instance makes a few hundred OfferCall and dial-time CheckNumbers a second).
    limit_service_streams: int = Field(default=1000, ge=0)
    limit_service_uploads: int = Field(default=8, ge=0)
    limit_service_rate: float = Field(default=5000.0, ge=0)
    limit_service_burst: int = Field(default=20000, ge=1)

    grace_seconds: float = Field(default=10.0, ge=0)
    health_interval_seconds: float = Field(default=1.0, gt=0)
    log_level: str = "INFO"
    log_json: bool = True
    # Instance name used for leases and logs (defaults to hostname-pid).
    instance_id: str | None = None
    # Shift every service clock by this many seconds (demos and end-to-end tests that cross calling-window
    # edges); 0 in production.
    clock_offset_seconds: float = 0.0

    def database_url_for(self, service: ServiceName) -> str | None:
        """The URL the service's pool logs in with: its own role's, else the shared one."""
        own: str | None = getattr(self, f"{service}_database_url")
        return own or self.database_url

    def migrate_url(self) -> str | None:
        """The migration role's URL (``outdial db migrate``; services at start in development)."""
        return self.migrate_database_url or self.database_url

    def addr(self, service: ServiceName) -> str:
        return str(getattr(self, f"{service}_addr"))

    def listen_addr(self, service: ServiceName) -> str:
        port = self.listen_port if self.listen_port is not None else int(self.addr(service).rsplit(":", 1)[1])
        return f"{self.listen_host}:{port}"

    def metrics_port_for(self, service: ServiceName) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return self.metrics_base_port + SERVICES.index(service) + 1

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def mtls_required(self) -> bool:
        """Servers demand a client certificate signed by tls_ca."""
        return self.tls_enabled and self.tls_ca is not None and self.tls_client_auth
