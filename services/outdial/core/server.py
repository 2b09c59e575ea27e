"""gRPC server bootstrap shared by the four services.

grpc.aio server; the standard async health servicer whose status follows real PostgreSQL and Redis checks;
server reflection; one interceptor for auth, logging context, metrics and error mapping; graceful shutdown
on SIGTERM/SIGINT (health NOT_SERVING, ``server.stop(grace)``, cancel and await background tasks, close
pools). Each service supplies a :class:`ServiceSpec` whose ``setup`` registers its servicers and starts its
background tasks through the :class:`ServiceContext` it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from outdial import __version__
from outdial.core import db
from outdial.core import logging as odlog
from outdial.core.auth import authorize, bearer_from_metadata, is_public, set_principal
from outdial.core.clients import ServiceToken, service_channel
from outdial.core.clock import Clock, OffsetClock, SystemClock
from outdial.core.config import ServiceName, Settings, StartupRefused
from outdial.core.errors import OutdialError, status_for
from outdial.core.limits import Limits, refusal, server_options
from outdial.core.metrics import (
    BUILD_INFO,
    DEPENDENCY_UP,
    RPC_SECONDS,
    RPC_TOTAL,
    SERVING,
    start_metrics_server,
)
from outdial.core.redis import Redis, RedisTLS, create_redis
from outdial.core.revocation import RevocationList, RevocationRefresher
from outdial.core.signing import KeyConfigError, SigningKey, service_keys
from outdial.core.tls import server_credentials, transport_warnings
from outdial.core.verifier import Verifier

log = logging.getLogger("outdial.server")

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/outdial"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# The message sizes come from the settings (server_options): 4 MiB received at most (core/limits.py).
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
    # grpc.aio takes new RPCs from gRPC core one at a time, each through a turn of the event loop; the calls
    # that arrived meanwhile wait in core's pending queue. Past 1,000 waiting calls core's defaults drop
    # new ones at random (all of them past 3,000), and the caller gets a bare CANCELLED that the handler
    # never saw: a burst of reconnecting consoles, or an agent service that fell a few seconds behind at
    # 100 live answers/s (bench/assign.py, issue 10), lost OfferCalls that way. Queue them instead; calls
    # still waiting after grpc.server_max_unrequested_time_in_server (30 s) are dropped by core.
    ("grpc.server.max_pending_requests", 10_000),
    ("grpc.server.max_pending_requests_hard_limit", 20_000),
]


@dataclass
class ServiceContext:
    """Everything a service's ``setup`` needs, built once and passed down (no module-level clients)."""

    name: ServiceName
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    clock: Clock
    instance_id: str
    # This service's own signing key: it signs this service's identity (svc:<name>:<instance>) only.
    signer: SigningKey
    # Tokens checked against it on every RPC; refreshed by a background task.
    revocations: RevocationList = field(default_factory=RevocationList)
    # Set once the schema is current (development: migrated at start; production: checked): background tasks
    # that touch PostgreSQL wait for it.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _token: ServiceToken | None = None
    _redis_bytes: Redis | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background task for the life of the service; a crash is logged, and restarted by nobody:
        write loops that survive their own errors."""
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")

        def _done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s died", t.get_name(), exc_info=t.exception())

        task.add_done_callback(_done)
        self._tasks.append(task)
        return task

    def on_close(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(fn)

    def token(self) -> str:
        if self._token is None:
            self._token = ServiceToken(self.signer, f"svc:{self.name}:{self.instance_id}")
        return self._token()

    def channel(self, service: ServiceName) -> grpc.aio.Channel:
        """A channel to another outdial service, carrying this service's own token."""
        if service not in self._channels:
            self._channels[service] = service_channel(self.settings, service, self.token)
        return self._channels[service]

    def redis_bytes(self) -> Redis:
        """A second client that returns bytes (for binary values and bulk lookups)."""
        if self._redis_bytes is None:
            url = self.settings.redis_url or DEFAULT_REDIS_URL
            self._redis_bytes = create_redis(url, decode=False, tls=RedisTLS.from_settings(self.settings))
        return self._redis_bytes

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for fn in reversed(self._closers):
            try:
                await fn()
            except Exception:
                log.exception("error while closing")
        for ch in self._channels.values():
            await ch.close()
        if self._redis_bytes is not None:
            await self._redis_bytes.aclose()
        await self.redis.aclose()
        await self.pool.close()


@dataclass(frozen=True)
class ServiceSpec:
    name: ServiceName
    # Full names of the gRPC services this process serves ("outdial.v1.CampaignService").
    full_names: tuple[str, ...]
    setup: Callable[[grpc.aio.Server, ServiceContext], Awaitable[None]]


# ------------------------------------------------------------------------------------------- interceptor


def _metadata_value(metadata: Any, key: str) -> str | None:
    for k, v in metadata or ():
        if k.lower() == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


class CoreInterceptor(grpc.aio.ServerInterceptor):
    """Auth, logging context, metrics and error mapping around every RPC but health and reflection."""

    def __init__(
        self, service: str, verifier: Verifier, *, reflection: str = "public", limits: Limits | None = None
    ) -> None:
        self.service = service
        self.verifier = verifier
        # OUTDIAL_REFLECTION: "public" lets reflection through without a token; otherwise it is authenticated
        # like any RPC ("off" never registers it, so no handler is found).
        self.reflection_public = reflection == "public"
        # Per-caller caps and rates, list limits (core/limits.py); the defaults when none is given.
        self.limits = limits or Limits(service, Settings.model_construct())

    async def intercept_service(  # noqa: C901 - one wrapper per RPC kind, kept side by side on purpose
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or is_public(method, reflection=self.reflection_public):
            return handler
        metadata = details.invocation_metadata
        principal = None
        auth_error: OutdialError | None = None
        try:
            principal = self.verifier.verify(bearer_from_metadata(metadata))
            authorize(principal, method)
        except OutdialError as exc:
            auth_error = exc
        if auth_error is None and principal is not None:
            auth_error = self.limits.admit(principal, method)
        if auth_error is not None:
            # Refused before the request is parsed (a refused caller's bytes are never deserialized).
            RPC_TOTAL.labels(self.service, method.rsplit("/", 1)[-1], auth_error.code.name).inc()
            return refusal(handler, auth_error)
        handler = self.limits.wrap(handler, principal)
        rid = _metadata_value(metadata, "x-request-id") or uuid.uuid4().hex[:16]
        short = method.rsplit("/", 1)[-1]
        svc = self.service

        def enter(context: grpc.aio.ServicerContext, request: Any = None) -> float:
            set_principal(principal)
            odlog.rpc_method.set(short)
            odlog.request_id.set(rid)
            odlog.actor.set(f"{principal.role.value}:{principal.subject}" if principal else None)
            cid = getattr(request, "campaign_id", None) if request is not None else None
            odlog.campaign_id.set(cid or None)
            return time.perf_counter()

        async def fail(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
            mapped = status_for(exc)
            if mapped is None:
                log.error("unhandled error in %s", short, exc_info=exc)
                code, msg = grpc.StatusCode.INTERNAL, f"internal error (request id {rid})"
            else:
                code, msg = mapped
                if code is grpc.StatusCode.UNAVAILABLE:
                    log.warning("dependency unavailable in %s: %s", short, type(exc).__name__)
            await context.abort(code, msg)

        def done(context: grpc.aio.ServicerContext, started: float) -> None:
            code = context.code() if hasattr(context, "code") else None
            name = code.name if isinstance(code, grpc.StatusCode) else "OK"
            RPC_TOTAL.labels(svc, short, name).inc()
            RPC_SECONDS.labels(svc, short).observe(time.perf_counter() - started)

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = enter(context, request)
                try:
                    return await inner_uu(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await fail(context, exc)
                finally:
                    done(context, started)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = enter(context, request)
                try:
                    async for item in inner_us(request, context):
                        yield item
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await fail(context, exc)
                finally:
                    done(context, started)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(request_iter: Any, context: grpc.aio.ServicerContext) -> Any:
                started = enter(context)
                try:
                    return await inner_su(request_iter, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    await fail(context, exc)
                finally:
                    done(context, started)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        inner_ss = handler.stream_stream

        async def stream_stream(request_iter: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = enter(context)
            try:
                async for item in inner_ss(request_iter, context):
                    yield item
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await fail(context, exc)
            finally:
                done(context, started)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )


# ------------------------------------------------------------------------------------------- health


class VersionedHealth(health.aio.HealthServicer):
    """The standard health servicer; its answers carry the running version as ``outdial-version`` metadata."""

    async def Check(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata((("outdial-version", __version__),))
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: Any) -> None:
        await context.send_initial_metadata((("outdial-version", __version__),))
        await super().Watch(request, context)


async def _check_dependencies(ctx: ServiceContext, timeout: float) -> dict[str, bool]:
    async def pg() -> bool:
        try:
            await asyncio.wait_for(ctx.pool.fetchval("SELECT 1"), timeout)
            return True
        except Exception:
            return False

    async def rd() -> bool:
        try:
            return bool(await asyncio.wait_for(ctx.redis.ping(), timeout))
        except Exception:
            return False

    ok_pg, ok_rd = await asyncio.gather(pg(), rd())
    return {"postgres": ok_pg, "redis": ok_rd}


async def _health_loop(
    ctx: ServiceContext, servicer: health.aio.HealthServicer, names: tuple[str, ...]
) -> None:
    """Drive health from real checks: SERVING only while migrations are applied and both answer."""
    interval = ctx.settings.health_interval_seconds
    last: int | None = None
    while True:
        deps = await _check_dependencies(ctx, timeout=max(0.5, interval))
        for dep, up in deps.items():
            DEPENDENCY_UP.labels(ctx.name, dep).set(1 if up else 0)
        # The revocation list must be loaded: until then every token is refused (fail closed).
        serving = ctx.ready.is_set() and all(deps.values()) and ctx.revocations.loaded
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != last:
            for n in ("", *names):
                await servicer.set(n, status)
            SERVING.labels(ctx.name).set(1 if serving else 0)
            if last is not None or not serving:
                log.info("health %s", "SERVING" if serving else f"NOT_SERVING {deps}")
            last = status
        await asyncio.sleep(interval)


async def _prepare_database(ctx: ServiceContext, migrate_url: str | None) -> None:
    """Make the database ready, retrying while PostgreSQL does not answer, then set ``ctx.ready``.

    Development (``migrate_url`` given): apply pending migrations as the migration role (``outdial db
    migrate``'s URL; the service's own role has no DDL rights). Production: only check that no migration is
    pending, and raise :class:`db.SchemaBehind` (the service stops) when one is: ``outdial db migrate``
    (the migration Job) must run first."""
    delay = 0.5
    while True:
        try:
            if migrate_url is not None:
                applied = await db.migrate_url(migrate_url, grants=False)
                if applied:
                    log.info("migrations applied: %s", ", ".join(applied))
            else:
                async with ctx.pool.acquire() as conn:
                    missing = await db.pending(conn)
                if missing:
                    raise db.SchemaBehind(ctx.name, missing)
            ctx.ready.set()
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("database not ready (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


# ------------------------------------------------------------------------------------------- reflection


def enable_reflection(server: grpc.aio.Server, full_names: tuple[str, ...], settings: Settings) -> None:
    """Serve gRPC reflection unless OUTDIAL_REFLECTION=off (then grpcurl gets UNIMPLEMENTED: it needs the
    .proto files). Whether a token is needed is the interceptor's decision (``CoreInterceptor``)."""
    if settings.reflection == "off":
        return
    reflection.enable_server_reflection((*full_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)


# ------------------------------------------------------------------------------------------- run


def _clock_from(settings: Settings) -> Clock:
    if settings.clock_offset_seconds:
        return OffsetClock(timedelta(seconds=settings.clock_offset_seconds))
    return SystemClock()


def _instance_id(settings: Settings) -> str:
    return settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"


async def serve(
    spec: ServiceSpec,
    settings: Settings,
    *,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> None:
    """Run one service until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully.

    Raises :class:`KeyConfigError` before starting anything when the keys are missing, weak, or development
    keys outside development mode."""
    keys = service_keys(settings, spec.name)
    database_url = settings.database_url_for(spec.name) or DEFAULT_DATABASE_URL
    redis_url = settings.redis_url or DEFAULT_REDIS_URL
    pool = await db.create_pool(database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    ctx = ServiceContext(
        name=spec.name,
        settings=settings,
        pool=pool,
        redis=create_redis(redis_url, tls=RedisTLS.from_settings(settings)),
        clock=clock or _clock_from(settings),
        instance_id=_instance_id(settings),
        signer=keys.signer,
        revocations=RevocationList(settings.revocation_max_stale_seconds),
    )
    verifier = Verifier(keys.jwks, ctx.revocations, jwks_path=settings.jwks, dev=settings.dev)
    refresher = RevocationRefresher(
        ctx.revocations,
        ctx.redis,
        pool,
        refresh_seconds=settings.revocation_refresh_seconds,
        pg_seconds=settings.revocation_pg_seconds,
    )
    ctx.spawn(refresher.run(), "revocations")
    ctx.spawn(verifier.watch_jwks(settings.jwks_reload_seconds), "jwks")
    server = grpc.aio.server(
        interceptors=[
            CoreInterceptor(
                spec.name, verifier, reflection=settings.reflection, limits=Limits(spec.name, settings)
            )
        ],
        options=[*server_options(settings), *SERVER_OPTIONS],
    )
    health_servicer = VersionedHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, spec.full_names, settings)
    for n in ("", *spec.full_names):
        await health_servicer.set(n, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        await spec.setup(server, ctx)
    except BaseException:
        await ctx.close()
        raise

    listen = settings.listen_addr(spec.name)
    creds = server_credentials(settings)  # mutual TLS when OUTDIAL_TLS_CA is set too (core/tls.py)
    port = server.add_secure_port(listen, creds) if creds is not None else server.add_insecure_port(listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    await server.start()
    start_metrics_server(settings.metrics_host, settings.metrics_port_for(spec.name))
    BUILD_INFO.labels(spec.name, __version__).set(1)
    log.info(
        "%s %s listening on %s (tls=%s, client certificates %s, reflection %s)",
        spec.name,
        __version__,
        listen.rsplit(":", 1)[0] + f":{port}",
        settings.tls_enabled,
        "required" if settings.mtls_required else "not required",
        settings.reflection,
    )
    if not settings.dev:
        for warning in transport_warnings(settings, database_url, redis_url):
            log.warning("insecure for production: %s", warning)
    if started is not None:
        started(port)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    migrate_url = (settings.migrate_url() or DEFAULT_DATABASE_URL) if settings.dev else None
    migrate_task = asyncio.create_task(_prepare_database(ctx, migrate_url), name=f"{spec.name}:migrate")
    health_task = asyncio.create_task(
        _health_loop(ctx, health_servicer, spec.full_names), name=f"{spec.name}:health"
    )
    stop_task = asyncio.create_task(stop.wait(), name=f"{spec.name}:stop")
    failure: BaseException | None = None
    try:
        await asyncio.wait({stop_task, migrate_task}, return_when=asyncio.FIRST_COMPLETED)
        if migrate_task.done() and not migrate_task.cancelled() and migrate_task.exception() is not None:
            failure = migrate_task.exception()
            log.critical("%s", failure)
        if failure is None:
            await stop.wait()
    finally:
        stop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop_task
        log.info("%s shutting down (grace %.1fs)", spec.name, settings.grace_seconds)
        health_task.cancel()
        migrate_task.cancel()
        await health_servicer.enter_graceful_shutdown()
        SERVING.labels(spec.name).set(0)
        await server.stop(settings.grace_seconds)
        for t in (health_task, migrate_task):
            if t.done() and not t.cancelled() and t.exception() is not None:
                continue  # the failure above, raised below
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await ctx.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        log.info("%s stopped", spec.name)
    if failure is not None:
        raise failure


def main(spec: ServiceSpec) -> None:
    """Entry point of ``python -m outdial.<service>``."""
    settings = Settings()
    odlog.configure(spec.name, settings.log_level, settings.log_json)
    try:
        asyncio.run(serve(spec, settings))
    except KeyConfigError as exc:
        log.critical("%s refuses to start: %s", spec.name, exc)
        raise SystemExit(2) from None
    except StartupRefused as exc:
        raise SystemExit(f"error: {exc}") from None
