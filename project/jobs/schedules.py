"""Schedules are declared in code (``@job(cron=...)``) and upserted by name on migrate."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.utils import timezone

from project.jobs import declared, djangoq

logger = logging.getLogger("project.jobs")

SCHEDULED_FUNC = djangoq.SCHEDULED_FUNC


def schedules_sync() -> dict[str, int]:
    """Upsert django-q2's schedule rows from the jobs declared with a ``cron``."""
    from croniter import croniter

    def next_run(cron: str) -> dt.datetime:
        now = timezone.now()
        when: dt.datetime = croniter(cron, now).get_next(type(now))
        return when

    declared_crons = {job.name: (job.cron, job.timeout_seconds) for job in declared.REGISTRY.values() if job.cron}
    return djangoq.schedules_upsert(declared_crons, next_run=next_run)


def schedules_sync_on_migrate(**kwargs: Any) -> None:
    result = schedules_sync()
    if kwargs.get("verbosity", 1) >= 1 and any(result.values()):
        print(f"  Schedules: {result['created']} created, {result['updated']} updated, {result['removed']} removed")
