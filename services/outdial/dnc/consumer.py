"""Consumer group "dnc" on the call-event stream: opt-outs and "do not call" dispositions go on the
internal list (belt and braces beside the RecordOptOut RPC); a "wrong_number" disposition revokes every
consent for the number, in every campaign (the person who answered is not the one who consented: issue 13,
point 5). Idempotent by event id."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import ResponseError

from outdial.core import keys
from outdial.core.redis import Redis
from outdial.dnc.engine import DncEngine
from outdial.dnc.gate import ListInfo

log = logging.getLogger("outdial.dnc.events")
GROUP = "dnc"
SEEN_TTL = 7 * 24 * 3600


def opt_out_of(fields: dict[str, str]) -> tuple[str, str] | None:
    """(number, source) when an event is an opt-out, else None."""
    t = fields.get("type", "")
    if t == "call.abandoned" and fields.get("opt_out") == "1":
        return fields.get("number", ""), "keypress"
    if t == "agent.disposition" and fields.get("disposition", "").lower() == "do_not_call":
        return fields.get("number", ""), "agent_disposition"
    return None


WRONG_NUMBER = "wrong_number"


def wrong_number_of(fields: dict[str, str]) -> str | None:
    """The number of a "wrong_number" disposition event, else None."""
    if fields.get("type") == "agent.disposition" and fields.get("disposition", "").lower() == WRONG_NUMBER:
        return fields.get("number", "")
    return None


async def apply_event(engine: DncEngine, redis: Redis, fields: dict[str, str]) -> bool:
    got = opt_out_of(fields)
    wrong = wrong_number_of(fields) if got is None else None
    if (got is None or not got[0]) and not wrong:
        return False
    event_id = fields.get("event_id", "")
    seen = keys.event_seen(GROUP, event_id) if event_id else None
    if seen is not None and await redis.exists(seen):
        return False
    if wrong:
        await _revoke_wrong_number(engine, wrong, fields)
        if seen is not None:
            await redis.set(seen, "1", ex=SEEN_TTL)
        return True
    assert got is not None
    number, source = got
    ok, _bad = engine.normalise_many([number])
    if ok:
        # The actor is what wrote the record (the event consumer, by kind of opt-out); the agent named in the
        # event is a reported detail, never the actor.
        reported = fields.get("agent_id", "")
        await engine.add(
            ListInfo("internal", "internal"),
            ok,
            actor=f"event:{source}",
            reason="opt-out",
            source=source,
            expires_at=None,
            action="opt_out",
            call_id=fields.get("call_id", ""),
            campaign_id=fields.get("campaign_id", ""),
            extra_details={"reported_agent_id": reported} if reported else None,
        )
    else:
        log.warning("opt-out event %s with an unreadable number", event_id)
    if seen is not None:
        await redis.set(seen, "1", ex=SEEN_TTL)
    return True


async def _revoke_wrong_number(engine: DncEngine, number: str, fields: dict[str, str]) -> None:
    ok, _bad = engine.normalise_many([number])
    if not ok:
        log.warning("wrong_number event %s with an unreadable number", fields.get("event_id", ""))
        return
    # As for opt-outs: the actor is what wrote the record (this consumer, by kind of event); the agent who
    # set the disposition is a reported detail from the event, never the actor.
    reported = fields.get("agent_id", "")
    await engine.revoke_all_consent(
        ok[0],
        actor=f"event:{WRONG_NUMBER}",
        reason=WRONG_NUMBER,
        campaign_id=fields.get("campaign_id", ""),
        call_id=fields.get("call_id", ""),
        extra_details={
            "source": "agent_disposition",
            "event_id": fields.get("event_id", ""),
            **({"reported_agent_id": reported} if reported else {}),
        },
    )


async def run(engine: DncEngine, redis: Redis, consumer: str, ready: asyncio.Event) -> None:
    await ready.wait()
    stream = keys.call_events()
    created = False
    delay = 0.5
    while True:
        try:
            if not created:
                try:
                    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                created = True
                # first our own pending entries (delivered before a crash), then new ones
                await _drain(engine, redis, stream, consumer, "0")
            await _drain(engine, redis, stream, consumer, ">")
            delay = 0.5
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("call-event reader: %s; retrying in %.1fs", type(exc).__name__, delay)
            created = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _drain(engine: DncEngine, redis: Redis, stream: str, consumer: str, start: str) -> None:
    resp: Any = await redis.xreadgroup(GROUP, consumer, {stream: start}, count=200, block=2000)
    for _name, entries in resp or []:
        for event_id, fields in entries:
            if fields:
                await apply_event(engine, redis, fields)
            await redis.xack(stream, GROUP, event_id)
