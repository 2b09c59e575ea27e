"""No dial of a number listed between the dial-time check and the dial.

The dialer checks a number (``CheckNumbers``), then records the call and dials it some milliseconds later.
A listing (``AddNumbers``, an opt-out, an inbound STOP) or a consent revocation recorded in between would
be dialled. So the two sides meet in Redis:

- the DNC service, **before** it records a listing or a revocation, puts additions into its lookup index,
  then increments :func:`~outdial.core.keys.dnc_changes` and marks each number with the new value;
- the dialer reads the counter **before** its check (:func:`seen`), and at the dial (after taking the dial
  time) asks :func:`changed_since`: a number marked after the check is not dialled (the lead goes back to
  the hopper; its next check finds it listed).

Ordering: a change recorded at or before the dial time was marked before that time, so the dialer's read
sees the mark; a change whose index update came before the check is found by the check itself. A counter
that went backwards (Redis lost its data) counts as a change: fail closed.
"""

from __future__ import annotations

from collections.abc import Sequence

from outdial.core import keys
from outdial.core.redis import Redis

#: How long a number's mark lives: far longer than any check-to-dial gap.
MARK_TTL_S = 600


async def mark_changed(redis: Redis, numbers: Sequence[str]) -> int:
    """Count one change and mark ``numbers`` with it. Call it before the change is recorded."""
    value = int(await redis.incr(keys.dnc_changes()))
    if numbers:
        pipe = redis.pipeline(transaction=False)
        for n in numbers:
            pipe.set(keys.dnc_changed(n), value, ex=MARK_TTL_S)
        await pipe.execute()
    return value


async def seen(redis: Redis) -> int:
    """The counter now (0 when there is none yet). Read it before the check."""
    return int(await redis.get(keys.dnc_changes()) or 0)


async def changed_since(redis: Redis, number: str, before: int) -> bool:
    """Was ``number`` listed or its consent revoked after the counter read ``before``? True as well when the
    counter went backwards (Redis lost its data): the caller does not dial."""
    pipe = redis.pipeline(transaction=False)
    pipe.get(keys.dnc_changes())
    pipe.get(keys.dnc_changed(number))
    now, mark = await pipe.execute()
    return int(now or 0) < before or int(mark or 0) > before
