"""Project export jobs and the archives they produce (GitLab's ``project_export_jobs`` and
its per-user export uploads)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from project.fields import EncryptedTextField

MAX_ERROR_LENGTH = 300


class ProjectExportJob(models.Model):
    """One export requested by a user. The status only moves forward, by conditional
    UPDATEs in ``exports.services``: queued → started → finished, queued/started → failed.

    Execution (attempts, heartbeat, live progress, cancel) belongs to its job run
    (``job_run``); this row keeps the export's own state, final counts and error."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        STARTED = "started"
        FINISHED = "finished"
        FAILED = "failed"

    ACTIVE = (Status.QUEUED, Status.STARTED)
    TERMINAL = (Status.FINISHED, Status.FAILED)

    class UploadMethod(models.TextChoices):
        PUT = "PUT"
        POST = "POST"

    project = models.ForeignKey("project.Project", on_delete=models.CASCADE, related_name="export_jobs")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="export_jobs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    job_run = models.ForeignKey(
        "jobs.JobRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The toolkit's run executing this export.",
    )
    relations_done = models.PositiveIntegerField(default=0)
    relations_total = models.PositiveIntegerField(default=0)
    rows_written = models.BigIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error = models.CharField(max_length=MAX_ERROR_LENGTH, blank=True, default="")
    exported_by_admin = models.BooleanField(default=False)
    #: Replaces the project description in project.json when set (GitLab's ``description`` param).
    description = models.TextField(null=True, blank=True)
    #: Optional after-export upload. The URL may carry a signature, so it is stored encrypted
    #: and only its host is ever shown.
    upload_url = EncryptedTextField(blank=True, default="")
    upload_method = models.CharField(max_length=4, choices=UploadMethod.choices, blank=True, default="")
    uploaded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "project_export_jobs"
        ordering = ["-id"]
        verbose_name = "export job"
        permissions = [("control_projectexportjob", "Can retry and cancel export jobs")]
        indexes = [
            models.Index(fields=["project", "user", "status"], name="export_jobs_project_user"),
            models.Index(fields=["status", "created_at"], name="export_jobs_status_created"),
            models.Index(fields=["updated_at"], name="export_jobs_updated"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "started", "finished", "failed"]), name="export_jobs_status_valid"
            )
        ]

    def __str__(self) -> str:
        # Readable in the admin (whose querysets select the project and user).
        return f"Export of {self.project.path_with_namespace} for {self.user.get_username()} (#{self.pk})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def upload_host(self) -> str:
        from urllib.parse import urlsplit

        return (urlsplit(self.upload_url).hostname or "") if self.upload_url else ""


class ProjectExportArchive(models.Model):
    """The downloadable archive of one user's export of one project. A new export replaces
    the file and this row's fields in one transaction, so readers see the old archive or
    the new one, never a mix."""

    project = models.ForeignKey("project.Project", on_delete=models.CASCADE, related_name="export_archives")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="export_archives")
    job = models.ForeignKey(ProjectExportJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="archives")
    #: Storage name, always built by ``exports.services`` from ids and a random token.
    file = models.FileField(max_length=255)
    filename = models.CharField(max_length=255, help_text="Name offered to the downloader.")
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "project_export_archives"
        ordering = ["-created_at"]
        verbose_name = "export archive"
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="export_archive_per_user")]
        indexes = [models.Index(fields=["expires_at"], name="export_archives_expires")]

    def __str__(self) -> str:
        return self.filename

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()


class ProjectImportJob(models.Model):
    """One import of a GitLab export archive (GitLab's ``project_import_state``). Its status
    moves forward only, by conditional UPDATEs in ``exports.importer.services``:
    scheduled → started → finished, scheduled/started → failed.

    Everything the import writes into the project commits in one transaction with the move
    to finished, so a project never shows half its content and a killed import restarts
    from nothing. The counts, skipped relations and failed relations are the outcome."""

    class Status(models.TextChoices):
        SCHEDULED = "scheduled"
        STARTED = "started"
        FINISHED = "finished"
        FAILED = "failed"

    ACTIVE = (Status.SCHEDULED, Status.STARTED)
    TERMINAL = (Status.FINISHED, Status.FAILED)

    project = models.ForeignKey("project.Project", on_delete=models.CASCADE, related_name="import_jobs")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="import_jobs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    job_run = models.ForeignKey(
        "jobs.JobRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The toolkit's run executing this import.",
    )
    imported_by_admin = models.BooleanField(default=False)
    #: Storage name of the uploaded archive, built from ids and a random token; deleted
    #: once the import ends.
    source = models.CharField(max_length=255, blank=True, default="")
    source_size = models.BigIntegerField(default=0)
    #: With ``overwrite``, the import fills a new project under a temporary path and takes
    #: this path (replacing the project there) when it finishes, as GitLab's overwrite does.
    overwrite_path = models.CharField(max_length=255, blank=True, default="")
    #: Rows imported per relation (project, project_members, labels, issues, notes, label_links).
    counts = models.JSONField(default=dict, blank=True)
    #: What the archive holds that this product does not model, by name, with how many.
    skipped = models.JSONField(default=dict, blank=True)
    #: GitLab's ``failed_relations``: one entry per relation item that could not be saved.
    failed_relations = models.JSONField(default=list, blank=True)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error = models.CharField(max_length=MAX_ERROR_LENGTH, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "project_import_jobs"
        ordering = ["-id"]
        verbose_name = "import job"
        permissions = [("control_projectimportjob", "Can cancel import jobs")]
        indexes = [
            models.Index(fields=["project", "-id"], name="import_jobs_project"),
            models.Index(fields=["status", "created_at"], name="import_jobs_status_created"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["scheduled", "started", "finished", "failed"]),
                name="import_jobs_status_valid",
            )
        ]

    def __str__(self) -> str:
        return f"Import into {self.project.path_with_namespace} by {self.user.get_username()} (#{self.pk})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at
