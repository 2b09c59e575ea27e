"""Retention of call detail records: the period the campaign service keeps them, and the scheduled job that
removes older ones (through the database's ``retention_prune``, migration 0118). The domain part is pure.

The period is the rules table's (kind ``retention``, rules/data/*.yaml): each jurisdiction's own minimum
(US 5 years), unless ``OUTDIAL_CAMPAIGN_RETENTION_YEARS`` sets one period for all. It is configurable upward
only: a setting below any jurisdiction's minimum is refused at start, naming the setting. The database keeps each
jurisdiction's own minimum whatever the service asks (``retention_policy``, written by ``outdial db migrate``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date

from outdial.core.config import StartupRefused
from outdial.rules.table import Tables

log = logging.getLogger("outdial.campaign.retention")

SETTING = "OUTDIAL_CAMPAIGN_RETENTION_YEARS"


def legal_floors(tables: Tables, day: date) -> dict[str, int]:
    """Each jurisdiction's call-record retention minimum in force on ``day`` (years). None at all: refused
    (fail closed: nothing would bound a run)."""
    floors: dict[str, int] = {}
    for j in tables.jurisdictions():
        years = tables.in_force(j, "", day).retention_years()
        if years is not None:
            floors[j] = years
    if not floors:
        raise StartupRefused(
            "the rules table sets no call-record retention (kind retention): none can be kept"
        )
    return floors


def retention_years(configured: int | None, tables: Tables, day: date) -> int | None:
    """The period set for every jurisdiction, or None: each jurisdiction's own minimum (US: 5 years). A
    setting below any jurisdiction's minimum is refused, naming the setting: retention is set upward only."""
    floors = legal_floors(tables, day)
    if configured is None:
        return None
    below = {j: y for j, y in floors.items() if configured < y}
    if below:
        j, y = max(below.items(), key=lambda kv: kv[1])
        raise StartupRefused(
            f"{SETTING}={configured} is below the legal minimum of {y} years for {j} "
            f"({tables.file_name(j)}): retention can only be set upward"
        )
    return configured


def years_asked(configured: int | None, tables: Tables, day: date) -> int:
    """What the job asks the database for: the setting, or the smallest minimum (the database then keeps
    each jurisdiction's own, which is at least that)."""
    return configured if configured is not None else min(legal_floors(tables, day).values())


@dataclass
class RunResult:
    run_ids: list[int] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)
    floors: dict[str, int] = field(default_factory=dict)

    def add(self, run_id: int, removed: dict[str, int], floors: dict[str, int]) -> int:
        self.run_ids.append(run_id)
        for k, v in removed.items():
            self.removed[k] = self.removed.get(k, 0) + int(v)
        self.floors = {k: int(v) for k, v in floors.items()}
        return sum(int(v) for v in removed.values())


Prune = Callable[[int, bool, str, int], Awaitable[tuple[int, dict[str, int], dict[str, int]]]]


async def run(
    prune: Prune, years: int, *, dry_run: bool, actor: str, batch: int, max_batches: int
) -> RunResult:
    """Remove in batches of ``batch`` calls (each a transaction of its own, each recorded in retention_runs)
    until a batch removes nothing or ``max_batches`` ran; a dry run counts one batch."""
    out = RunResult()
    for _ in range(1 if dry_run else max_batches):
        run_id, removed, floors = await prune(years, dry_run, actor, batch)
        if out.add(run_id, removed, floors) < batch:
            break
    log.info("retention run%s by %s (%d years): %s", " (dry)" if dry_run else "", actor, years, out.removed)
    return out
