"""What exports show in the job console: running exports and the ones waiting for a slot,
and imports running or scheduled."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, Min, Q
from django.urls import reverse
from django.utils import timezone

from exports.models import ProjectExportJob, ProjectImportJob
from project.jobs import Backlog, JobRun


def export_backlog() -> list[Backlog]:
    now = timezone.now()
    active = ProjectExportJob.objects.filter(status__in=ProjectExportJob.ACTIVE)
    figures = active.aggregate(
        running=Count("id", filter=Q(status=ProjectExportJob.Status.STARTED)),
        waiting=Count(
            "id",
            filter=Q(
                status=ProjectExportJob.Status.QUEUED,
                job_run__status=JobRun.Status.QUEUED,
                job_run__deferrals__gt=0,
            ),
        ),
        queued=Count("id", filter=Q(status=ProjectExportJob.Status.QUEUED)),
        oldest_queued=Min("created_at", filter=Q(status=ProjectExportJob.Status.QUEUED)),
    )
    jobs_url = reverse("admin:exports_projectexportjob_changelist")
    oldest = figures["oldest_queued"]
    return [
        Backlog("Exports running", figures["running"], url=f"{jobs_url}?status__exact=started"),
        Backlog(
            "Exports queued (waiting for a slot)",
            figures["queued"],
            oldest_age_seconds=(now - oldest).total_seconds() if oldest else None,
            url=f"{jobs_url}?status__exact=queued",
            warn=figures["waiting"] > 0 and oldest is not None and (now - oldest).total_seconds() > 600,
        ),
        *import_backlog(now),
    ]


def import_backlog(now: datetime) -> list[Backlog]:
    figures = ProjectImportJob.objects.filter(status__in=ProjectImportJob.ACTIVE).aggregate(
        running=Count("id", filter=Q(status=ProjectImportJob.Status.STARTED)),
        scheduled=Count("id", filter=Q(status=ProjectImportJob.Status.SCHEDULED)),
        oldest=Min("created_at", filter=Q(status=ProjectImportJob.Status.SCHEDULED)),
    )
    url = reverse("admin:exports_projectimportjob_changelist")
    oldest = figures["oldest"]
    return [
        Backlog("Imports running", figures["running"], url=f"{url}?status__exact=started"),
        Backlog(
            "Imports scheduled",
            figures["scheduled"],
            oldest_age_seconds=(now - oldest).total_seconds() if oldest else None,
            url=f"{url}?status__exact=scheduled",
        ),
    ]
