"""Schedules are declared in code (``@job(cron=...)``) and upserted by name on migrate."""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from project.jobs import registry

logger = logging.getLogger("project.jobs")

SCHEDULED_FUNC = "project.jobs.runner.run_scheduled"


def schedules_sync() -> dict[str, int]:
    from croniter import croniter
    from django_q.models import Schedule

    declared = {job.name: job for job in registry.REGISTRY.values() if job.cron}
    created = updated = 0
    for name, job in declared.items():
        defaults = {
            "func": SCHEDULED_FUNC,
            "args": repr((name,)),
            "schedule_type": Schedule.CRON,
            "cron": job.cron,
            "repeats": -1,
        }
        existing = Schedule.objects.filter(name=name).first()
        if existing is None:
            Schedule.objects.create(
                name=name, next_run=croniter(job.cron, timezone.now()).get_next(type(timezone.now())), **defaults
            )
            created += 1
        elif any(getattr(existing, key) != value for key, value in defaults.items()):
            for key, value in defaults.items():
                setattr(existing, key, value)
            existing.next_run = croniter(job.cron, timezone.now()).get_next(type(timezone.now()))
            existing.save()
            updated += 1
    removed, _ = Schedule.objects.filter(func=SCHEDULED_FUNC).exclude(name__in=declared).delete()
    return {"created": created, "updated": updated, "removed": removed}


def schedules_sync_on_migrate(**kwargs: Any) -> None:
    result = schedules_sync()
    if kwargs.get("verbosity", 1) >= 1 and any(result.values()):
        print(f"  Schedules: {result['created']} created, {result['updated']} updated, {result['removed']} removed")
