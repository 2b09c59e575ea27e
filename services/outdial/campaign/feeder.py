"""The hopper feeder: keeps a Redis hopper per active campaign filled with leads callable now.

Per pass and active campaign (one replica per campaign at a time, by a lease in Redis):
1. drop hopper entries whose calling window has closed (the hopper is a cache; the dialer re-checks);
2. read due leads from PostgreSQL: callbacks first, then new leads, then retries;
3. keep those inside the lead's local calling window for ``window_margin`` more, for every state whose
   law applies (address and area code) in every candidate zone (``rules.place``, shared with the pacing
   service's dial-time gate), under the attempt caps (rules.caps: the state caps per rolling 24 h per
   *person* - every number of every lead linked by shared numbers, ``core.persons`` -, the campaign's own
   cap per number, UK 72 h after an abandoned call, attempts per lead) and not claimed by a call in progress;
4. ask the DNC service about all their numbers in one batch; if it answers with an error, add nothing;
5. write ``keys.hopper_lead`` then ``keys.hopper`` (the contract in COMMON.md).
Leads that cannot be called now get ``recheck_at`` (when the window opens, the cap frees, DNC is worth
asking again) so they do not crowd the next passes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from outdial.campaign.settings import CampaignSettings
from outdial.core import keys
from outdial.core.calltype import call_type_pb
from outdial.core.clock import Clock
from outdial.core.jurisdictions import jurisdiction_to_pb
from outdial.core.persons import dial_times, person_numbers
from outdial.core.redis import Redis
from outdial.rules import caps, windows
from outdial.rules.place import Place, check_place_window, legal_cap, place_of
from outdial.v1 import common_pb2, dnc_pb2, dnc_pb2_grpc

log = logging.getLogger("outdial.campaign.feeder")

BAND = 10**13  # score bands: callbacks < new < retries (ms timestamps are < 10**13)
PRIORITY = {"callback": 0, "new": 1, "retry": 2}


@dataclass
class Candidate:
    lead_id: int
    status: str
    attempts: int
    number: str
    timezones: tuple[str, ...]
    state: str
    zip: str
    first_name: str
    last_name: str
    fields: str
    due: datetime | None

    def score(self) -> float:
        band = PRIORITY.get(self.status, 2)
        if self.status == "new" or self.due is None:
            return band * BAND + self.lead_id
        return band * BAND + int(self.due.timestamp() * 1000)

    def hash(self) -> dict[str, str]:
        return {
            "lead_id": str(self.lead_id),
            "number": self.number,
            "timezones": json.dumps(list(self.timezones)),
            "state": self.state,
            "zip": self.zip,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "fields": self.fields,
            "attempt": str(self.attempts),
        }


class DncUnavailable(Exception):
    pass


def candidate_place(number: str, state: str, zip_code: str, zones: tuple[str, ...] | list[str]) -> Place:
    """The place of a call (``rules.place``: the same function the dial-time gate uses)."""
    return place_of(number, state=state or None, zip_code=zip_code or None, zones=tuple(zones))


#: DNC reasons that the lead's consent would answer (with a current wireless list for ``line_type.unknown``).
_CONSENT_CODES = frozenset({"wireless.no_consent", "consent.required", "dnc.national", "line_type.unknown"})


def compliance_block(codes: list[str]) -> str:
    """What a refused lead needs for the campaign report: ``fresh_list`` (its line type is not known: a
    current wireless list, or the consent a wireless number needs), ``consent`` (only consent would open
    it), or "" (something else refuses it too: an opt-out, a stale registry, …)."""
    if not codes or not set(codes) <= _CONSENT_CODES:
        return ""
    return "fresh_list" if "line_type.unknown" in codes else "consent"


def _ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


def _from_ms(v: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(float(v)) / 1000, UTC)
    except (TypeError, ValueError):
        return None


class Feeder:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        clock: Clock,
        settings: CampaignSettings,
        dnc_channel: Any,
        instance_id: str,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.clock = clock
        self.settings = settings
        self.dnc_channel = dnc_channel
        self.instance_id = instance_id
        self.margin = timedelta(seconds=settings.window_margin_s)
        self.wake = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        await ready.wait()
        while True:
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("feeder pass failed")
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), self.settings.feeder_interval_s)
            except TimeoutError:
                pass

    async def pass_once(self) -> dict[str, int]:
        added: dict[str, int] = {}
        for cid in sorted(str(x) for x in await self.redis.smembers(keys.active_campaigns())):
            if not await self._lease(cid):
                continue
            try:
                added[cid] = await self.fill(cid)
            except DncUnavailable as exc:
                log.warning("DNC check failed for campaign %s, nothing added: %s", cid, exc)
                added[cid] = 0
        return added

    async def _lease(self, cid: str) -> bool:
        key = keys.feeder_lease(cid)
        ttl = int(max(self.settings.feeder_interval_s * 3, 5) * 1000)
        if await self.redis.set(key, self.instance_id, nx=True, px=ttl):
            return True
        if await self.redis.get(key) == self.instance_id:
            await self.redis.pexpire(key, ttl)
            return True
        return False

    async def config(self, cid: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(keys.campaign_config(cid), "json")
        if not raw:
            return None
        cfg: dict[str, Any] = json.loads(raw)
        return cfg

    def _window(self, cfg: dict[str, Any]) -> windows.WindowSpec:
        return windows.window_from_json(cfg.get("calling_window") or {})

    async def prune(self, cid: str, cfg: dict[str, Any], now: datetime) -> list[str]:
        """Drop hopper entries that are no longer inside their window; returns the ids that stay."""
        members = [str(m) for m in await self.redis.zrange(keys.hopper(cid), 0, -1)]
        if not members:
            return []
        spec = self._window(cfg)
        jur = cfg.get("jurisdiction", "US")
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.hmget(keys.hopper_lead(cid, m), ["timezones", "state", "number", "zip"])
            infos = await pipe.execute()
        stale: list[str] = []
        for m, (tz, state, number, zip_code) in zip(members, infos, strict=True):
            if tz is None:
                stale.append(m)
                continue
            place = candidate_place(number or "", state or "", zip_code or "", json.loads(tz))
            d = check_place_window(place, now, spec, jurisdiction=jur, margin=self.margin)
            if not d.allowed:
                stale.append(m)
        if stale:
            await self.redis.zrem(keys.hopper(cid), *stale)
        return [m for m in members if m not in set(stale)]

    async def fill(self, cid: str) -> int:
        cfg = await self.config(cid)
        if cfg is None or cfg.get("state") != "active":
            return 0
        now = self.clock.now()
        in_hopper = await self.prune(cid, cfg, now)
        need = self.settings.hopper_target - len(in_hopper)
        if need <= 0:
            return 0
        cands = await self.callable_now(cid, cfg, now, [int(x) for x in in_hopper if x.isdigit()])
        if not cands:
            return 0
        allowed = await self.dnc_filter(cid, cfg, cands, now)
        chosen = allowed[:need]
        if not chosen:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in chosen:
                hk = keys.hopper_lead(cid, str(c.lead_id))
                pipe.hset(hk, mapping=dict(c.hash()))  # type: ignore[arg-type]
                pipe.expire(hk, 3600)
            await pipe.execute()
        # A lead claimed meanwhile is refused by the dialer's SET NX; re-check claims to keep the cache clean.
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in chosen:
                pipe.exists(keys.lead_claim(cid, str(c.lead_id)))
            claimed = await pipe.execute()
        scores = {str(c.lead_id): c.score() for c, cl in zip(chosen, claimed, strict=True) if not cl}
        if scores:
            await self.redis.zadd(keys.hopper(cid), scores, nx=True)
        return len(scores)

    async def callable_now(
        self, cid: str, cfg: dict[str, Any], now: datetime, exclude: list[int]
    ) -> list[Candidate]:
        """Due leads inside their window, under the caps, not claimed (no DNC check yet)."""
        rows = await self.pool.fetch(
            """SELECT l.id, l.status, l.attempts, l.first_name, l.last_name, l.zip, l.state, l.fields::text AS fields,
                      l.next_attempt_at,
                      (SELECT json_agg(json_build_object('e', n.e164, 'tz', n.timezones) ORDER BY n.position)
                         FROM lead_numbers n WHERE n.lead_id = l.id)::text AS numbers
                 FROM leads l
                WHERE l.campaign_id = $1 AND l.status IN ('new', 'retry', 'callback')
                  AND (l.next_attempt_at IS NULL OR l.next_attempt_at <= $2)
                  AND (l.recheck_at IS NULL OR l.recheck_at <= $2)
                  AND l.id <> ALL($3::bigint[])
                ORDER BY CASE l.status WHEN 'callback' THEN 0 WHEN 'new' THEN 1 ELSE 2 END,
                         l.next_attempt_at NULLS FIRST, l.id
                LIMIT $4""",
            cid,
            now,
            exclude,
            self.settings.feeder_batch,
        )
        spec = self._window(cfg)
        jur = str(cfg.get("jurisdiction", "US"))
        recheck: dict[int, datetime] = {}
        exhausted: list[int] = []
        out: list[Candidate] = []
        max_lead = int(cfg.get("max_attempts_per_lead") or 0)
        for r in rows:
            nums = json.loads(r["numbers"] or "[]")
            if not nums:
                exhausted.append(r["id"])
                continue
            if max_lead and r["attempts"] >= max_lead:
                exhausted.append(r["id"])
                continue
            pick = nums[r["attempts"] % len(nums)]
            zones = tuple(pick["tz"])
            place = candidate_place(pick["e"], r["state"], r["zip"], zones)
            d = check_place_window(place, now, spec, jurisdiction=jur, margin=self.margin)
            if not d.allowed:
                recheck[r["id"]] = d.next_open or now + timedelta(hours=1)
                continue
            out.append(
                Candidate(
                    lead_id=r["id"],
                    status=r["status"],
                    attempts=r["attempts"],
                    number=pick["e"],
                    timezones=zones,
                    state=r["state"],
                    zip=r["zip"],
                    first_name=r["first_name"],
                    last_name=r["last_name"],
                    fields=r["fields"],
                    due=r["next_attempt_at"],
                )
            )
        out = await self._caps(cid, cfg, jur, out, now, recheck)
        out = await self._unclaimed(cid, out)
        await self._mark(recheck, exhausted)
        return out

    async def _unclaimed(self, cid: str, cands: list[Candidate]) -> list[Candidate]:
        if not cands:
            return cands
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in cands:
                pipe.exists(keys.lead_claim(cid, str(c.lead_id)))
            claimed = await pipe.execute()
        return [c for c, cl in zip(cands, claimed, strict=True) if not cl]

    async def _caps(
        self,
        cid: str,
        cfg: dict[str, Any],
        jur: str,
        cands: list[Candidate],
        now: datetime,
        recheck: dict[int, datetime],
    ) -> list[Candidate]:
        if not cands:
            return cands
        # The person behind each number: every number of every lead linked to it by shared numbers, in
        # every campaign (core.persons); the state caps count their calls together.
        persons = await person_numbers(self.pool, {c.number for c in cands})
        numbers = sorted(set().union(*persons.values()))
        # The longest look-back any cap needs (rolling 24 h, the UK quiet period after an abandoned call).
        since = now - max(caps.DAY, caps.UK_ABANDON_QUIET)
        # Every source of dials, each call once by its id: the pacing service's dial_attempts (written before
        # a call leaves), the call records, and the dialer's per-number sets in Redis.
        attempts = await dial_times(self.pool, numbers, since)
        rows = await self.pool.fetch(
            """SELECT called_number, call_id, dial_at, outcome, end_at FROM call_records
                WHERE called_number = ANY($1::text[]) AND dial_at > $2 AND outcome <> 'blocked'""",
            numbers,
            since,
        )
        abandoned: dict[str, datetime] = {}
        for r in rows:
            attempts.setdefault(r["called_number"], {})[r["call_id"]] = r["dial_at"]
            if r["outcome"] == "abandoned":
                t = r["end_at"] or r["dial_at"]
                abandoned[r["called_number"]] = max(abandoned.get(r["called_number"], t), t)
        async with self.redis.pipeline(transaction=False) as pipe:
            for n in numbers:
                pipe.zrangebyscore(keys.number_attempts(n), _ms(now - caps.DAY), "+inf", withscores=True)
                pipe.get(keys.number_abandoned(n))
            res = await pipe.execute()
        for i, n in enumerate(numbers):
            for member, score in res[2 * i]:
                attempts.setdefault(n, {}).setdefault(str(member), _from_ms(score) or now)
            ab = _from_ms(res[2 * i + 1]) if res[2 * i + 1] else None
            if ab is not None:
                abandoned[n] = max(abandoned.get(n, ab), ab)
        own = int(cfg.get("max_calls_per_number_24h") or 0) or None
        out: list[Candidate] = []
        today = now.astimezone(UTC).date()  # the rules in force on the day of the call
        for c in cands:
            place = candidate_place(c.number, c.state, c.zip, c.timezones)
            # The law's cap (the smallest of every applicable state) counts the person's calls; the
            # campaign's own cap counts the number's.
            checks = (
                (caps.person_attempt_times(attempts, persons[c.number]), legal_cap(place, jur, today)),
                (list(attempts.get(c.number, {}).values()), own),
            )
            frees: list[datetime] = []
            for times, limit in checks:
                if not caps.check_attempts(times, now, limit).allowed:
                    frees.append(caps.next_attempt_allowed_at(times, now, limit) or now + timedelta(hours=1))
            if frees:
                recheck[c.lead_id] = max(frees)
                continue
            if jur == "UK":
                u = caps.check_uk_abandon_rule(abandoned.get(c.number), now)
                if not u.allowed:
                    recheck[c.lead_id] = abandoned[c.number] + caps.UK_ABANDON_QUIET
                    continue
            out.append(c)
        return out

    async def dnc_filter(
        self, cid: str, cfg: dict[str, Any], cands: list[Candidate], now: datetime
    ) -> list[Candidate]:
        # An unknown jurisdiction is asked about as US (the default), as the feeder's other checks do.
        jur = jurisdiction_to_pb(str(cfg.get("jurisdiction", "US"))) or common_pb2.JURISDICTION_US
        method, purpose = call_type_pb(cfg)
        req = dnc_pb2.CheckNumbersRequest(
            numbers=sorted({c.number for c in cands}),
            campaign_id=cid,
            jurisdiction=jur,
            call_method=method,
            call_purpose=purpose,
        )
        try:
            stub = dnc_pb2_grpc.DncServiceStub(self.dnc_channel)
            resp = await stub.CheckNumbers(req, timeout=self.settings.dnc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise DncUnavailable(f"{exc.code().name}: {exc.details()}") from None
        except (TimeoutError, OSError) as exc:
            raise DncUnavailable(type(exc).__name__) from None
        verdict = {d.number: d.allowed for d in resp.decisions}
        need = {d.number: compliance_block([r.code for r in d.reasons]) for d in resp.decisions}
        later = now + timedelta(seconds=self.settings.dnc_recheck_s)
        out: list[Candidate] = []
        blocked: dict[int, datetime] = {}
        for c in cands:
            # A number the answer does not mention is not allowed (fail closed).
            if verdict.get(c.number) is True:
                out.append(c)
            else:
                blocked[c.lead_id] = later
        await self._mark(blocked, [])
        await self.pool.execute(
            """UPDATE leads SET compliance_block = v.b FROM unnest($1::bigint[], $2::text[]) AS v(id, b)
                WHERE leads.id = v.id AND leads.compliance_block <> v.b""",
            [c.lead_id for c in cands],
            [need.get(c.number, "") if c.lead_id in blocked else "" for c in cands],
        )
        return out

    async def _mark(self, recheck: dict[int, datetime], exhausted: list[int]) -> None:
        if recheck:
            ids = list(recheck)
            await self.pool.execute(
                """UPDATE leads SET recheck_at = v.t FROM unnest($1::bigint[], $2::timestamptz[]) AS v(id, t)
                    WHERE leads.id = v.id""",
                ids,
                [recheck[i] for i in ids],
            )
        if exhausted:
            await self.pool.execute(
                """UPDATE leads SET status = 'final', final_reason = 'exhausted', updated_at = now()
                    WHERE id = ANY($1::bigint[])""",
                exhausted,
            )
