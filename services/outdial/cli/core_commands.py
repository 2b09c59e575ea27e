"""``outdial token``, ``outdial db``, ``outdial serve``, ``outdial run``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import asyncpg

from outdial.cli.base import fail, print_json
from outdial.core import db
from outdial.core import logging as odlog
from outdial.core.config import SERVICES, Settings
from outdial.core.infra import Infra, ensure_demo_infra, ensure_infra
from outdial.migrations.grants import RUNTIME, role_name

log = logging.getLogger("outdial.run")


async def db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Apply pending migrations and the grants, as the migration role (OUTDIAL_MIGRATE_DATABASE_URL, else
    OUTDIAL_DATABASE_URL): the one command, and the Kubernetes Job, that changes the schema."""
    url = settings.migrate_url()
    infra: Infra | None = None
    if url is None:  # development: the local (or a private) PostgreSQL, as `outdial run` finds it
        infra = await ensure_infra(None, settings.redis_url)
        url = infra.database_url
    try:
        applied = await db.migrate_url(url)
    except (db.UnsafeRole, asyncpg.InsufficientPrivilegeError) as exc:
        return fail(str(exc), 2)
    finally:
        if infra is not None:
            infra.stop()
    roles = [role_name(w) for w in RUNTIME]
    if args.json:
        print_json({"applied": applied, "roles": roles})
    else:
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        print("grants: " + ", ".join(roles))
    return 0


async def serve(args: argparse.Namespace, settings: Settings) -> int:
    from outdial.core.server import serve as serve_spec

    spec = _spec(args.service)
    odlog.configure(spec.name, settings.log_level, settings.log_json)
    await serve_spec(spec, settings)
    return 0


def _spec(name: str) -> Any:
    import importlib

    return importlib.import_module(f"outdial.{name}.app").SPEC


class Supervisor:
    """Starts the four services as child processes, with PostgreSQL/Redis resolved (or started) first.
    SIGINT/SIGTERM stop every child gracefully, then the private servers."""

    def __init__(
        self,
        settings: Settings,
        services: tuple[str, ...] = SERVICES,
        extra_env: dict[str, str] | None = None,
        quiet: bool = False,
        log_path: str | None = None,
        demo: bool = False,
    ) -> None:
        self.settings = settings
        # The demo runs apart from the user's data: its own database and a private Redis (core/infra.py).
        self.demo = demo
        self.services = services
        self.extra_env = extra_env or {}
        self.quiet = quiet
        self.log_path = log_path
        self.infra: Infra | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._env: dict[str, str] = {}

    async def start(self) -> Infra:
        if self.demo:
            self.infra = await ensure_demo_infra(self.settings.database_url)
        else:
            self.infra = await ensure_infra(self.settings.database_url, self.settings.redis_url)
        # Migrate once here so the four services do not all wait on the advisory lock (development: the roles
        # and grants too when this login may create them).
        await db.migrate_url(self.infra.database_url, grants=False)
        env = dict(os.environ)
        env.update(self.extra_env)
        env["OUTDIAL_DATABASE_URL"] = self.infra.database_url
        env["OUTDIAL_REDIS_URL"] = self.infra.redis_url
        for name in self.services:
            self.start_one(name, env)
        return self.infra

    def start_one(self, name: str, env: dict[str, str] | None = None) -> None:
        """(Re)start one service process (the e2e test kills and restarts pacing this way)."""
        if env is None:
            env = self._env
        self._env = env
        cmd = [sys.executable, "-m", f"outdial.{name}"]
        if self.log_path:
            with open(self.log_path, "ab") as log_file:
                self.procs[name] = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        else:
            out = subprocess.DEVNULL if self.quiet else None
            self.procs[name] = subprocess.Popen(cmd, env=env, stdout=out)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop(self, timeout: float | None = None) -> int:
        timeout = timeout if timeout is not None else self.settings.grace_seconds + 5
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        worst = 0
        for name, p in self.procs.items():
            try:
                rc = p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                p.kill()
                rc = p.wait()
            worst = worst or (rc if rc not in (0, -signal.SIGTERM) else 0)
        if self.infra is not None:
            self.infra.stop()
        return worst


async def first_admin(database_url: str) -> str | None:
    """With no console user yet, create ``admin`` with a random password and print it, once."""
    from outdial.console import accounts
    from outdial.console.settings import ConsoleSettings

    pool = await db.create_pool(database_url, max_size=1)
    try:
        if await pool.fetchval("SELECT count(*) FROM console_users"):
            return None
        password = accounts.new_password()
        await accounts.add_user(
            pool, "admin", "admin", password, actor="outdial run", display_name="Administrator"
        )
    finally:
        await pool.close()
    port = ConsoleSettings().port
    print(
        f"console: http://127.0.0.1:{port}  user admin  password {password}\n"
        "  (shown once; change it with `outdial user password admin`, add people with `outdial user add`)",
        flush=True,
    )
    return password


async def run_all(args: argparse.Namespace, settings: Settings) -> int:
    odlog.configure("run", settings.log_level, settings.log_json)
    # `outdial run` is the development all-in-one (private PostgreSQL/Redis when none answers): its services
    # run in development mode, which accepts the public development keyset (they warn loudly when used).
    # The web console runs beside them (plain HTTP on loopback: its cookies drop the Secure flag here only).
    sup = Supervisor(
        settings,
        services=(*SERVICES, "console"),
        extra_env={"OUTDIAL_DEV": "1", "OUTDIAL_CONSOLE_SECURE_COOKIES": "false"},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        infra = await sup.start()
        await first_admin(infra.database_url)
        log.info(
            "services started: %s (database %s, redis %s)",
            ", ".join(sup.procs),
            infra.database_url.rsplit("@", 1)[-1],
            infra.redis_url,
        )
        while not stop.is_set():
            if not sup.alive():
                dead = [n for n, p in sup.procs.items() if p.poll() is not None]
                log.error("service exited: %s; stopping the others", ", ".join(dead))
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        rc = await asyncio.to_thread(sup.stop)
    return rc if stop.is_set() else (rc or 1)


def register(sub: Any) -> None:
    from outdial.cli.base import command

    dbp = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_cmd", required=True)
    command(
        dbp, "migrate", db_migrate, "apply pending SQL migrations and the database roles' grants (idempotent)"
    )

    p = command(sub, "serve", serve, "run one service in the foreground")
    p.add_argument("service", choices=SERVICES)

    command(
        sub,
        "run",
        run_all,
        "run the four services and the web console (PostgreSQL/Redis found or started); Ctrl-C stops",
    )


if __name__ == "__main__":  # pragma: no cover
    fail("use the `outdial` command")
