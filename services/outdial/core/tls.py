"""gRPC TLS credentials from the settings, one place for every server and client (services, gateway, probe).

Servers: TLS when ``tls_cert`` and ``tls_key`` are set; with ``tls_ca`` too (and ``tls_client_auth``, the
default) mutual TLS: a client without a certificate signed by that CA is refused during the handshake,
before any RPC, token or message is read. Clients: trust ``tls_ca`` (else the system roots) and present
``tls_client_cert``/``tls_client_key``, falling back to the process's own ``tls_cert``/``tls_key`` (a service's
certificate carries both the server-auth and client-auth usages).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc

from outdial.core.config import Settings


def _read(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"OUTDIAL_{setting.upper()}: cannot read {path} ({exc.strerror})") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The listener's credentials, or None for plaintext."""
    if not settings.tls_enabled:
        return None
    key, cert = _read(settings.tls_key, "tls_key"), _read(settings.tls_cert, "tls_cert")
    assert key is not None and cert is not None
    if settings.mtls_required:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=_read(settings.tls_ca, "tls_ca"), require_client_auth=True
        )
    return grpc.ssl_server_credentials([(key, cert)])


def client_uses_tls(settings: Settings) -> bool:
    return settings.tls_enabled or settings.tls_ca is not None or settings.tls_client_cert is not None


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """A client's credentials, or None for plaintext."""
    if not client_uses_tls(settings):
        return None
    cert_path = settings.tls_client_cert or settings.tls_cert
    key_path = settings.tls_client_key or settings.tls_key
    if (settings.tls_client_cert is None) != (settings.tls_client_key is None):
        raise ValueError(
            "OUTDIAL_TLS_CLIENT_CERT and OUTDIAL_TLS_CLIENT_KEY go together: set both or neither"
        )
    cert = _read(cert_path, "tls_client_cert" if settings.tls_client_cert else "tls_cert")
    key = _read(key_path, "tls_client_key" if settings.tls_client_key else "tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca, "tls_ca"),
        private_key=key if cert is not None else None,
        certificate_chain=cert if key is not None else None,
    )


def transport_warnings(settings: Settings, database_url: str, redis_url: str) -> list[str]:
    """What a production process should not run with, one sentence each (logged at start unless
    OUTDIAL_DEV=1): plaintext or unverified links to PostgreSQL and Redis, gRPC without mutual TLS, and
    reflection open to anyone. Loopback and Unix-socket addresses are exempt."""
    out: list[str] = []
    db = urlsplit(database_url)
    db_host = db.hostname or ""
    sslmode = (parse_qs(db.query).get("sslmode") or [""])[-1]
    if db_host and not _local(db_host) and sslmode != "verify-full":
        out.append(
            f"OUTDIAL_DATABASE_URL has sslmode={sslmode or '(unset)'}: use sslmode=verify-full (with "
            "sslrootcert=...) so the server's certificate and host name are checked"
        )
    rd = urlsplit(redis_url)
    if rd.scheme in ("redis", "redis+sentinel") and not _local(rd.hostname or "localhost"):
        out.append("OUTDIAL_REDIS_URL is not rediss://: Redis traffic (DNC index, offers) is plaintext")
    if not settings.tls_enabled:
        out.append("gRPC listens without TLS (OUTDIAL_TLS_CERT/OUTDIAL_TLS_KEY unset)")
    elif not settings.mtls_required:
        out.append("gRPC accepts clients without a certificate (set OUTDIAL_TLS_CA for mutual TLS)")
    if settings.reflection == "public":
        out.append("server reflection is public (OUTDIAL_REFLECTION=off or authenticated in production)")
    return out


def _local(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("/")
