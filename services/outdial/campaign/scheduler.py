"""Scheduled start/end of campaigns with APScheduler 3 (AsyncIOScheduler, in-memory job store).

The jobs are rebuilt from PostgreSQL at every service start and whenever a campaign changes, so the
in-memory store loses nothing that matters; a run date in the past (the service was down) runs at once.
With several replicas each schedules the jobs; the transitions are idempotent-safe because a second
replica's move finds the campaign already moved and stops at the lifecycle check.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from outdial.campaign.model import CampaignRecord
from outdial.core.errors import FailedPrecondition

log = logging.getLogger("outdial.campaign.scheduler")

Move = Callable[[str, str], Awaitable[object]]


class CampaignScheduler:
    def __init__(self, move: Move) -> None:
        self.move = move
        self.scheduler = AsyncIOScheduler(timezone=UTC)

    def start(self) -> None:
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def every(self, job_id: str, interval_s: float, job: Callable[[], Awaitable[object]]) -> None:
        """A periodic job (the retention run): one instance at a time, missed runs coalesced into one."""
        self.scheduler.add_job(
            self._periodic,
            "interval",
            seconds=interval_s,
            args=(job_id, job),
            id=job_id,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
        )

    async def _periodic(self, job_id: str, job: Callable[[], Awaitable[object]]) -> None:
        try:
            await job()
        except Exception:
            log.exception("scheduled %s failed; it runs again at its next time", job_id)

    async def _run(self, cid: str, action: str) -> None:
        try:
            await self.move(cid, action)
            log.info("scheduled %s of campaign %s done", action, cid)
        except FailedPrecondition as exc:
            log.info("scheduled %s of campaign %s skipped: %s", action, cid, exc.message)
        except Exception:
            log.exception("scheduled %s of campaign %s failed", action, cid)

    def sync(self, rec: CampaignRecord) -> None:
        for action, when, states in (
            ("start", rec.scheduled_start, ("draft",)),
            ("complete", rec.scheduled_end, ("draft", "active", "paused")),
        ):
            job_id = f"{action}:{rec.id}"
            if when is None or rec.state not in states:
                if self.scheduler.get_job(job_id) is not None:
                    self.scheduler.remove_job(job_id)
                continue
            self.scheduler.add_job(
                self._run,
                "date",
                run_date=when,
                args=(rec.id, action),
                id=job_id,
                replace_existing=True,
                misfire_grace_time=None,
            )

    def job_ids(self) -> list[str]:
        return sorted(j.id for j in self.scheduler.get_jobs())
