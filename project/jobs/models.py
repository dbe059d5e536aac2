from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone


class JobRun(models.Model):
    """One requested execution of a declared job, across all its attempts.

    This row, not django-q2's task table, is the record: its status, attempt number, due
    time and heartbeat let the toolkit retry on time, ignore duplicate deliveries and
    recover runs whose worker died.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    name = models.CharField(max_length=100, help_text="The registered job name.")
    kwargs = models.JSONField(default=dict, blank=True, help_text="Ids and flags only, never secrets.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempt = models.PositiveIntegerField(default=1)
    max_attempts = models.PositiveIntegerField(default=1)
    deferrals = models.PositiveIntegerField(default=0, help_text="Times the job waited for capacity.")
    due_at = models.DateTimeField(default=timezone.now, help_text="The current attempt may start from then.")
    pushed_at = models.DateTimeField(default=timezone.now, help_text="Last time a message was sent to the broker.")
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, default="")
    queue = models.CharField(
        max_length=100,
        blank=True,
        default="",
        db_default="",  # rows inserted by raw SQL or by a previous release's code
        help_text="The queue its messages go to, fixed at enqueue: a retry sent by any process "
        "(a sweep, another cluster's sentinel) goes where the first message went.",
    )
    task_id = models.CharField(max_length=32, blank=True, default="", help_text="django-q2 task of the latest attempt.")
    request_id = models.CharField(max_length=128, blank=True, default="")
    dedupe_key = models.CharField(max_length=255, null=True, blank=True)
    scheduled = models.BooleanField(default=False, help_text="Started by a schedule.")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    target_id = models.BigIntegerField(
        null=True, blank=True, help_text="Id of the record the run works on, as its job declares."
    )
    progress = models.JSONField(
        null=True, blank=True, help_text="The latest report_progress() of the attempt: done, total, note and extras."
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.CharField(max_length=150, blank=True, default="")
    history = models.JSONField(default=list, blank=True, help_text="One entry per finished attempt.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    #: Not a column: the record the run works on, set only on the runs the admin shows
    #: (``project.jobs.admin.attach_targets``).
    target_obj: models.Model | None

    class Meta:
        db_table = "job_runs"
        ordering = ["-id"]
        permissions = [("control_jobrun", "Can cancel, retry, re-run and pause job runs and run schedules")]
        indexes = [
            # Every index gains an entry at each change of a run's state (its status is in
            # most of them, so no such update is HOT): three entries a run in each, unless
            # the index is partial. These two serve only queued runs and scheduled runs.
            # Queued runs by due time: the recovery sweeps' stranded messages, the
            # "waiting for a retry" filter (tests/jobs/test_run_indexes.py).
            models.Index(fields=["due_at"], name="job_runs_queued_due", condition=Q(status="queued")),
            # The console's last run of each schedule.
            models.Index(fields=["name", "created_at"], name="job_runs_scheduled_created", condition=Q(scheduled=True)),
            # Finished runs only (a queued or running row version adds no entry). By end
            # time: the pruning of old runs and, index-only, the console's per-minute chart.
            models.Index(
                fields=["finished_at"],
                include=["status"],
                name="job_runs_finished",
                condition=Q(finished_at__isnull=False),
            ),
            # The console's per-job figures of the last 24 h (counts, p50/p95 duration),
            # index-only and already grouped by job.
            models.Index(
                fields=["name", "finished_at"],
                include=["status", "started_at"],
                name="job_runs_name_finished",
                condition=Q(finished_at__isnull=False),
            ),
            # The console's lists: by job and state, newest first; runs of one target.
            models.Index(fields=["name", "status", "-id"], name="job_runs_name_status_id"),
            models.Index(fields=["status", "-id"], name="job_runs_status_id"),
            models.Index(fields=["name", "target_id"], name="job_runs_target", condition=Q(target_id__isnull=False)),
            models.Index(fields=["-id"], name="job_runs_unscheduled", condition=Q(scheduled=False)),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["name", "dedupe_key"],
                condition=Q(status="queued", dedupe_key__isnull=False),
                name="job_runs_one_queued_per_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk}"

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def waiting_for_retry(self) -> bool:
        """Queued for a later attempt whose due time has not come."""
        return self.status == self.Status.QUEUED and self.attempt > 1 and self.due_at > timezone.now()


class JobPause(models.Model):
    """A job name an operator paused: its runs stay queued, with their attempt unchanged,
    and no worker claims them until the row is deleted (resume). A row, not a flag in
    memory, so a pause survives restarts and holds for every cluster."""

    name = models.CharField(max_length=100, unique=True)
    paused_by = models.CharField(max_length=150, blank=True, default="")
    paused_at = models.DateTimeField(default=timezone.now)
    reason = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        db_table = "job_pauses"
        ordering = ["name"]
        verbose_name = "paused job"

    def __str__(self) -> str:
        return f"{self.name} (paused)"


class ClusterHeartbeat(models.Model):
    """Proof that a django-q2 cluster is pulling work, written by its sentinel process."""

    key = models.CharField(max_length=255, unique=True)
    cluster_name = models.CharField(max_length=100)
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    broker = models.CharField(max_length=16)
    workers = models.PositiveIntegerField(default=0)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "job_cluster_heartbeats"
        ordering = ["-last_seen"]

    def __str__(self) -> str:
        return self.key
