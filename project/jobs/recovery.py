"""Services that keep runs moving when workers or messages are lost, and prune old runs."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from project.db import rows_delete_in_batches
from project.jobs import declared, transitions
from project.jobs.models import ClusterHeartbeat, JobPause, JobRun

logger = logging.getLogger("project.jobs")

WORKER_LOST = "worker_lost"
Status = JobRun.Status


def run_recover_lost(*, run_id: int) -> str | None:
    """Move on one run whose worker stopped proving it is alive: retry it under its policy,
    or fail it (running its job's failure hook) when no attempts are left. A run an
    operator asked to cancel ends cancelled instead."""
    with transaction.atomic():
        run = JobRun.objects.select_for_update(skip_locked=True).filter(pk=run_id, status=Status.RUNNING).first()
        if run is None or (
            run.heartbeat_at is not None
            and run.heartbeat_at >= timezone.now() - timedelta(seconds=declared.lost_after_seconds(run.name))
        ):
            return None
        job = declared.get(run.name)
        message = f"worker {run.worker or '?'} stopped during attempt {run.attempt}"
        delay = job.retry.delay_after(run.attempt) if job else None
        if run.cancel_requested_at is not None:
            reason = f"cancelled by {run.cancel_requested_by or 'an operator'}; {message}"
            transitions.finish(run, job, status=Status.CANCELLED, code="cancelled", message=reason)
            outcome = "cancelled"
        elif delay is not None:
            transitions.retry(run, delay=delay, code=WORKER_LOST, message=message)
            outcome = "retried"
        else:
            transitions.finish(run, job, status=Status.FAILED, code=WORKER_LOST, message=message)
            outcome = "failed"
    logger.warning("lost run recovered: %s", outcome, extra={"job": run.name, "run_id": run.pk, "attempt": run.attempt})
    return outcome


def runs_recover(*, limit: int = 500) -> dict[str, int]:
    """Recover lost runs, re-send messages of runs that waited too long for theirs, and
    forget clusters that have been silent for JOBS_CLUSTER_PRUNE_AFTER."""
    now = timezone.now()
    thresholds = [job.lost_after_seconds for job in declared.REGISTRY.values()] + [settings.JOBS_LOST_AFTER]
    lost_ids = list(
        JobRun.objects.filter(
            status=Status.RUNNING, heartbeat_at__lt=now - timedelta(seconds=min(thresholds))
        ).values_list("pk", flat=True)[:limit]
    )
    outcomes = [run_recover_lost(run_id=run_id) for run_id in lost_ids]
    late = now - timedelta(seconds=settings.JOBS_REPUSH_AFTER)
    with transaction.atomic():
        stale = list(
            JobRun.objects.select_for_update(skip_locked=True)
            .filter(status=Status.QUEUED, due_at__lt=late, pushed_at__lt=late)
            # A paused job's runs wait for the resume, which sends them again.
            .exclude(name__in=JobPause.objects.values("name"))[:limit]
        )
        transitions.repush(stale)
    pruned, _ = ClusterHeartbeat.objects.filter(
        last_seen__lt=now - timedelta(seconds=settings.JOBS_CLUSTER_PRUNE_AFTER)
    ).delete()
    result = {
        "lost_retried": outcomes.count("retried"),
        "lost_failed": outcomes.count("failed"),
        "lost_cancelled": outcomes.count("cancelled"),
        "repushed": len(stale),
        "clusters_pruned": pruned,
    }
    if any(result.values()):
        logger.warning("recovery sweep moved runs on", extra=result)
    return result


def runs_prune(*, older_than_days: int | None = None, batch_size: int = 5000) -> int:
    """Delete finished runs older than the retention, in batches (short locks)."""
    days = older_than_days or settings.JOBS_RUN_RETENTION_DAYS
    cutoff = timezone.now() - timedelta(days=days)
    finished = JobRun.objects.filter(status__in=JobRun.TERMINAL, finished_at__lt=cutoff)
    return rows_delete_in_batches(finished, batch_size=batch_size)
