"""gRPC TLS credentials from the settings, one place for every server and client (services, gateway, probe).

Servers: TLS when ``tls_cert`` and ``tls_key`` are set; with ``tls_ca`` too (and ``tls_client_auth``, the
default) mutual TLS: a client without a certificate signed by that CA is refused during the handshake,
before any RPC, token or message is read. Clients: trust ``tls_ca`` (else the system roots) and present
``tls_client_cert``/``tls_client_key``, falling back to the process's own ``tls_cert``/``tls_key`` (a service's
certificate carries both the server-auth and client-auth usages).
"""

from __future__ import annotations

from pathlib import Path

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
