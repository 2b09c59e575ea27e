"""The dialer's dial-time gate: every call passes it right before origination, whatever path it came by.

Campaign-wide checks first (campaign state, an agentless campaign the law does not let run without a consent
check (:func:`outdial.rules.law.agentless_refusal`), caller id, a readable calling window), then per lead the
local rules, decided by one pure function, :func:`outdial.rules.dialcheck.evaluate`: the calling window of
every state whose law applies - the address's and the area code's - in every candidate zone
(:func:`outdial.rules.place.place_of`, the function the campaign feeder uses too), the states' smallest cap
per rolling 24 h counted per *person* (every number of every lead linked to the dialled number by shared
numbers, in any campaign: :mod:`outdial.core.persons`), the campaign's own cap per number, the UK 72-hour
rule after an abandoned call. This module does the I/O only: it reads the facts and sends every number that
got past the campaign-wide checks, the locally blocked ones too, to the DNC service's audited
``CheckNumbers`` with ``dial_time=true`` and the local decision with the inputs it was taken on (``dialer``):
the DNC service writes one hash-chained audit record per dial with the lists, consent, RND, window and cap
decisions and their inputs. A campaign-wide block is recorded for each number too, with the campaign's facts.
The request carries the campaign's call type (autodialled, prerecorded for agentless, manual for preview;
telemarketing or informational): the DNC service applies the consent each call type needs to each number's
line type (rules/data/*.yaml ``consent`` rows), so a preview call reaches a wireless number that an
autodialled one may not.

It fails closed: an RPC error, a missing answer, a malformed config, or PostgreSQL unable to say who the
person is and what they were called is a block, with its reason (recorded too, when the DNC service answers).

The attempt counts come from PostgreSQL's ``dial_attempts`` (the system of record, written before a call
leaves), joined with the Redis per-number sets the dialer writes; a call counts once by its id. Redis losing
its data therefore cannot loosen a cap. Within one batch, a lead allowed counts against the next leads of the
same person.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from redis.exceptions import RedisError

from outdial.core import dnc_changes, keys
from outdial.core.calltype import call_type_pb
from outdial.core.jurisdictions import jurisdiction_to_pb
from outdial.core.persons import PersonFactsUnavailable
from outdial.core.redis import Redis
from outdial.rules.caps import DAY, person_attempt_times
from outdial.rules.dialcheck import LocalCheck, campaign_blocked, campaign_cap, evaluate, facts_unavailable
from outdial.rules.law import agentless_refusal
from outdial.rules.place import check_place_window, place_of
from outdial.rules.windows import WindowSpec, window_from_json
from outdial.v1 import dnc_pb2, dnc_pb2_grpc

log = logging.getLogger("outdial.pacing.gate")

_DAY_MS = int(DAY.total_seconds() * 1000)


@dataclass(frozen=True)
class GateLead:
    call_id: str
    lead_id: str
    number: str
    timezones: tuple[str, ...]
    state: str
    attempt: int
    zip: str = ""


class PersonFacts(Protocol):
    async def person_dials(
        self, numbers: Sequence[str], since: datetime
    ) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, datetime]]]:
        """(number -> every number of its person, number -> {call id: dial time} since ``since``); raises
        :class:`PersonFactsUnavailable` when it cannot answer."""
        ...


@dataclass
class GateResult:
    allowed: bool
    reasons: list[str] = field(default_factory=list)
    detail: str = ""
    audit_seq: int = 0
    #: Every number of the person behind the call and the law's cap of calls to them per rolling 24 h (None:
    #: no state caps them): checked again, under a lock, when the call is marked dialled (``mark_dialed``).
    person: frozenset[str] = frozenset()
    person_cap: int | None = None
    #: The DNC changes counter read before the check (core/dnc_changes.py): the dial asks whether the
    #: number was listed or its consent revoked since. -1: not read (the call is not dialled).
    dnc_seen: int = -1


def window_open_at(config: Mapping[str, Any], lead: GateLead, at: datetime) -> bool:
    """Is ``lead`` inside its calling window at ``at``, the instant its call leaves? The gate decides at the
    start of a launch; the call leaves after the DNC check, the records and the agent hold, which can take
    past the window's edge (a closing window is known in advance: no call may cross it). Fails closed."""
    try:
        spec = window_from_json(config.get("calling_window") or {})
    except (ValueError, TypeError, KeyError):
        return False
    jurisdiction = str(config.get("jurisdiction") or "US").upper()
    # The same place as the gate's decision: every applicable state (address, ZIP, area code) in every zone.
    place = place_of(lead.number, state=lead.state or None, zip_code=lead.zip or None, zones=lead.timezones)
    return check_place_window(place, at, spec, jurisdiction=jurisdiction).allowed


class DialGate:
    def __init__(
        self,
        redis: Redis,
        dnc: dnc_pb2_grpc.DncServiceStub,
        facts: PersonFacts,
        *,
        dnc_timeout_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.dnc = dnc
        self.facts = facts
        self.dnc_timeout_s = dnc_timeout_s

    async def check(
        self, campaign_id: str, config: Mapping[str, Any], leads: Sequence[GateLead], now: datetime
    ) -> list[GateResult]:
        results = [GateResult(True) for _ in leads]
        if not leads:
            return results
        jurisdiction = str(config.get("jurisdiction") or "US").upper()
        spec, block = _campaign_block(config, jurisdiction)
        if block is not None:
            # a decision about the campaign, taken for each of its numbers: recorded for each like the others
            code, detail = block
            lc = campaign_blocked(
                now,
                jurisdiction=jurisdiction,
                code=code,
                detail=detail,
                campaign={
                    "state": str(config.get("state") or ""),
                    "dial_mode": str(config.get("dial_mode") or ""),
                    "caller_id_set": bool(str(config.get("caller_id") or "").strip()),
                    "message_informational": bool(config.get("message_informational")),
                },
            )
            for r in results:
                r.allowed, r.reasons, r.detail = False, [code], detail
            await self._dnc(campaign_id, jurisdiction, config, leads, results, [lc] * len(leads))
            return results
        assert spec is not None

        try:
            persons, dials = await self.facts.person_dials(
                [lead.number for lead in leads if lead.number], now - DAY
            )
        except PersonFactsUnavailable as exc:
            log.warning("attempt facts unavailable (%s): blocking %d calls", exc, len(leads))
            lc = facts_unavailable(now, jurisdiction=jurisdiction, detail=f"attempts: {exc}")
            for r in results:
                r.allowed, r.reasons, r.detail = False, list(lc.blocked), lc.detail
            await self._dnc(campaign_id, jurisdiction, config, leads, results, [lc] * len(leads))
            return results
        numbers = sorted(set().union(*persons.values())) if persons else []
        now_ms = int(now.timestamp() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for n in numbers:
            pipe.zrangebyscore(keys.number_attempts(n), now_ms - _DAY_MS, "+inf", withscores=True)
        for lead in leads:
            pipe.get(keys.number_abandoned(lead.number))
        raw = await pipe.execute()
        for n, members in zip(numbers, raw[: len(numbers)], strict=True):
            for member, score in members or []:
                dials.setdefault(n, {}).setdefault(
                    str(member), datetime.fromtimestamp(float(score) / 1000, UTC)
                )
        abandoned = raw[len(numbers) :]

        own_cap = campaign_cap(config)
        local: list[LocalCheck] = []
        for lead, r, last in zip(leads, results, abandoned, strict=True):
            person = persons.get(lead.number, frozenset({lead.number}))
            lc = evaluate(
                now,
                jurisdiction=jurisdiction,
                place=place_of(
                    lead.number, state=lead.state or None, zip_code=lead.zip or None, zones=lead.timezones
                ),
                spec=spec,
                person=person,
                person_attempts=person_attempt_times(dials, person),
                number_attempts=list(dials.get(lead.number, {}).values()),
                own_cap=own_cap,
                last_abandoned_at=datetime.fromtimestamp(int(last) / 1000, UTC) if last else None,
                number_present=bool(lead.number),
            )
            local.append(lc)
            r.reasons, r.detail, r.allowed = list(lc.blocked), lc.detail, lc.allowed
            r.person, r.person_cap = person, lc.person_cap
            if r.allowed:
                # Counts against the next leads of this batch: one person may be behind several leads.
                dials.setdefault(lead.number, {})[f"gate:{lead.call_id}"] = now

        # Every number goes to the DNC service, the ones the local rules blocked too: its audit record of the
        # dial keeps both decisions and their inputs (zones, local times, rule versions, counts).
        await self._dnc(campaign_id, jurisdiction, config, leads, results, local)
        return results

    async def _dnc(
        self,
        campaign_id: str,
        jurisdiction: str,
        config: Mapping[str, Any],
        leads: Sequence[GateLead],
        results: Sequence[GateResult],
        local: Sequence[LocalCheck],
    ) -> None:
        method, purpose = call_type_pb(config)
        req = dnc_pb2.CheckNumbersRequest(
            call_method=method,
            call_purpose=purpose,
            numbers=[lead.number for lead in leads],
            campaign_id=campaign_id,
            jurisdiction=jurisdiction_to_pb(jurisdiction),
            dial_time=True,
            call_ids=[lead.call_id for lead in leads],
            dialer=[dnc_pb2.DialerDecision(blocked=lc.blocked, inputs_json=lc.inputs_json()) for lc in local],
        )
        try:
            before = await dnc_changes.seen(self.redis)
        except (RedisError, OSError) as exc:
            log.warning(
                "DNC changes counter unreadable (%s): blocking %d calls", type(exc).__name__, len(leads)
            )
            _unavailable(results, "dnc: changes counter unreadable")
            return
        for r in results:
            r.dnc_seen = before
        try:
            resp = await self.dnc.CheckNumbers(req, timeout=self.dnc_timeout_s)
            decisions = list(resp.decisions)
        except (grpc.aio.AioRpcError, OSError, TimeoutError) as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            log.warning("DNC check failed (%s): blocking %d calls", code, len(leads))
            _unavailable(results, f"dnc: {code}")
            return
        if len(decisions) != len(leads):
            _unavailable(results, "dnc: answer count mismatch")
            return
        for lead, r, d in zip(leads, results, decisions, strict=True):
            if d.number != lead.number and d.number:
                _unavailable([r], "dnc: answer order mismatch")
                continue
            r.audit_seq = int(d.audit_seq)
            if not d.allowed:
                # the answer lists the dialer's own codes first, then the lists'
                codes = [b.code or "dnc.blocked" for b in d.reasons] or ["dnc.blocked"]
                r.reasons = r.reasons + [c for c in codes if c not in r.reasons]
                # the local decision's own words (the answer carries only its codes), then the lists'
                r.detail = "; ".join(x for x in (r.detail, *(b.detail for b in d.reasons)) if x)
                r.allowed = False
            elif not r.allowed:
                # a DNC service that does not know `dialer` yet (a rolling upgrade): still blocked, and said so
                r.detail = "; ".join(x for x in (r.detail, "dnc: the block is not in the audit record") if x)


def _campaign_block(
    config: Mapping[str, Any], jurisdiction: str
) -> tuple[WindowSpec | None, tuple[str, str] | None]:
    """The campaign's window, or why none of its calls may go out: (code, detail)."""
    if config.get("state") != "active":
        return None, ("campaign.not_active", f"the campaign is {config.get('state') or 'in no state'}")
    if config.get("dial_mode") == "agentless":
        why = agentless_refusal(jurisdiction, informational=bool(config.get("message_informational")))
        if why:
            return None, ("consent.agentless", why)
    if not str(config.get("caller_id") or "").strip():
        return None, ("caller_id.missing", "the campaign has no caller id")
    try:
        return window_from_json(config.get("calling_window") or {}), None
    except (ValueError, TypeError, KeyError) as exc:
        return None, ("window.invalid_config", str(exc))


def _unavailable(results: Sequence[GateResult], detail: str) -> None:
    """No usable DNC answer: block every number (one the local rules blocked keeps its own reasons)."""
    for r in results:
        if r.allowed or not r.reasons:
            r.reasons, r.detail = ["compliance.unavailable"], detail
        else:
            r.detail = "; ".join(x for x in (r.detail, detail) if x)
        r.allowed = False
