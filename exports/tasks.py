"""Job entry points of exports: thin doors into ``exports.services`` and ``exports.maintenance``."""

from __future__ import annotations

from django.conf import settings

from exports import maintenance, services
from exports.importer import services as importer
from project.jobs import JobRun, RetryPolicy, Target, job


def _export_failed(run: JobRun, code: str, message: str) -> None:
    services.export_run_failed(export_job_id=run.kwargs.get("export_job_id"), code=code, message=message, run_id=run.pk)


def _export_rerun(run: JobRun, by: str) -> JobRun:
    # Running the same export job again would find it finished and skip: a re-run is a new
    # export of the same project for the same user.
    new = services.export_job_retry(export_job_id=run.kwargs["export_job_id"])
    assert new.job_run is not None  # export_request enqueues the new job's run
    return new.job_run


@job(
    "exports.run",
    retry=RetryPolicy(setting="EXPORT_RETRY_DELAYS"),
    timeout="EXPORT_JOB_TIMEOUT",
    on_failure=_export_failed,
    rerun=_export_rerun,
    target=Target("exports.ProjectExportJob", "export_job_id"),
    lost_after="EXPORT_STUCK_AFTER",
)
def run_export(*, export_job_id: int) -> dict:
    """Write a project's export archive (and upload it when asked)."""
    return services.export_run(export_job_id=export_job_id)


@job("exports.fail_stuck", cron=settings.EXPORT_STUCK_SWEEP_CRON, timeout=600)
def fail_stuck() -> dict:
    """Fail export jobs over the 6 h budget, or whose run ended without them."""
    return maintenance.export_jobs_fail_stuck()


@job("exports.cleanup_archives", cron=settings.EXPORT_CLEANUP_CRON, timeout=900)
def cleanup_archives() -> dict:
    """Delete expired export archives, orphaned files and scratch directories."""
    return maintenance.export_archives_cleanup()


@job("exports.prune_jobs", cron=settings.EXPORT_PRUNE_CRON, timeout=900)
def prune_jobs() -> dict:
    """Delete export jobs not updated for the retention period, in batches."""
    return {"deleted": maintenance.export_jobs_prune()}


def _import_failed(run: JobRun, code: str, message: str) -> None:
    importer.import_run_failed(import_job_id=run.kwargs.get("import_job_id"), code=code, message=message, run_id=run.pk)


@job(
    "exports.import",
    retry=RetryPolicy(setting="IMPORT_RETRY_DELAYS"),
    timeout="IMPORT_JOB_TIMEOUT",
    on_failure=_import_failed,
    target=Target("exports.ProjectImportJob", "import_job_id"),
    lost_after="IMPORT_STUCK_AFTER",
)
def run_import(*, import_job_id: int) -> dict:
    """Import a GitLab export archive into its project."""
    return importer.import_run(import_job_id=import_job_id)
