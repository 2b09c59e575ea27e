"""The dialer's dial-time gate: every call passes it right before origination, whatever path it came by.

Local checks first (campaign state, an agentless campaign the law does not let run without a consent check
(:func:`outdial.rules.law.agentless_refusal`), caller id, calling window at the lead's zones, rolling 24 h attempt cap,
the UK 72-hour rule after an abandoned call), then the DNC service's audited ``CheckNumbers`` with
``dial_time=true`` for the numbers still allowed. It fails closed: an RPC error, a missing answer or a
malformed config is a block, with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from outdial.core import keys
from outdial.core.jurisdictions import jurisdiction_to_pb
from outdial.core.redis import Redis
from outdial.rules.caps import DAY, check_attempts, check_uk_abandon_rule, default_max_calls_24h
from outdial.rules.law import agentless_refusal
from outdial.rules.windows import check_window, window_from_json
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


@dataclass
class GateResult:
    allowed: bool
    reasons: list[str] = field(default_factory=list)
    detail: str = ""
    audit_seq: int = 0


def _max_per_24h(config: Mapping[str, Any], jurisdiction: str, state: str, now: datetime) -> int | None:
    law = default_max_calls_24h(jurisdiction, state or None, now.astimezone(UTC).date())
    own = config.get("max_calls_per_number_24h")
    own_i = int(own) if isinstance(own, int | float) and own > 0 else None
    if law is None:
        return own_i
    return law if own_i is None else min(law, own_i)


class DialGate:
    def __init__(self, redis: Redis, dnc: dnc_pb2_grpc.DncServiceStub, *, dnc_timeout_s: float = 2.0) -> None:
        self.redis = redis
        self.dnc = dnc
        self.dnc_timeout_s = dnc_timeout_s

    async def check(  # noqa: C901 - one check per rule, in order
        self, campaign_id: str, config: Mapping[str, Any], leads: Sequence[GateLead], now: datetime
    ) -> list[GateResult]:
        results = [GateResult(True) for _ in leads]
        if not leads:
            return results
        jurisdiction = str(config.get("jurisdiction") or "US").upper()
        if config.get("state") != "active":
            for r in results:
                r.allowed, r.reasons = False, ["campaign.not_active"]
            return results
        if config.get("dial_mode") == "agentless":
            why = agentless_refusal(jurisdiction, informational=bool(config.get("message_informational")))
            if why:
                for r in results:
                    r.allowed, r.reasons, r.detail = False, ["consent.agentless"], why
                return results
        if not str(config.get("caller_id") or "").strip():
            for r in results:
                r.allowed, r.reasons = False, ["caller_id.missing"]
            return results
        try:
            spec = window_from_json(config.get("calling_window") or {})
        except (ValueError, TypeError, KeyError) as exc:
            for r in results:
                r.allowed, r.reasons, r.detail = False, ["window.invalid_config"], str(exc)
            return results

        now_ms = int(now.timestamp() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for lead in leads:
            pipe.zrangebyscore(keys.number_attempts(lead.number), now_ms - _DAY_MS, "+inf", withscores=True)
            pipe.get(keys.number_abandoned(lead.number))
        raw = await pipe.execute()

        for i, (lead, r) in enumerate(zip(leads, results, strict=True)):
            if not lead.number:
                r.reasons.append("number.missing")
            win = check_window(now, lead.timezones, spec, jurisdiction=jurisdiction, state=lead.state or None)
            if not win.allowed:
                r.reasons.append(f"window.{win.reason}")
            attempts_ms = raw[2 * i] or []
            times = [datetime.fromtimestamp(float(score) / 1000, UTC) for _m, score in attempts_ms]
            cap = check_attempts(times, now, _max_per_24h(config, jurisdiction, lead.state, now))
            if not cap.allowed:
                r.reasons.append(f"cap.{cap.reason}")
            if jurisdiction == "UK":
                last = raw[2 * i + 1]
                last_at = datetime.fromtimestamp(int(last) / 1000, UTC) if last else None
                uk = check_uk_abandon_rule(last_at, now)
                if not uk.allowed:
                    r.reasons.append(f"cap.{uk.reason}")
            r.allowed = not r.reasons

        todo = [i for i, r in enumerate(results) if r.allowed]
        if todo:
            await self._dnc(campaign_id, jurisdiction, [leads[i] for i in todo], [results[i] for i in todo])
        return results

    async def _dnc(
        self, campaign_id: str, jurisdiction: str, leads: Sequence[GateLead], results: Sequence[GateResult]
    ) -> None:
        req = dnc_pb2.CheckNumbersRequest(
            numbers=[lead.number for lead in leads],
            campaign_id=campaign_id,
            jurisdiction=jurisdiction_to_pb(jurisdiction),
            dial_time=True,
            call_ids=[lead.call_id for lead in leads],
        )
        try:
            resp = await self.dnc.CheckNumbers(req, timeout=self.dnc_timeout_s)
            decisions = list(resp.decisions)
        except (grpc.aio.AioRpcError, OSError, TimeoutError) as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            log.warning("DNC check failed (%s): blocking %d calls", code, len(leads))
            for r in results:
                r.allowed, r.reasons, r.detail = False, ["compliance.unavailable"], f"dnc: {code}"
            return
        if len(decisions) != len(leads):
            for r in results:
                r.allowed, r.reasons, r.detail = (
                    False,
                    ["compliance.unavailable"],
                    "dnc: answer count mismatch",
                )
            return
        for lead, r, d in zip(leads, results, decisions, strict=True):
            if d.number != lead.number and d.number:
                r.allowed, r.reasons, r.detail = (
                    False,
                    ["compliance.unavailable"],
                    "dnc: answer order mismatch",
                )
                continue
            r.audit_seq = int(d.audit_seq)
            if not d.allowed:
                r.allowed = False
                r.reasons = [b.code or "dnc.blocked" for b in d.reasons] or ["dnc.blocked"]
                r.detail = "; ".join(b.detail for b in d.reasons if b.detail)
