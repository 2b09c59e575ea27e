"""Wiring of the dnc service: builds its stores and domain objects and registers its servicer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from outdial.core.config import Settings, StartupRefused
from outdial.core.server import DEFAULT_DATABASE_URL, ServiceContext, ServiceSpec
from outdial.dnc import consumer
from outdial.dnc.anchor import CheckpointError, load_private_key, private_pem
from outdial.dnc.engine import DncEngine
from outdial.dnc.service import DncServicer
from outdial.dnc.settings import DncSettings
from outdial.dnc.sinks import CheckpointSink, open_sink
from outdial.dnc.verify import Checkpointer
from outdial.v1 import dnc_pb2_grpc


def dev_dir() -> Path:
    return Path(tempfile.gettempdir()) / "outdial-dev"


def _dev_key() -> Ed25519PrivateKey:
    """The development signing key, made once per machine (never used outside OUTDIAL_DEV=1)."""
    path = dev_dir() / "dnc-audit-ed25519.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(private_pem(Ed25519PrivateKey.generate()))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # another process may have made it first: theirs wins
        finally:
            os.unlink(tmp)
    return load_private_key(path.read_bytes())


def _dev_sink_url(settings: Settings) -> str:
    """One directory per database (tests run thousands of databases on one server)."""
    url = settings.database_url_for("dnc") or DEFAULT_DATABASE_URL
    parts = urlsplit(url)
    name = (parts.path.strip("/") or "outdial").replace("/", "_")
    tag = hashlib.sha256(f"{parts.hostname}:{parts.port}/{name}".encode()).hexdigest()[:8]
    return (dev_dir() / "checkpoints" / f"{name}-{tag}").as_uri()


def audit_signing(settings: Settings, dnc: DncSettings) -> tuple[CheckpointSink, Ed25519PrivateKey]:
    """The checkpoint sink and signing key; outside development both must be configured."""
    missing = [
        name
        for name, value in (
            ("OUTDIAL_DNC_CHECKPOINT_URL", dnc.checkpoint_url),
            ("OUTDIAL_DNC_AUDIT_KEY_FILE", dnc.audit_key_file),
        )
        if not value
    ]
    if missing and not settings.dev:
        raise StartupRefused(
            f"dnc: {' and '.join(missing)} must be set: the audit log is anchored by checkpoints signed with "
            "an Ed25519 key kept outside the database and written outside PostgreSQL (docs/security.md, "
            "'Audit anchoring'); only development (OUTDIAL_DEV=1) uses a development key"
        )
    try:
        sink = open_sink(dnc.checkpoint_url or _dev_sink_url(settings))
    except ValueError as exc:
        raise StartupRefused(f"dnc: {exc}") from exc
    if dnc.audit_key_file is None:
        return sink, _dev_key()
    try:
        key = load_private_key(dnc.audit_key_file.read_bytes())
    except (OSError, CheckpointError) as exc:
        raise StartupRefused(f"dnc: OUTDIAL_DNC_AUDIT_KEY_FILE={dnc.audit_key_file}: {exc}") from exc
    return sink, key


async def setup(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    settings = DncSettings()
    sink, key = audit_signing(ctx.settings, settings)
    checkpointer = Checkpointer(
        ctx.pool, sink, key, settings.checkpoint_every_records, settings.checkpoint_every_seconds
    )
    engine = DncEngine(ctx.pool, ctx.redis_bytes(), ctx.clock, settings, checkpointer)
    dnc_pb2_grpc.add_DncServiceServicer_to_server(DncServicer(engine), server)

    async def keeper() -> None:
        await ctx.ready.wait()
        await engine.keep_index()

    async def sweeper() -> None:
        await ctx.ready.wait()
        await engine.keep_sweeping()

    async def last_checkpoint() -> None:
        # on shutdown: anchor what this replica appended (best effort; the next start signs it otherwise)
        if ctx.ready.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(checkpointer.checkpoint(), 5)

    ctx.spawn(keeper(), "index-keeper")
    ctx.spawn(sweeper(), "expiry-sweeper")
    ctx.spawn(checkpointer.run(ctx.ready), "audit-checkpoints")
    ctx.on_close(last_checkpoint)
    if settings.consume_events:
        ctx.spawn(consumer.run(engine, ctx.redis, f"dnc-{ctx.instance_id}", ctx.ready), "call-events")
    await asyncio.sleep(0)


SPEC = ServiceSpec(name="dnc", full_names=("outdial.v1.DncService",), setup=setup)
