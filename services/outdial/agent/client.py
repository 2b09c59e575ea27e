"""The agent's end of a session, for every console (the terminal console, the simulated agents): log in,
hold the Connect stream open, and come back after any fault instead of exiting.

The session lives on the server (in Redis), not in the connection: when the agent service is killed, a
replica goes away in a rolling update, or the network drops, the console reconnects with exponential
backoff and full jitter and resumes the same session (same id, same state, the call it is on): not a new
login. Each retry opens a fresh channel, so grpc's own reconnect backoff (which grows to minutes) never
delays the comeback. The session ends only when the server says so: logged out (by the agent, a manager, or
after the heartbeat grace) or taken over by a newer console of the same agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from outdial.v1 import agent_pb2, agent_pb2_grpc, common_pb2

log = logging.getLogger("outdial.agent.client")

T = TypeVar("T")

# Faults a console waits out: the service or its replica is gone or restarting, the network dropped.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: retry ``n`` (from 0) waits uniform(0, min(cap, base * 2**n))
    ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015). A thousand consoles that lost the
    same replica come back spread over up to ``cap_s``, not in one burst; none waits longer than the cap
    once the service is back."""

    base_s: float = 0.1
    cap_s: float = 1.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(max(attempt, 0), 30))
        return rng.uniform(0.0, ceiling)


class SessionEnded(Exception):
    """The server ended the session: ``reason`` is "logged_out" or "superseded" (a newer console)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def error_id(exc: grpc.aio.AioRpcError) -> str:
    """The stable error id at the head of an outdial status message ("not_logged_in: …")."""
    head = (exc.details() or "").split(":", 1)[0]
    return head.split(" [", 1)[0].strip()


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in RETRYABLE
    return isinstance(exc, grpc.aio.UsageError)  # "Channel is closed": a channel replaced under a call


class AgentSession:
    """One agent's session. ``login()`` once, then iterate ``events()``; unary RPCs go through ``call()``.

    ``open_channel`` makes a new channel to the agent service (the address a load balancer or a Kubernetes
    Service answers on); ``metadata`` carries the agent's token on streaming calls."""

    def __init__(
        self,
        open_channel: Callable[[], grpc.aio.Channel],
        login: agent_pb2.LoginRequest,
        metadata: tuple[tuple[str, str], ...],
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._open = open_channel
        self._login = login
        self.agent_id = login.agent_id
        self.metadata = metadata
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self._channel = open_channel()
        self.stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self.session_id = ""
        self.status: agent_pb2.AgentStatus | None = None
        # Open while a Connect stream is up (set at its first status, cleared when it breaks).
        self.connected = asyncio.Event()
        self.logins = 0  # Login calls that started a new session
        self.resumes = 0  # Login calls that took a running session back
        self.reconnects = 0  # streams reopened after a fault

    async def close(self) -> None:
        await self._channel.close()

    async def _renew(self, failed: grpc.aio.Channel) -> None:
        """A fresh channel in place of ``failed`` (once, whoever notices first)."""
        if self._channel is not failed:
            return
        self._channel = self._open()
        self.stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        await failed.close()

    async def call(
        self,
        rpc: Callable[[agent_pb2_grpc.AgentServiceStub], Awaitable[T]],
        *,
        give_up_s: float | None = None,
    ) -> T:
        """A unary RPC, retried with backoff through restarts until ``give_up_s`` (None: for ever). The agent
        RPCs are safe to repeat: a repeated EndCall is FAILED_PRECONDITION, a disposition is recorded once."""
        loop = asyncio.get_running_loop()
        end = None if give_up_s is None else loop.time() + give_up_s
        attempt = 0
        while True:
            channel = self._channel
            try:
                return await rpc(self.stub)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
                if not _retryable(exc):
                    raise
                pause = self.backoff.delay(attempt, self.rng)
                if end is not None and loop.time() + pause > end:
                    raise
                log.info("agent %s: %s; retrying in %.2f s", self.agent_id, _describe(exc), pause)
            await asyncio.sleep(pause)
            attempt += 1
            await self._renew(channel)

    async def login(self, *, give_up_s: float | None = None) -> agent_pb2.LoginResponse:
        """Log in, or take back the session already running (a console that crashed and started again)."""
        resp: agent_pb2.LoginResponse = await self.call(
            lambda stub: stub.Login(self._login, metadata=self.metadata), give_up_s=give_up_s
        )
        if resp.session_id == self.session_id or resp.status.session_id == self.session_id:
            self.resumes += 1
        else:
            self.logins += 1
        self.session_id = resp.session_id
        self.status = resp.status
        return resp

    async def logout(self, *, give_up_s: float = 3.0) -> None:
        """Best effort: log out (a failure leaves the session to the heartbeat grace)."""
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await self.call(
                lambda stub: stub.Logout(
                    agent_pb2.LogoutRequest(agent_id=self.agent_id), metadata=self.metadata
                ),
                give_up_s=give_up_s,
            )

    async def events(self) -> AsyncIterator[agent_pb2.ConnectResponse]:
        """The Connect stream's messages across reconnections, until the session ends (``SessionEnded``).

        After a reconnection the stream starts again with the agent's status, then the call they are on
        (or an offer still awaiting acknowledgement) again: a console must treat an offer for a call it
        already shows as the same call. When the session was over meanwhile (gone longer than the
        heartbeat grace: logged out by the server), it logs in again: a new session, which takes back a
        call the agent was still on."""
        attempt = 0
        while True:
            channel = self._channel
            call = self.stub.Connect(
                agent_pb2.ConnectRequest(agent_id=self.agent_id, session_id=self.session_id),
                metadata=self.metadata,
            )
            try:
                async for msg in call:
                    if msg.HasField("status"):
                        attempt = 0
                        self.status = msg.status
                        if msg.status.state == common_pb2.AGENT_STATE_LOGGED_OUT:
                            raise SessionEnded("logged_out")
                        self.connected.set()
                    yield msg
                log.info("agent %s: the stream ended; reconnecting", self.agent_id)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
                eid = error_id(exc) if isinstance(exc, grpc.aio.AioRpcError) else ""
                if eid == "session_superseded":
                    raise SessionEnded("superseded") from exc
                if eid == "not_logged_in":
                    log.info("agent %s: the session timed out while away; logging in again", self.agent_id)
                    await self.login()
                elif not _retryable(exc):
                    raise
                else:
                    log.info("agent %s: %s; reconnecting", self.agent_id, _describe(exc))
            finally:
                call.cancel()
                self.connected.clear()
            await asyncio.sleep(self.backoff.delay(attempt, self.rng))
            attempt += 1
            self.reconnects += 1
            await self._renew(channel)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
