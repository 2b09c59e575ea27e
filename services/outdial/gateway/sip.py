"""The SIP thread, seen from asyncio: starts :mod:`.sipcore` in a thread of its own (sippy's dispatcher is
bound to the thread that imports it), runs commands there, and delivers its events to the event loop."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Callable
from typing import Any

Handler = Callable[..., None]


class SipStack:
    def __init__(
        self,
        host: str,
        port: int,
        public_host: str,
        realm: str,
        password_of: Callable[[str], str | None],
        handler: Handler,
    ) -> None:
        self.host, self.port, self.public_host, self.realm = host, port, public_host, realm
        self.password_of = password_of
        self.handler = handler
        self._thread: threading.Thread | None = None
        self._core: Any = None
        self._mod: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        started: asyncio.Future[Any] = loop.create_future()

        def post(*args: Any) -> None:
            loop.call_soon_threadsafe(self._deliver, args)

        def settle(result: Any) -> None:
            if not started.done():
                started.set_result(result)

        def ready(result: Any) -> None:
            loop.call_soon_threadsafe(settle, result)

        def body() -> None:
            mod = importlib.import_module("outdial.gateway.sipcore")
            self._mod = mod
            mod.run(
                lambda: mod.SipCore(
                    self.host, self.port, self.public_host, post, self.password_of, self.realm
                ),
                ready,
            )

        self._thread = threading.Thread(target=body, name="sip", daemon=True)
        self._thread.start()
        result = await started
        if isinstance(result, BaseException):
            raise result
        self._core = result

    def _deliver(self, args: tuple[Any, ...]) -> None:
        self.handler(*args)

    def call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Run ``SipCore.<method>(*args, **kwargs)`` in the SIP thread (fire and forget)."""
        core = self._core
        if core is None:
            raise RuntimeError("SIP stack not started")
        fn = getattr(core, method)
        self._mod.call(lambda: fn(*args, **kwargs))

    async def stop(self) -> None:
        if self._mod is not None and self._thread is not None:
            self._mod.stop()
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None
