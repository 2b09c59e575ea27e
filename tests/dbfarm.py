"""The tests' databases, cloned and dropped off the tests' critical path.

Each test still gets a database of its own, a fresh ``CREATE DATABASE … TEMPLATE`` clone of the session's
migrated template, dropped when the test ends. What moves is the waiting: PostgreSQL 15's ``DROP DATABASE``
waits for a checkpoint (1-1.8 s each measured on the shared server while other runs load it: most of a
small test's time), and a clone takes 0.2-0.5 s. A worker thread, with an event loop of its own, clones the
next tests' databases while the current test runs, and drops the finished ones several at a time, so that one
checkpoint serves the whole batch. A test never waits for a drop; it waits for a clone only when the worker
has none ready (then it clones one itself, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

import asyncpg

log = logging.getLogger("tests.dbfarm")

READY = 2  # clones kept ready: a test's setup takes one without waiting
DROP_BATCH = 16  # drops issued at once (each its own connection): their checkpoint requests coalesce


class DatabaseFarm:
    def __init__(self, server_url: str, template: str, new_name: Callable[[], str]) -> None:
        self.server_url = server_url
        self.template = template
        self.new_name = new_name
        self._lock = threading.Lock()
        self._ready: list[str] = []
        self._to_drop: list[str] = []
        self._closing = False
        self._cloner_done = False
        self._loop = asyncio.new_event_loop()
        self._clone_wake = asyncio.Event()
        self._drop_wake = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="tests-dbfarm", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------- the tests' side

    def take(self) -> str | None:
        """A ready clone of the template (now, without waiting), or None when the worker has none yet."""
        with self._lock:
            name = self._ready.pop(0) if self._ready else None
        self._wake(self._clone_wake)
        return name

    def release(self, name: str) -> None:
        """The test is over: drop its database (soon, on the worker; ``WITH (FORCE)``)."""
        with self._lock:
            self._to_drop.append(name)
        self._wake(self._drop_wake)

    def close(self) -> None:
        """Stop the worker, then drop what it holds (ready clones and pending drops) before returning."""
        with self._lock:
            self._closing = True
        self._wake(self._clone_wake)
        self._wake(self._drop_wake)
        self._thread.join(120)

    def _wake(self, event: asyncio.Event) -> None:
        with contextlib.suppress(RuntimeError):  # the worker's loop is closed: nothing left to wake
            self._loop.call_soon_threadsafe(event.set)

    # -------------------------------------------------------------------------------------------- worker

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(asyncio.gather(self._cloner(), self._dropper()))
        except Exception:  # the session's leftover sweep (conftest.infra) drops what this missed
            log.exception("the test database worker failed")
        finally:
            self._loop.close()

    async def _cloner(self) -> None:
        """Keeps READY clones of the template ready (cloning runs beside the drops: it never waits for one)."""
        while True:
            with self._lock:
                if self._closing:
                    self._to_drop.extend(self._ready)
                    self._ready = []
                    self._cloner_done = True
                need = len(self._ready) < READY
            if self._cloner_done:
                self._drop_wake.set()  # (this loop's thread)
                return
            if not need:
                self._clone_wake.clear()
                await self._clone_wake.wait()
                continue
            name = self.new_name()
            try:
                await self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            except (OSError, asyncpg.PostgresError):
                # A test's setup clones its own meanwhile (and reports the error); try again later.
                log.exception("could not clone the template database")
                await asyncio.sleep(1.0)
                continue
            with self._lock:
                self._ready.append(name)

    async def _dropper(self) -> None:
        """Drops finished tests' databases, all that are waiting (up to DROP_BATCH) at once; at close, the rest."""
        while True:
            with self._lock:
                names, self._to_drop = self._to_drop[:DROP_BATCH], self._to_drop[DROP_BATCH:]
                done = self._cloner_done and not names
            if names:
                await asyncio.gather(*(self._drop(n) for n in names))
            elif done:
                return
            else:
                self._drop_wake.clear()
                await self._drop_wake.wait()

    async def _drop(self, name: str) -> None:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def _execute(self, sql: str) -> None:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
