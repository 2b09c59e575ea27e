"""Token revocation: one token by its ``jti``, or every token of a subject issued before a time T.

- **PostgreSQL is the record** (``token_revocations``, migration 0002). ``outdial token revoke`` writes it
  first, then mirrors the row to Redis and publishes a change.
- **Redis is the mirror** (:func:`outdial.core.keys.revoked_tokens`, with a version counter). A service that
  finds the counter gone (Redis lost its data) rebuilds the mirror from PostgreSQL.
- **Each process keeps an in-process copy**, so that checking a token is a dictionary lookup and adds no
  round trip to any RPC. It is refreshed from Redis every ``revocation_refresh_seconds`` (1 s) and at once on
  pub/sub, and from PostgreSQL every ``revocation_pg_seconds`` (10 s) as a backstop (a revocation whose
  Redis write failed still arrives). Entries only ever accumulate until they expire (no un-revoke).
- **Fail closed** when stale: until the first load, and when no refresh from either store has succeeded for
  ``revocation_max_stale_seconds`` (60 s), every token is refused with UNAVAILABLE. A service that can reach
  neither PostgreSQL nor Redis cannot do its work anyway; a revoked token must not outlive the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import redis.exceptions

from outdial.core import keys
from outdial.core.auth import LEEWAY_SECONDS, PERSON_MAX_TTL_SECONDS, Principal
from outdial.core.errors import Unauthenticated, Unavailable
from outdial.core.redis import Redis

log = logging.getLogger("outdial.revocation")

Kind = Literal["jti", "subject"]
# Past this, no token a revocation made now can revoke is still valid (no token lives longer, leeway added).
REVOCATION_LIFETIME_SECONDS = PERSON_MAX_TTL_SECONDS + LEEWAY_SECONDS

_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)
_PG_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(frozen=True)
class Revocation:
    kind: Kind
    value: str
    # kind "subject": tokens whose iat is before this (epoch seconds) are revoked; 0 for a jti.
    before: float
    expires_at: float

    @property
    def redis_field(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def redis_value(self) -> str:
        return f"{self.before!r}|{self.expires_at!r}"

    @classmethod
    def from_redis(cls, field: str, value: str) -> Revocation | None:
        kind, _, name = field.partition(":")
        before, _, expires = value.partition("|")
        if kind not in ("jti", "subject") or not name:
            return None
        try:
            return cls(kind, name, float(before), float(expires))  # type: ignore[arg-type]
        except ValueError:
            return None


def subjects_of(subject: str) -> tuple[str, ...]:
    """The subjects whose revocation covers ``subject``: itself, and for a service instance
    (``svc:pacing:pod-1``) the service (``svc:pacing``)."""
    parts = subject.split(":")
    if parts[0] == "svc" and len(parts) >= 3:
        return (subject, f"svc:{parts[1]}")
    return (subject,)


class RevocationList:
    """The in-process copy that every RPC's token is checked against (no I/O)."""

    def __init__(self, max_stale_seconds: float = 60.0, *, monotonic: Callable[[], float] = time.monotonic):
        self.max_stale_seconds = max_stale_seconds
        self._monotonic = monotonic
        self._jtis: dict[str, float] = {}
        self._subjects: dict[str, tuple[float, float]] = {}
        self._fresh_at: float | None = None

    def merge(self, revocations: Iterable[Revocation]) -> int:
        """Add entries (a subject keeps its latest ``before``); returns how many were new or changed."""
        now = time.time()
        changed = 0
        for r in revocations:
            if r.expires_at <= now:
                continue
            if r.kind == "jti":
                if self._jtis.get(r.value, 0.0) < r.expires_at:
                    self._jtis[r.value] = r.expires_at
                    changed += 1
            else:
                old = self._subjects.get(r.value)
                if old is None or old[0] < r.before:
                    self._subjects[r.value] = (r.before, max(r.expires_at, old[1] if old else 0.0))
                    changed += 1
        return changed

    def prune(self) -> None:
        now = time.time()
        self._jtis = {k: v for k, v in self._jtis.items() if v > now}
        self._subjects = {k: v for k, v in self._subjects.items() if v[1] > now}

    def mark_fresh(self) -> None:
        self._fresh_at = self._monotonic()

    @property
    def loaded(self) -> bool:
        return self._fresh_at is not None

    def staleness(self) -> float | None:
        return None if self._fresh_at is None else self._monotonic() - self._fresh_at

    def __len__(self) -> int:
        return len(self._jtis) + len(self._subjects)

    def check(self, principal: Principal) -> None:
        """Refuse a revoked token (UNAUTHENTICATED), or every token while the list is not loaded or stale
        (UNAVAILABLE: fail closed)."""
        stale = self.staleness()
        if stale is None:
            raise Unavailable(
                "the token revocation list is not loaded yet; retry", error_id="revocations_unloaded"
            )
        if stale > self.max_stale_seconds:
            raise Unavailable(
                f"the token revocation list has not been refreshed for {stale:.0f} s (Redis and PostgreSQL "
                "unreachable): tokens are refused until it is",
                error_id="revocations_stale",
            )
        now = time.time()
        if principal.token_id and self._jtis.get(principal.token_id, 0.0) > now:
            raise Unauthenticated("token revoked", error_id="token_revoked")
        for subject in subjects_of(principal.subject):
            entry = self._subjects.get(subject)
            if entry is not None and entry[1] > now and principal.issued_at < entry[0]:
                at = datetime.fromtimestamp(entry[0], UTC).isoformat(timespec="seconds")
                raise Unauthenticated(
                    f"the tokens of {subject} issued before {at} are revoked: get a new token",
                    error_id="token_revoked",
                )


# ------------------------------------------------------------------------------------------- stores


def _row(r: Any) -> Revocation:
    before = r["before"].timestamp() if r["before"] is not None else 0.0
    return Revocation(r["kind"], r["value"], before, r["expires_at"].timestamp())


async def load_from_pg(pool: asyncpg.Pool) -> list[Revocation]:
    """Every unexpired row: at most a day of revocations, so reading them all is cheap, and it cannot miss
    a row that committed late (ids of concurrent inserts commit out of order)."""
    rows = await pool.fetch(
        "SELECT kind, value, before, expires_at FROM token_revocations WHERE expires_at > now()"
    )
    return [_row(r) for r in rows]


async def mirror_to_redis(redis: Redis, revocations: Iterable[Revocation], *, publish: bool = True) -> None:
    """Write entries to the Redis mirror and bump its version (one transaction), then tell the services."""
    mapping = {r.redis_field: r.redis_value for r in revocations}
    async with redis.pipeline(transaction=True) as pipe:
        if mapping:
            pipe.hset(keys.revoked_tokens(), mapping=mapping)  # type: ignore[arg-type]
        pipe.incr(keys.revoked_tokens_version())
        await pipe.execute()
    if publish:
        await redis.publish(keys.revocations_channel(), "changed")


async def load_from_redis(redis: Redis) -> list[Revocation]:
    raw: dict[Any, Any] = await redis.hgetall(keys.revoked_tokens())  # type: ignore[misc]
    out = []
    for field, value in raw.items():
        f = field.decode() if isinstance(field, bytes) else str(field)
        v = value.decode() if isinstance(value, bytes) else str(value)
        r = Revocation.from_redis(f, v)
        if r is not None:
            out.append(r)
    return out


async def revoke(
    pool: asyncpg.Pool,
    redis: Redis | None,
    *,
    jti: str | None = None,
    subject: str | None = None,
    before: datetime | None = None,
    revoked_by: str,
    reason: str = "",
) -> tuple[Revocation, bool]:
    """Record a revocation in PostgreSQL, then mirror it to Redis. Returns it and whether Redis has it (when
    not, services still load it from PostgreSQL within ``revocation_pg_seconds``)."""
    if (jti is None) == (subject is None):
        raise ValueError("give exactly one of --jti or --subject")
    now = datetime.now(UTC)
    if jti is not None:
        jti = jti.strip()
        if not jti or len(jti) > 256:
            raise ValueError("--jti must be 1 to 256 characters")
        row = await pool.fetchrow(
            "INSERT INTO token_revocations (kind, value, expires_at, revoked_by, reason) "
            "VALUES ('jti', $1, now() + make_interval(secs => $2), $3, $4) RETURNING *",
            jti,
            float(REVOCATION_LIFETIME_SECONDS),
            revoked_by,
            reason,
        )
    else:
        assert subject is not None
        subject = subject.strip()
        if not subject or len(subject) > 256:
            raise ValueError("--subject must be 1 to 256 characters")
        at = before or now
        if at.tzinfo is None:
            raise ValueError("--before needs a time zone (e.g. 2026-01-02T03:04:05Z)")
        if at > now:
            raise ValueError("--before must not be in the future (it revokes tokens already issued)")
        row = await pool.fetchrow(
            "INSERT INTO token_revocations (kind, value, before, expires_at, revoked_by, reason) "
            "VALUES ('subject', $1, $2::timestamptz, $2::timestamptz + make_interval(secs => $3), $4, $5) RETURNING *",
            subject,
            at,
            float(REVOCATION_LIFETIME_SECONDS),
            revoked_by,
            reason,
        )
    assert row is not None
    rev = _row(row)
    if redis is None:
        return rev, False
    try:
        await mirror_to_redis(redis, [rev])
    except _REDIS_ERRORS as exc:
        log.warning("revocation recorded in PostgreSQL but not mirrored to Redis (%s)", type(exc).__name__)
        return rev, False
    return rev, True


class RevocationRefresher:
    """Keeps a process's :class:`RevocationList` current (see the module docstring)."""

    def __init__(
        self,
        revocations: RevocationList,
        redis: Redis,
        pool: asyncpg.Pool | None,
        *,
        refresh_seconds: float = 1.0,
        pg_seconds: float = 10.0,
    ) -> None:
        self.revocations = revocations
        self.redis = redis
        self.pool = pool
        self.refresh_seconds = refresh_seconds
        self.pg_seconds = pg_seconds
        self._version: str | None = None
        self._pg_at = -float("inf")
        self._wake = asyncio.Event()

    async def refresh_once(self) -> bool:
        """One refresh; True when the copy is known current (from Redis or PostgreSQL)."""
        fresh = False
        try:
            version = await self.redis.get(keys.revoked_tokens_version())
            if version is None:
                # Redis lost its data (or never had the list): PostgreSQL, the record, rebuilds it.
                if await self._rebuild_redis():
                    version = await self.redis.get(keys.revoked_tokens_version())
            if version is not None:
                v = version.decode() if isinstance(version, bytes) else str(version)
                if v != self._version:
                    revs = await load_from_redis(self.redis)
                    self.revocations.merge(revs)
                    self._version = v
                    expired = [r.redis_field for r in revs if r.expires_at <= time.time()]
                    if expired:  # the mirror drops what can no longer revoke a valid token
                        await self.redis.hdel(keys.revoked_tokens(), *expired)
                fresh = True
        except _REDIS_ERRORS as exc:
            log.debug("revocation refresh from Redis failed: %s", type(exc).__name__)
        loop = asyncio.get_running_loop()
        if self.pool is not None and (not fresh or loop.time() - self._pg_at >= self.pg_seconds):
            try:
                self.revocations.merge(await load_from_pg(self.pool))
                self._pg_at = loop.time()
                fresh = True
            except _PG_ERRORS as exc:
                log.debug("revocation refresh from PostgreSQL failed: %s", type(exc).__name__)
        if fresh:
            self.revocations.mark_fresh()
            self.revocations.prune()
        return fresh

    async def _rebuild_redis(self) -> bool:
        if self.pool is None:
            return False
        try:
            revs = await load_from_pg(self.pool)
        except _PG_ERRORS as exc:
            log.debug("cannot rebuild the revocation mirror: %s", type(exc).__name__)
            return False
        self.revocations.merge(revs)
        await mirror_to_redis(self.redis, revs, publish=False)
        log.info("rebuilt the Redis revocation mirror from PostgreSQL (%d entries)", len(revs))
        return True

    async def _listen(self) -> None:
        """Wake the refresh loop when ``outdial token revoke`` publishes (reconnects by itself)."""
        while True:
            try:
                async with self.redis.pubsub() as ps:
                    await ps.subscribe(keys.revocations_channel())
                    async for message in ps.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except _REDIS_ERRORS:
                await asyncio.sleep(self.refresh_seconds)

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen(), name="revocations:listen")
        try:
            while True:
                await self.refresh_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.refresh_seconds)
                self._wake.clear()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
