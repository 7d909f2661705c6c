"""Scheduled jobs: every one runs alone, missed runs coalesce, and a store or Redis outage is one warning.

APScheduler logs a job's exception with its traceback; a planned restart of PostgreSQL or
Redis is not a bug, so those faults are recorded (core/faults.py) and the job simply runs
again at its next tick. Anything else still reaches APScheduler's log with its traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from core.faults import FAULTS, fault_component


def every(scheduler: AsyncIOScheduler, seconds: float, job_id: str, job: Callable[[], Awaitable[Any]]) -> None:
    """Run `job` every `seconds` (one instance at a time; runs missed while busy coalesce into one)."""

    async def run() -> None:
        try:
            await job()
        except Exception as exc:
            component = fault_component(exc)
            if component is None:
                raise
            FAULTS.seen(component, f"job.{job_id}", exc, retry=f"next run in {seconds:g}s")

    scheduler.add_job(run, "interval", seconds=seconds, id=job_id, max_instances=1, coalesce=True,
                      misfire_grace_time=None)
