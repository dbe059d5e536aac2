"""The import job: request, run, status, cancel (GitLab's ``Projects::GitlabProjectsImportService``
and ``RepositoryImportWorker`` for file imports).

The uploaded archive is stored first; the project is created at once (the API answers 201
with it, ``import_status: scheduled``) and stays empty until the job commits all of its
content together with the move to finished. Killed mid-way, the transaction rolls back,
the job is still "started", and the toolkit runs it again from the start or fails it: it
never ends "finished" with relations missing.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from exports.importer import archive, writer
from exports.importer.errors import ImportCancelled, ImportRequestInvalid, NamespaceNotFound
from exports.models import MAX_ERROR_LENGTH, ProjectImportJob
from exports.services import scratch_dirs_remove
from project import services as core
from project.errors import Conflict, NotFound, ValidationFailed
from project.jobs import control, report_progress
from project.models import AccessLevel, ApplicationSetting, Project, ProjectMember, User

logger = logging.getLogger(__name__)

Status = ProjectImportJob.Status
NAME_TAKEN = "Name has already been taken"  # GitLab's first validation message for a taken path
_PATH = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_.-]*$")
_NAMESPACE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9_./-]*$")
#: Phases of the job, for progress: extracting, then one per modelled relation.
PHASES = ("archive", "project", *writer.MODELLED_RELATIONS)


# --- status transitions -----------------------------------------------------------------


def _transition(import_job_id: int, *, from_: tuple[str, ...], to: str, **fields: Any) -> bool:
    """One conditional UPDATE; False (and nothing changed) from any other state."""
    now = timezone.now()
    fields.setdefault("updated_at", now)
    if to in ProjectImportJob.TERMINAL:
        fields.setdefault("finished_at", now)
    return bool(ProjectImportJob.objects.filter(pk=import_job_id, status__in=from_).update(status=to, **fields))


def _sanitize(message: str) -> str:
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in message).split())
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"


def import_job_fail(*, import_job_id: int, code: str, error: str) -> bool:
    """scheduled or started → failed; the stored archive is deleted."""
    failed = _transition(
        import_job_id, from_=ProjectImportJob.ACTIVE, to=Status.FAILED, error_code=code[:64], error=_sanitize(error)
    )
    if failed:
        source = ProjectImportJob.objects.filter(pk=import_job_id).values_list("source", flat=True).first()
        if source:
            storage_delete(source)
        logger.warning("project import failed", extra={"import_job_id": import_job_id, "error_code": code})
    return failed


def storage_delete(name: str) -> None:
    try:
        default_storage.delete(name)
    except OSError:
        logger.warning("could not delete an import archive", exc_info=True, extra={"file": name})


# --- requesting an import ---------------------------------------------------------------


def _namespace_allowed(*, user: User, namespace: str) -> bool:
    """Without groups, a user imports into their own namespace, or one where they maintain
    a project; administrators anywhere."""
    if user.is_admin or namespace == user.get_username():
        return True
    return ProjectMember.objects.filter(
        user=user, project__namespace_path=namespace, access_level__gte=AccessLevel.MAINTAINER
    ).exists()


def _size_check(*, size: int) -> None:
    limit_mib = ApplicationSetting.current().max_import_size
    limit = (
        min(settings.IMPORT_MAX_UPLOAD_BYTES, limit_mib * 1024 * 1024)
        if limit_mib
        else settings.IMPORT_MAX_UPLOAD_BYTES
    )
    if size > limit:
        raise ImportRequestInvalid(f"The file is larger than the maximum import size ({limit // (1024 * 1024)} MiB).")


def import_request(
    *,
    user: User,
    file: File,
    path: str,
    name: str | None = None,
    namespace: str | None = None,
    overwrite: bool = False,
) -> ProjectImportJob:
    """Store the archive, create the project and schedule its import.

    An existing project at the path answers GitLab's 400 "Name has already been taken"
    unless ``overwrite``: then the import fills a new project under a temporary path, which
    replaces the existing one when the import finishes (GitLab's overwrite).
    """
    if not _PATH.match(path) or len(path) > 255:
        raise ValidationFailed("path is invalid")
    namespace = (namespace or user.get_username()).strip("/")
    if not _NAMESPACE.match(namespace) or ".." in namespace:
        raise NamespaceNotFound()
    if not _namespace_allowed(user=user, namespace=namespace):
        raise NamespaceNotFound()
    _size_check(size=file.size or 0)
    existing = Project.objects.filter(namespace_path=namespace, path__iexact=path).first()
    if existing is not None:
        if not overwrite:
            raise ImportRequestInvalid(NAME_TAKEN)
        core.project_authorize(user=user, project=existing, min_access=AccessLevel.MAINTAINER, member_required=True)
    stored = default_storage.save(f"imports/{user.pk}/{secrets.token_hex(16)}.tar.gz", file)
    from exports import tasks

    try:
        with transaction.atomic():
            project = core.project_create(
                namespace_path=namespace,
                # Room for the suffix within the path's 255 characters.
                path=f"{path[:230]}-import-{secrets.token_hex(4)}" if existing is not None else path,
                name=name or path,
                owner=user,
            )
            job = ProjectImportJob.objects.create(
                project=project,
                user=user,
                imported_by_admin=user.is_admin,
                source=stored,
                source_size=file.size or 0,
                overwrite_path=path if existing is not None else "",
            )
            job.job_run = tasks.run_import.enqueue(import_job_id=job.pk)
            job.save(update_fields=["job_run"])
    except IntegrityError:
        storage_delete(stored)
        raise ImportRequestInvalid(NAME_TAKEN) from None
    except BaseException:
        storage_delete(stored)
        raise
    logger.info(
        "project import requested",
        extra={"import_job_id": job.pk, "project_id": project.pk, "user_id": user.pk, "overwrite": overwrite},
    )
    return job


# --- running an import ------------------------------------------------------------------


def workdir_root() -> Path:
    return Path(settings.MEDIA_ROOT) / "imports-tmp"


def workdirs_remove(*, import_job_id: int) -> int:
    return scratch_dirs_remove(workdir_root(), job_id=import_job_id)


def _claim(import_job_id: int) -> ProjectImportJob | None:
    """scheduled → started. A job already started is a re-run after a crash: nothing of the
    earlier attempt was committed, so it starts over."""
    job = ProjectImportJob.objects.filter(pk=import_job_id).select_related("user", "project").first()
    if job is None or job.status in ProjectImportJob.TERMINAL:
        return None
    if job.status == Status.SCHEDULED and not _transition(
        job.pk, from_=(Status.SCHEDULED,), to=Status.STARTED, started_at=timezone.now()
    ):
        return None
    job.refresh_from_db()
    return job


def _limits() -> archive.ArchiveLimits:
    row = ApplicationSetting.current()
    return archive.ArchiveLimits(
        max_decompressed_bytes=row.max_decompressed_archive_size * 1024 * 1024, max_files=settings.IMPORT_MAX_FILES
    )


def _progress(relation: str, rows: int, note: str) -> None:
    # Raises JobCancelled once an operator cancels: the transaction rolls back.
    phase = PHASES.index(relation) if relation in PHASES else 1
    report_progress(phase, len(PHASES), note, phase="importing", relation=relation, rows=rows)


def _overwrite(project: Project, path: str) -> None:
    """The imported project takes the path of the project it replaces, in the import's
    transaction: readers see the old project or the complete new one."""
    Project.objects.filter(namespace_path=project.namespace_path, path__iexact=path).exclude(pk=project.pk).delete()
    project.path = path
    project.save(update_fields=["path", "updated_at"])


def import_run(*, import_job_id: int) -> dict[str, Any]:
    """The import job: check and extract the archive, then write every relation and finish
    the job in one transaction. Safe to run twice: the row lock lets one attempt write,
    and a finished job is skipped."""
    job = _claim(import_job_id)
    if job is None:
        return {"skipped": True}
    workdirs_remove(import_job_id=job.pk)
    workdir = workdir_root() / f"job-{job.pk}-{secrets.token_hex(4)}"
    try:
        workdir.mkdir(parents=True)
        report_progress(0, len(PHASES), "checking the archive", phase="checking")
        extracted = archive.archive_extract(
            source=Path(default_storage.path(job.source)), workdir=workdir, limits=_limits()
        )
        with transaction.atomic():
            locked = ProjectImportJob.objects.select_for_update().filter(pk=job.pk, status=Status.STARTED).first()
            if locked is None:
                return {"skipped": True}
            project = Project.objects.select_for_update().get(pk=job.project_id)
            content = writer.ProjectWriter(
                project=project,
                importer=job.user,
                admin=job.imported_by_admin,
                root=extracted.root,
                line_limit=settings.IMPORT_MAX_LINE_BYTES,
                batch_size=settings.IMPORT_BATCH_SIZE,
                on_progress=_progress,
            )
            outcome = content.run()
            if job.overwrite_path:
                _overwrite(project, job.overwrite_path)
            counts = dict(outcome.counts)
            counts["failed"] = outcome.failed_total
            if not _transition(
                job.pk,
                from_=(Status.STARTED,),
                to=Status.FINISHED,
                counts=counts,
                skipped=outcome.skipped(extracted.skipped_files),
                failed_relations=outcome.failed,
            ):
                raise ImportCancelled()
            transaction.on_commit(lambda: storage_delete(job.source), robust=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    logger.info("project import finished", extra={"import_job_id": job.pk, "counts": counts})
    return {"import_job_id": job.pk, "project_id": job.project_id, "counts": counts}


def import_run_failed(*, import_job_id: int | None, code: str, message: str, run_id: int | None = None) -> bool:
    """The toolkit gave up on the run. Our own errors carry messages written for the user;
    anything else gets a plain message (the run keeps the details for the admin)."""
    if import_job_id is None:
        return False
    public = {
        "cancelled": f"The import was {message}.",
        "database_unavailable": "The database was unavailable during the import.",
        "worker_lost": "The worker running the import stopped.",
        "timeout": f"The import took longer than its {settings.IMPORT_JOB_TIMEOUT} s budget.",
        "unexpected_error": "The import failed with an unexpected error"
        + (f" (job run #{run_id})." if run_id is not None else "."),
    }
    failed = import_job_fail(import_job_id=import_job_id, code=code, error=public.get(code, message))
    workdirs_remove(import_job_id=import_job_id)
    return failed


# --- status and admin actions -----------------------------------------------------------


def import_status_project(*, user: User, ref: str) -> tuple[Project, ProjectImportJob | None]:
    """The project (as the caller may see it) and its latest import, if any."""
    project = core.project_require(user=user, ref=ref)
    return project, ProjectImportJob.objects.filter(project=project).order_by("-id").first()


def import_job_cancel(*, import_job_id: int, by: str) -> str:
    """Stop an import through its run (it stops at its next progress report and rolls
    back); an import whose run already ended is failed here."""
    job = ProjectImportJob.objects.filter(pk=import_job_id).select_related("job_run").first()
    if job is None:
        raise NotFound(f"Import #{import_job_id} does not exist.")
    if not job.is_active:
        raise Conflict(f"Import #{job.pk} is already {job.status}.", code="import_finished")
    if job.job_run is not None and job.job_run.is_active:
        return control.run_cancel(run_id=job.job_run.pk, by=by).message
    if not import_job_fail(import_job_id=job.pk, code="cancelled", error=f"The import was cancelled by {by}."):
        raise Conflict(f"Import #{job.pk} changed state meanwhile; nothing was done.", code="import_changed")
    return f"Import #{job.pk} was failed (its job run had already ended)."
