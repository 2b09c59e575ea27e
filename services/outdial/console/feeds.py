"""Live feeds shared by every viewer of the same thing in one console process.

200 managers watching one campaign's dashboard open ONE WatchPacing stream to the pacing service, and the
campaign's statistics are read once per change, not once per viewer: :class:`Feed` runs the upstream stream
while it has subscribers and hands each of them the latest rendered fragment. A subscriber that falls behind
gets the newest fragment only (its queue holds one): a dashboard shows the present, not a backlog.

Who may subscribe is checked per viewer before attaching (the console's role check, and the service's own
check of a unary call with the viewer's own token); the upstream stream runs with the token of a current
subscriber, re-chosen at every reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

K = TypeVar("K")

__all__ = ["Feed", "Feeds"]


class Feed(Generic[K]):
    def __init__(
        self, key: K, source: Callable[[Feed[K]], AsyncIterator[str]], on_idle: Callable[[K], None]
    ) -> None:
        self.key = key
        self._source = source
        self._on_idle = on_idle
        self._subs: dict[asyncio.Queue[str], object] = {}
        self.latest: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribers(self) -> list[object]:
        """The subscribers' credentials (whatever they attached with), newest last."""
        return list(self._subs.values())

    def subscribe(self, credential: object) -> asyncio.Queue[str]:
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        self._subs[q] = credential
        if self.latest is not None:
            q.put_nowait(self.latest)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"feed:{self.key}")
        return q

    def unsubscribe(self, q: asyncio.Queue[str]) -> None:
        self._subs.pop(q, None)
        if not self._subs:
            if self._task is not None:
                self._task.cancel()
            self._on_idle(self.key)

    def publish(self, html: str) -> None:
        self.latest = html
        for q in list(self._subs):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(html)

    async def _run(self) -> None:
        async for html in self._source(self):
            self.publish(html)


class Feeds(Generic[K]):
    """The live feeds by key (a campaign id, a wallboard's campaign filter)."""

    def __init__(self, source: Callable[[Feed[K]], AsyncIterator[str]]) -> None:
        self._source = source
        self._feeds: dict[K, Feed[K]] = {}

    def get(self, key: K) -> Feed[K]:
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed(key, self._source, self._drop)
        return feed

    def _drop(self, key: K) -> None:
        self._feeds.pop(key, None)

    def __len__(self) -> int:
        return len(self._feeds)
