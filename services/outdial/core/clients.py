"""gRPC client channels: TLS when configured (mutual: a client certificate too, core/tls.py), a bearer token on
every call (client interceptors)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from outdial.core.auth import SERVICE_MAX_TTL_SECONDS, Role, issue_token
from outdial.core.config import ServiceName, Settings
from outdial.core.signing import SigningKey
from outdial.core.tls import channel_credentials

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class _TokenDetails:
    """Adds ``authorization: Bearer <token>`` to a call; the token comes from a callable so that a service
    can renew its own short-lived token."""

    def __init__(self, token: Callable[[], str | None]) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        token = self._token()
        if not token:
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {token}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under the FIRST kind it is an instance of, so one class per kind.
class _UnaryUnaryAuth(_TokenDetails, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamAuth(_TokenDetails, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryAuth(_TokenDetails, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _StreamStreamAuth(_TokenDetails, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def open_channel(settings: Settings, target: str, token: Callable[[], str | None]) -> grpc.aio.Channel:
    interceptors = [
        cls(token) for cls in (_UnaryUnaryAuth, _UnaryStreamAuth, _StreamUnaryAuth, _StreamStreamAuth)
    ]
    creds = channel_credentials(settings)
    if creds is not None:
        options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
        if settings.tls_server_name:
            options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
        return grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)


def service_channel(
    settings: Settings, service: ServiceName, token: Callable[[], str | None]
) -> grpc.aio.Channel:
    return open_channel(settings, settings.addr(service), token)


class ServiceToken:
    """A service's own token (role ``service``, subject ``svc:<name>[:<instance>]``), signed with the service's
    own key (the only identity that key may sign) and re-minted at half its life."""

    def __init__(self, key: SigningKey, subject: str, ttl_seconds: int = SERVICE_MAX_TTL_SECONDS) -> None:
        self._key = key
        self._subject = subject
        self._ttl = ttl_seconds
        self._token = ""
        self._renew_at = 0.0

    def __call__(self) -> str:
        now = time.monotonic()
        if now >= self._renew_at:
            self._token = issue_token(self._key, self._subject, Role.SERVICE, self._ttl)
            self._renew_at = now + self._ttl / 2
        return self._token
