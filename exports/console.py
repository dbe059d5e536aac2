"""What exports show in the job console: running exports and the ones waiting for a slot."""

from __future__ import annotations

from django.db.models import Count, Min, Q
from django.urls import reverse
from django.utils import timezone

from exports.models import ProjectExportJob
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
    ]
