"""Export metrics. No label carries an id, a path or a URL."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

EXPORTS_REQUESTED = Counter("exports_requested_total", "Project exports requested.")
EXPORTS_COMPLETED = Counter("exports_completed_total", "Project exports ended, by outcome.", ["outcome"])
EXPORT_ROWS = Counter("exports_rows_total", "JSON lines written into export archives.")
EXPORT_BYTES = Counter("exports_archive_bytes_total", "Bytes of export archives written.")
EXPORT_DURATION = Histogram(
    "exports_write_seconds",
    "Time to write one export archive.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)


def exports_gauges() -> Iterable[Metric]:
    """Read from PostgreSQL at scrape time, so every process agrees."""
    from django.db.models import Count, Min, Sum
    from django.utils import timezone

    from exports.models import ProjectExportArchive, ProjectExportJob

    jobs = GaugeMetricFamily("exports_jobs", "Export jobs queued or started.", labels=["status"])
    counts = dict(
        ProjectExportJob.objects.filter(status__in=ProjectExportJob.ACTIVE)
        .values_list("status")
        .annotate(n=Count("id"))
    )
    for status in ProjectExportJob.ACTIVE:
        jobs.add_metric([status], counts.get(status, 0))
    yield jobs
    oldest = ProjectExportJob.objects.filter(status=ProjectExportJob.Status.QUEUED).aggregate(first=Min("created_at"))
    age = GaugeMetricFamily("exports_oldest_queued_age_seconds", "Age of the oldest queued export job.")
    age.add_metric([], (timezone.now() - oldest["first"]).total_seconds() if oldest["first"] else 0)
    yield age
    totals = ProjectExportArchive.objects.aggregate(n=Count("id"), size=Sum("size"))
    archives = GaugeMetricFamily("exports_archives", "Export archives stored.")
    archives.add_metric([], totals["n"] or 0)
    yield archives
    stored = GaugeMetricFamily("exports_archives_bytes", "Bytes of export archives stored.")
    stored.add_metric([], totals["size"] or 0)
    yield stored
