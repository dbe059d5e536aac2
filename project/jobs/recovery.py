"""Services that keep runs moving when workers or messages are lost, and prune old runs."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from project.errors import Conflict
from project.jobs import registry
from project.jobs.models import ClusterHeartbeat, JobRun
from project.jobs.queue import runs_push
from project.jobs.runner import _finish_failed, run_retry

logger = logging.getLogger("project.jobs")

WORKER_LOST = "worker_lost"


def run_recover_lost(*, run_id: int) -> str | None:
    """Move on one run whose worker stopped proving it is alive: retry it under its policy,
    or fail it (running its job's failure hook) when no attempts are left."""
    threshold = timezone.now() - timedelta(seconds=settings.JOBS_LOST_AFTER)
    with transaction.atomic():
        run = (
            JobRun.objects.select_for_update(skip_locked=True)
            .filter(pk=run_id, status=JobRun.Status.RUNNING, heartbeat_at__lt=threshold)
            .first()
        )
        if run is None:
            return None
        job = registry.get(run.name)
        message = f"worker {run.worker or '?'} stopped during attempt {run.attempt}"
        delay = job.retry.delay_after(run.attempt) if job else None
        if delay is not None:
            run_retry(run, delay=delay, code=WORKER_LOST, message=message)
            outcome = "retried"
        else:
            _finish_failed(run, job, WORKER_LOST, message, "")
            outcome = "failed"
    logger.warning("lost run recovered: %s", outcome, extra={"job": run.name, "run_id": run.pk, "attempt": run.attempt})
    return outcome


def runs_recover(*, limit: int = 500) -> dict[str, int]:
    """Recover lost runs and re-send messages of runs that waited too long for theirs."""
    now = timezone.now()
    lost_ids = list(
        JobRun.objects.filter(
            status=JobRun.Status.RUNNING, heartbeat_at__lt=now - timedelta(seconds=settings.JOBS_LOST_AFTER)
        ).values_list("pk", flat=True)[:limit]
    )
    outcomes = [run_recover_lost(run_id=run_id) for run_id in lost_ids]
    late = now - timedelta(seconds=settings.JOBS_REPUSH_AFTER)
    with transaction.atomic():
        stale = list(
            JobRun.objects.select_for_update(skip_locked=True).filter(
                status=JobRun.Status.QUEUED, due_at__lt=late, pushed_at__lt=late
            )[:limit]
        )
        if stale:
            JobRun.objects.filter(pk__in=[run.pk for run in stale]).update(pushed_at=now)
            # A message may still exist; a duplicate finds nothing to claim and is dropped.
            transaction.on_commit(lambda: runs_push(runs=stale, due=now), robust=True)
    ClusterHeartbeat.objects.filter(last_seen__lt=now - timedelta(days=1)).delete()
    result = {
        "lost_retried": outcomes.count("retried"),
        "lost_failed": outcomes.count("failed"),
        "repushed": len(stale),
    }
    if any(result.values()):
        logger.warning("recovery sweep moved runs on", extra=result)
    return result


def runs_prune(*, older_than_days: int | None = None, batch_size: int = 5000) -> int:
    """Delete finished runs older than the retention, in batches (short locks)."""
    days = older_than_days or settings.JOBS_RUN_RETENTION_DAYS
    cutoff = timezone.now() - timedelta(days=days)
    finished = JobRun.objects.filter(status__in=[JobRun.Status.SUCCEEDED, JobRun.Status.FAILED], finished_at__lt=cutoff)
    deleted = 0
    while True:
        ids = list(finished.values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        deleted += JobRun.objects.filter(pk__in=ids).delete()[0]


def run_requeue(*, run_id: int) -> JobRun:
    """Run a finished run again as a new run with the same arguments (admin "run again")."""
    run = JobRun.objects.get(pk=run_id)
    job = registry.get(run.name)
    if job is None:
        raise Conflict(f"no job is registered as {run.name!r}", code="unknown_job")
    return job.enqueue(**run.kwargs)


def run_mark_failed(*, run_id: int, reason: str) -> bool:
    """Fail a queued or running run by hand; its job's failure hook runs."""
    with transaction.atomic():
        run = (
            JobRun.objects.select_for_update()
            .filter(pk=run_id, status__in=[JobRun.Status.QUEUED, JobRun.Status.RUNNING])
            .first()
        )
        if run is None:
            return False
        return _finish_failed(
            run, registry.get(run.name), "cancelled", reason, "", statuses=(JobRun.Status.QUEUED, JobRun.Status.RUNNING)
        )
