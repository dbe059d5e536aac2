from __future__ import annotations

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
    task_id = models.CharField(max_length=32, blank=True, default="", help_text="django-q2 task of the latest attempt.")
    request_id = models.CharField(max_length=128, blank=True, default="")
    dedupe_key = models.CharField(max_length=255, null=True, blank=True)
    scheduled = models.BooleanField(default=False, help_text="Started by a schedule.")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    history = models.JSONField(default=list, blank=True, help_text="One entry per finished attempt.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "job_runs"
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "due_at"], name="job_runs_status_due"),
            models.Index(fields=["name", "created_at"], name="job_runs_name_created"),
            models.Index(fields=["finished_at"], name="job_runs_finished"),
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
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class ClusterHeartbeat(models.Model):
    """Proof that a django-q2 cluster is pulling work, written by its pusher process."""

    key = models.CharField(max_length=255, unique=True)
    cluster_name = models.CharField(max_length=100)
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    broker = models.CharField(max_length=16)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "job_cluster_heartbeats"
        ordering = ["-last_seen"]

    def __str__(self) -> str:
        return self.key
