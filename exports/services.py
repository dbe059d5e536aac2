"""Business logic of project exports: requests, running an export, publishing its archive,
and the admin's actions on jobs and archives.

What the API reads on every request (the caller's access, the status they see) is in
``exports.status``; the schedules that keep jobs and files from piling up or getting stuck are in
``exports.maintenance``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from exports import archive as archive_writer
from exports import clients, metrics, relations
from exports.models import MAX_ERROR_LENGTH, ProjectExportArchive, ProjectExportJob
from project import locks
from project.errors import Conflict, NotFound, RetryableError, ValidationFailed
from project.jobs import Defer, JobRun, control, report_progress
from project.models import Project, User

logger = logging.getLogger(__name__)

Status = ProjectExportJob.Status
MAX_DESCRIPTION_LENGTH = 5000
# One cluster-wide lock serialises the "may this export start?" decisions.
GATE_LOCK = "exports.concurrency_gate"
LIVE_RUN_STATUSES = (JobRun.Status.QUEUED, JobRun.Status.RUNNING)

NOT_FOUND_OR_EXPIRED = "404 Not found or has expired"
FILE_NOT_AVAILABLE = "The project export file is not available yet"


class ExportStorageError(RetryableError):
    code = "storage_error"


# --- status transitions -----------------------------------------------------------------


def _transition(export_job_id: int, *, from_: tuple[str, ...], to: str, **fields: Any) -> bool:
    """One conditional UPDATE. False (and nothing changed) when the job is not in ``from_``."""
    now = timezone.now()
    fields.setdefault("updated_at", now)
    if to in ProjectExportJob.TERMINAL:
        fields.setdefault("finished_at", now)
    changed = ProjectExportJob.objects.filter(pk=export_job_id, status__in=from_).update(status=to, **fields)
    if not changed:
        current = ProjectExportJob.objects.filter(pk=export_job_id).values_list("status", flat=True).first()
        logger.info(
            "export job transition refused",
            extra={"export_job_id": export_job_id, "to": to, "status": current or "missing"},
        )
    return bool(changed)


def export_job_start(*, export_job_id: int) -> bool:
    """queued → started."""
    return _transition(export_job_id, from_=(Status.QUEUED,), to=Status.STARTED, started_at=timezone.now())


def export_job_finish(*, export_job_id: int, **fields: Any) -> bool:
    """started → finished."""
    return _transition(export_job_id, from_=(Status.STARTED,), to=Status.FINISHED, **fields)


def error_sanitize(code: str, message: str) -> str:
    """One short line: no control characters, at most 300 characters."""
    text = message or code.replace("_", " ")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 1] + "…"
    return text


def export_job_fail(*, export_job_id: int, code: str, error: str) -> bool:
    """queued or started → failed, with a sanitized error."""
    failed = _transition(
        export_job_id,
        from_=ProjectExportJob.ACTIVE,
        to=Status.FAILED,
        error_code=code[:64],
        error=error_sanitize(code, error),
    )
    if failed:
        metrics.EXPORTS_COMPLETED.labels(outcome="failed").inc()
        logger.warning("project export failed", extra={"export_job_id": export_job_id, "error_code": code})
    return failed


# --- requesting an export ---------------------------------------------------------------


def export_request(
    *,
    project: Project,
    user: User,
    description: str | None = None,
    upload_url: str = "",
    upload_method: str = "",
) -> ProjectExportJob:
    """Queue an export of ``project`` for ``user``.

    The user's current archive stays downloadable until the new one replaces it (the
    status says regeneration_in_progress meanwhile), and stays if the new export fails.
    """
    if description is not None and len(description) > MAX_DESCRIPTION_LENGTH:
        raise ValidationFailed(f"description is too long (maximum is {MAX_DESCRIPTION_LENGTH} characters)")
    method = ""
    if upload_url:
        clients.upload_target_resolve(upload_url)
        method = clients.upload_method_clean(upload_method)
    from exports import tasks

    with transaction.atomic():
        now = timezone.now()
        job = ProjectExportJob.objects.create(
            project=project,
            user=user,
            exported_by_admin=user.is_admin,
            description=description,
            upload_url=upload_url,
            upload_method=method,
            relations_total=len(relations.TREE),
            created_at=now,
            updated_at=now,
        )
        job.job_run = tasks.run_export.enqueue(export_job_id=job.pk)
        job.save(update_fields=["job_run"])
    metrics.EXPORTS_REQUESTED.inc()
    logger.info(
        "project export requested",
        extra={
            "export_job_id": job.pk,
            "project_id": project.pk,
            "user_id": user.pk,
            "exported_by_admin": job.exported_by_admin,
            "upload": bool(upload_url),
        },
    )
    return job


EXPORT_TOO_LARGE = "The project size exceeds the export limit."
#: What the archive's bulk is made of: the text of issues, notes and labels. A cheap,
#: deterministic stand-in for GitLab's repository statistics (we store no repository).
_SIZE_SQL = """
    SELECT COALESCE((SELECT sum(octet_length(i.title) + octet_length(i.description))
                     FROM issues i WHERE i.project_id = %(p)s), 0)
         + COALESCE((SELECT sum(octet_length(n.note)) FROM notes n JOIN issues i ON i.id = n.issue_id
                     WHERE i.project_id = %(p)s), 0)
         + COALESCE((SELECT sum(octet_length(l.title) + octet_length(l.description))
                     FROM labels l WHERE l.project_id = %(p)s), 0)
"""


def project_size_estimate(*, project: Project) -> int:
    """The project's content size in bytes, as the export size limit measures it."""
    with connection.cursor() as cursor:
        cursor.execute(_SIZE_SQL, {"p": project.pk})
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def export_size_check(*, project: Project, max_size_mib: int) -> None:
    """GitLab's ``max_export_size`` (MiB, 0: no limit): a larger project answers 400."""
    if max_size_mib and project_size_estimate(project=project) > max_size_mib * 1024 * 1024:
        raise ValidationFailed(EXPORT_TOO_LARGE, code="export_too_large")


def archive_open(*, archive: ProjectExportArchive) -> File[bytes]:
    """The archive's file, opened for streaming; 404 "not available yet" when the record
    exists but storage does not have the file."""
    try:
        return default_storage.open(cast(str, archive.file.name), "rb")  # a saved archive has a file
    except OSError:
        logger.warning("export archive missing from storage", extra={"archive_id": archive.pk})
        raise NotFound(FILE_NOT_AVAILABLE) from None


def export_download_open(*, project: Project, user: User) -> tuple[File[bytes], ProjectExportArchive]:
    """The user's archive, opened for streaming, or GitLab's two 404s."""
    live = ProjectExportArchive.objects.filter(project=project, user=user, expires_at__gt=timezone.now())
    archive = live.first()
    if archive is None:
        raise NotFound(NOT_FOUND_OR_EXPIRED)
    try:
        return archive_open(archive=archive), archive
    except NotFound:
        # A new export may have replaced the file between reading the record and opening
        # it; the record then names the new file.
        fresh = live.first()
        if fresh is None or fresh.file.name == archive.file.name:
            raise
        return archive_open(archive=fresh), fresh


# --- running an export ------------------------------------------------------------------


def workdir_root() -> Path:
    """Scratch space for archives being written: next to the storage root, so that the
    finished file is renamed (not copied) into place."""
    return Path(settings.MEDIA_ROOT) / "exports-tmp"


def scratch_dirs_remove(root: Path, *, job_id: int) -> int:
    """Remove a job's scratch directories (``job-<id>-*`` under ``root``); how many."""
    removed = 0
    if root.is_dir():
        for path in root.glob(f"job-{job_id}-*"):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def workdirs_remove(*, export_job_id: int) -> int:
    return scratch_dirs_remove(workdir_root(), job_id=export_job_id)


def _gate_claim(export_job_id: int) -> ProjectExportJob | None:
    """Take an export slot and claim the job (queued → started), oldest job first.

    A job already started (a retry, or a re-run after its worker died) keeps its slot.
    Otherwise it may start only while fewer than EXPORT_MAX_CONCURRENT exports hold one
    (started, with their run queued for a retry or running) and no older job is waiting;
    else it is deferred without spending an attempt. A run whose worker died is moved
    on by the toolkit's recovery, which frees its slot.
    """
    now = timezone.now()
    with transaction.atomic():
        locks.xact_lock(GATE_LOCK)
        job = ProjectExportJob.objects.filter(pk=export_job_id).first()
        if job is None or job.status in ProjectExportJob.TERMINAL:
            return None
        if job.status == Status.STARTED:
            ProjectExportJob.objects.filter(pk=job.pk, status=Status.STARTED).update(
                relations_done=0, rows_written=0, updated_at=now
            )
        else:
            alive = ProjectExportJob.objects.filter(
                status=Status.STARTED, job_run__status__in=LIVE_RUN_STATUSES
            ).count()
            older_waiting = ProjectExportJob.objects.filter(
                status=Status.QUEUED, pk__lt=job.pk, job_run__status__in=LIVE_RUN_STATUSES
            ).exists()
            if alive >= settings.EXPORT_MAX_CONCURRENT or older_waiting:
                raise Defer(settings.EXPORT_SLOT_WAIT, "waiting for an export slot")
            if not export_job_start(export_job_id=job.pk):
                return None
        job.refresh_from_db()
        return job


class _TemporaryFile(File):  # type: ignore[type-arg]  # generic in django-stubs only: File[bytes] fails at run time
    """Lets FileSystemStorage rename the finished file into place instead of copying it."""

    def temporary_file_path(self) -> str:
        assert self.file is not None  # made from an open handle
        return self.file.name


def storage_delete(name: str) -> None:
    try:
        default_storage.delete(name)
    except OSError:
        logger.warning("could not delete an export file", exc_info=True, extra={"file": name})


#: GitLab's ``Gitlab::ImportExport::FILENAME_LIMIT``; its ``basename[0..FILENAME_LIMIT]`` is
#: an inclusive Ruby range, so the kept basename is one character longer than the limit.
FILENAME_LIMIT = 50


def archive_filename(project: Project, *, at: Any) -> str:
    """GitLab's download name (``Gitlab::ImportExport.export_filename``):
    ``<time>_<full path with _>`` cut to 51 characters, then ``_export.tar.gz``."""
    stamp = at.strftime("%Y-%m-%d_%H-%M-") + f"{at.microsecond // 1000:03d}"
    basename = f"{stamp}_{project.path_with_namespace.replace('/', '_')}"
    return f"{basename[: FILENAME_LIMIT + 1]}_export.tar.gz"


def content_disposition(filename: str) -> str:
    """Both forms Rails' ``send_file`` writes: a plain ``filename`` for old clients (non-ASCII
    replaced) and the exact name as RFC 6266's ``filename*``."""
    plain = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _publish(job: ProjectExportJob, result: archive_writer.ArchiveResult) -> ProjectExportArchive:
    """Move the written archive into storage, make it the user's archive and finish the
    job, in one transaction; the replaced file is deleted once that commits."""
    # Ids and a random token only: nothing the user typed reaches a file path.
    name = f"exports/{job.project_id}/{job.user_id}/{secrets.token_hex(16)}.tar.gz"
    try:
        with open(result.path, "rb") as handle:
            stored = default_storage.save(name, _TemporaryFile(handle, name=result.path.name))
    except OSError as exc:
        raise ExportStorageError(f"Could not store the archive: {exc.strerror or type(exc).__name__}.") from exc
    try:
        with transaction.atomic():
            now = timezone.now()
            values = {
                "job": job,
                "file": stored,
                "filename": archive_filename(job.project, at=now),
                "size": result.size,
                "sha256": result.sha256,
                "created_at": now,
                "expires_at": now + timedelta(seconds=settings.EXPORT_ARCHIVE_TTL),
            }
            archive, created = ProjectExportArchive.objects.select_for_update().get_or_create(
                project_id=job.project_id, user_id=job.user_id, defaults=values
            )
            if not created:
                previous = cast(str, archive.file.name)  # a saved archive has a file
                for key, value in values.items():
                    setattr(archive, key, value)
                archive.save()
                transaction.on_commit(lambda: storage_delete(previous), robust=True)
            if not export_job_finish(
                export_job_id=job.pk,
                relations_done=len(relations.TREE),
                relations_total=len(relations.TREE),
                rows_written=result.rows,
            ):
                raise archive_writer.ExportCancelled()
    except BaseException:
        storage_delete(stored)
        raise
    return archive


def _upload(job: ProjectExportJob, result: archive_writer.ArchiveResult, progress: archive_writer.Progress) -> None:
    host = job.upload_host

    def sent(done: int) -> None:
        # Between chunks: the toolkit stops a cancelled export here within a poll interval.
        report_progress(
            done,
            result.size,
            f"uploading to {host}: {done:,} of {result.size:,} bytes",
            phase="uploading",
            relations_done=progress.relations_done,
            relations_total=progress.relations_total,
            rows_written=progress.rows_written,
        )

    with open(result.path, "rb") as handle:
        clients.archive_upload(
            url=job.upload_url, method=job.upload_method or "PUT", body=handle, size=result.size, on_progress=sent
        )
    ProjectExportJob.objects.filter(pk=job.pk).update(uploaded_at=timezone.now())


def export_run(*, export_job_id: int) -> dict[str, Any]:
    """The export job: claim, write the archive, upload it if asked, then publish it and
    finish the job in one transaction.

    Nothing becomes visible before the end: a failure at any step (the upload included)
    leaves the user's previous archive in place. Safe to run twice: the claim lets one
    attempt in, and a re-run starts over in a fresh scratch directory.
    """
    job = _gate_claim(export_job_id)
    if job is None:
        return {"skipped": True}
    workdirs_remove(export_job_id=job.pk)  # what a killed earlier attempt left behind
    progress = archive_writer.Progress()
    workdir = workdir_root() / f"job-{job.pk}-{secrets.token_hex(4)}"
    try:
        workdir.mkdir(parents=True)
        result = archive_writer.archive_write(
            project_id=job.project_id,
            description=job.description,
            workdir=workdir,
            progress=progress,
            exported_by_admin=job.exported_by_admin,
        )
        if job.upload_url:
            _upload(job, result, progress)
        archive = _publish(job, result)
    except OSError as exc:
        raise ExportStorageError(f"Storage error while exporting: {exc.strerror or type(exc).__name__}.") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    metrics.EXPORT_DURATION.observe(result.seconds)
    metrics.EXPORT_ROWS.inc(result.rows)
    metrics.EXPORT_BYTES.inc(result.size)
    metrics.EXPORTS_COMPLETED.labels(outcome="finished").inc()
    logger.info(
        "project export finished",
        extra={"export_job_id": job.pk, "size": archive.size, "rows": result.rows, "upload": bool(job.upload_url)},
    )
    return {"export_job_id": job.pk, "size": archive.size, "sha256": archive.sha256, "rows": result.rows}


def export_run_failed(*, export_job_id: int | None, code: str, message: str, run_id: int | None = None) -> bool:
    """The toolkit gave up on the run (retries spent, permanent error, lost worker).

    Errors we raise on purpose carry messages written for the user. Anything else may
    hold internals (host names, SQL, a traceback's last line), so the job gets a plain
    message and the job run keeps the details for the admin.
    """
    if export_job_id is None:
        return False
    public = {
        "cancelled": f"The export was {message}.",
        "database_unavailable": "The database was unavailable during the export.",
        "worker_lost": "The worker running the export stopped.",
        "timeout": f"The export took longer than its {settings.EXPORT_JOB_TIMEOUT} s budget.",
        "unexpected_error": "The export failed with an unexpected error"
        + (f" (job run #{run_id})." if run_id is not None else "."),
    }
    failed = export_job_fail(export_job_id=export_job_id, code=code, error=public.get(code, message))
    workdirs_remove(export_job_id=export_job_id)
    return failed


# --- admin actions ----------------------------------------------------------------------


def export_job_retry(*, export_job_id: int) -> ProjectExportJob:
    """Queue a new export for the same project, user, description and upload."""
    job = ProjectExportJob.objects.select_related("project", "user").get(pk=export_job_id)
    if job.is_active:
        raise Conflict(f"export #{job.pk} is still {job.status}", code="export_active")
    return export_request(
        project=job.project,
        user=job.user,
        description=job.description,
        upload_url=job.upload_url,
        upload_method=job.upload_method,
    )


def export_job_cancel(*, export_job_id: int, by: str) -> str:
    """Stop an export: its run is cancelled through the job toolkit (a running export stops
    at its next progress report, within about a second, mid-upload included) and the
    toolkit's failure hook fails the job with code ``cancelled``. The user's previous
    archive stays. An export whose run is already gone is failed here directly."""
    job = ProjectExportJob.objects.filter(pk=export_job_id).select_related("job_run").first()
    if job is None:
        raise NotFound(f"Export #{export_job_id} does not exist.")
    if not job.is_active:
        raise Conflict(f"Export #{job.pk} is already {job.status}.", code="export_finished")
    if job.job_run is not None and job.job_run.is_active:
        return control.run_cancel(run_id=job.job_run.pk, by=by).message
    if not export_job_fail(export_job_id=job.pk, code="cancelled", error=f"The export was cancelled by {by}."):
        raise Conflict(f"Export #{job.pk} changed state meanwhile; nothing was done.", code="export_changed")
    return f"Export #{job.pk} was failed (its job run had already ended)."


def export_run_cancel(*, export_job_id: int, reason: str) -> None:
    """Cancel the toolkit run of an export the stuck-job sweep failed, so no worker takes
    it up again (a worker still on it stops at its next progress report)."""
    run_id = ProjectExportJob.objects.filter(pk=export_job_id).values_list("job_run_id", flat=True).first()
    if run_id is None:
        return
    with contextlib.suppress(Conflict, NotFound):  # the run had already ended
        control.run_cancel(run_id=run_id, by=reason)


def export_archive_delete(*, archive_id: int) -> bool:
    """Delete an archive and its file (the file once the deletion is committed)."""
    with transaction.atomic():
        archive = ProjectExportArchive.objects.select_for_update().filter(pk=archive_id).first()
        if archive is None:
            return False
        name = cast(str, archive.file.name)  # a saved archive has a file
        archive.delete()
        transaction.on_commit(lambda: storage_delete(name), robust=True)
    logger.info("export archive deleted", extra={"archive_id": archive_id})
    return True
