"""The scheduled upkeep of exports (GitLab's StuckExportJobsWorker, the export cleanup
and PruneProjectExportJobsWorker): stuck jobs are failed, old archives and leftovers of
killed workers are deleted, and old job rows are pruned in batches."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import cast

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from exports import services
from exports.models import ProjectExportArchive, ProjectExportJob
from project.db import rows_delete_in_batches
from project.jobs import JobRun

logger = logging.getLogger(__name__)

Status = ProjectExportJob.Status


SWEEP = "the stuck-export sweep"


def export_jobs_fail_stuck() -> dict[str, int]:
    """Fail the queued and started jobs nothing will move on any more (GitLab's
    StuckExportJobsWorker):

    * older than the EXPORT_MAX_AGE budget (6 h), whatever their state: their run is
      cancelled too, so a worker still on it stops;
    * whose job run ended (or was pruned) without taking the job along.

    A worker that died mid-export needs nothing here: the job toolkit notices its
    silent heartbeat and retries or fails the run, and the run's failure hook fails the job.
    """
    now = timezone.now()
    budget = now - timedelta(seconds=settings.EXPORT_MAX_AGE)
    active = ProjectExportJob.objects.filter(status__in=ProjectExportJob.ACTIVE)
    hours = settings.EXPORT_MAX_AGE / 3600
    groups = {
        "over_budget": (
            active.filter(created_at__lt=budget),
            "export_expired",
            f"The export did not finish within its {hours:g} h budget.",
        ),
        "run_ended": (
            active.filter(created_at__gte=budget).filter(
                Q(job_run__isnull=True) | Q(job_run__status__in=JobRun.TERMINAL)
            ),
            "run_ended",
            "The export's job run ended without finishing it.",
        ),
    }
    result = {}
    for key, (queryset, code, message) in groups.items():
        failed = 0
        for job_id in list(queryset.values_list("pk", flat=True)):
            if services.export_job_fail(export_job_id=job_id, code=code, error=message):
                services.export_run_cancel(export_job_id=job_id, reason=SWEEP)
                failed += 1
        result[key] = failed
    result["workdirs_removed"] = workdirs_cleanup()
    if result["over_budget"] or result["run_ended"]:
        logger.warning("stuck export jobs failed", extra=result)
    return result


def workdirs_cleanup() -> int:
    """Delete the scratch directories of jobs that are no longer running (a killed worker
    leaves its half-written archive there), and any older than the export budget."""
    root = services.workdir_root()
    if not root.is_dir():
        return 0
    too_old = time.time() - settings.EXPORT_MAX_AGE
    paths = list(root.iterdir())
    ids: dict[Path, int | None] = {}  # scratch directory: the export job it belongs to
    for path in paths:
        try:
            ids[path] = int(path.name.split("-")[1])
        except (IndexError, ValueError):
            ids[path] = None
    running = set(
        ProjectExportJob.objects.filter(
            pk__in=[pk for pk in ids.values() if pk is not None], status__in=ProjectExportJob.ACTIVE
        ).values_list("pk", flat=True)
    )
    removed = 0
    for path, job_id in ids.items():
        try:
            old = path.stat().st_mtime < too_old
        except FileNotFoundError:
            continue
        if job_id in running and not old:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def export_archives_cleanup() -> dict[str, int]:
    """Delete archives past their expiry (EXPORT_ARCHIVE_TTL, 24 h), archive files no row
    refers to, and scratch directories left by killed workers."""
    now = timezone.now()
    deleted = freed = 0
    removed_names: set[str] = set()
    for archive_id in list(ProjectExportArchive.objects.filter(expires_at__lte=now).values_list("pk", flat=True)):
        with transaction.atomic():
            archive = (
                ProjectExportArchive.objects.select_for_update(skip_locked=True)
                .filter(pk=archive_id, expires_at__lte=now)
                .first()
            )
            if archive is None:
                continue  # replaced by a new export meanwhile, or being replaced now
            name, size = cast(str, archive.file.name), archive.size  # a saved archive has a file
            archive.delete()
            # (mypy cannot infer a lambda with a default argument, here binding this loop's name.)
            transaction.on_commit(lambda name=name: services.storage_delete(name), robust=True)  # type: ignore[misc]
        removed_names.add(name)
        deleted += 1
        freed += size
    result = {
        "archives_deleted": deleted,
        "bytes_freed": freed,
        "orphans_deleted": _orphans_delete(now, skip=removed_names),
        "workdirs_removed": workdirs_cleanup(),
    }
    if any(result.values()):
        logger.info("export archives cleaned up", extra=result)
    return result


def _orphans_delete(now, *, skip: set[str]) -> int:
    """Files under exports/ that no archive row names: left when a worker died between
    moving a file into place and committing, or before deleting a replaced file."""
    storage = default_storage
    try:
        projects, _ = storage.listdir("exports")
    except (FileNotFoundError, NotImplementedError):
        return 0
    known = set(ProjectExportArchive.objects.values_list("file", flat=True)) | skip
    deleted = 0
    for project_dir in projects:
        users, _ = storage.listdir(f"exports/{project_dir}")
        for user_dir in users:
            _, files = storage.listdir(f"exports/{project_dir}/{user_dir}")
            for filename in files:
                name = f"exports/{project_dir}/{user_dir}/{filename}"
                if name in known:
                    continue
                try:
                    modified = storage.get_modified_time(name)
                except (OSError, NotImplementedError):
                    continue
                # Younger files may be mid-publish (moved into place, not yet committed).
                if now - modified > timedelta(seconds=settings.EXPORT_ORPHAN_GRACE):
                    services.storage_delete(name)
                    deleted += 1
    return deleted


def export_jobs_prune(*, batch_size: int | None = None) -> int:
    """Delete finished and failed jobs not updated for EXPORT_JOB_RETENTION_DAYS, in
    batches so that no statement holds locks for long (GitLab's prune_expired_jobs)."""
    size = batch_size or settings.EXPORT_PRUNE_BATCH_SIZE
    cutoff = timezone.now() - timedelta(days=settings.EXPORT_JOB_RETENTION_DAYS)
    prunable = ProjectExportJob.objects.filter(updated_at__lt=cutoff, status__in=ProjectExportJob.TERMINAL)
    deleted = rows_delete_in_batches(prunable, batch_size=size)
    if deleted:
        logger.info("export jobs pruned", extra={"deleted": deleted})
    return deleted
