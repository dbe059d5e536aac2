"""Job metrics. Label values are registered job names only (a closed set).

Worker processes write these through prometheus_client's multiprocess mode, so the web
process's ``/metrics`` shows what every worker recorded.
"""

from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

JOBS_ENQUEUED = Counter("jobs_enqueued_total", "Job runs enqueued.", ["job"])
JOBS_STARTED = Counter("jobs_started_total", "Job attempts started.", ["job"])
JOBS_FINISHED = Counter(
    "jobs_finished_total",
    "Job attempts finished, by outcome: succeeded, retried, failed, deferred.",
    ["job", "outcome"],
)
JOB_DURATION = Histogram(
    "jobs_duration_seconds",
    "Duration of job attempts.",
    ["job"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
JOBS_IN_FLIGHT = Gauge("jobs_in_flight", "Job attempts running now.", ["job"], multiprocess_mode="livesum")
JOB_START_LATENESS = Histogram(
    "jobs_start_lateness_seconds",
    "Time from an attempt's due time to its start.",
    ["job"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)


def jobs_gauges() -> Iterable[Metric]:
    """Read from PostgreSQL at scrape time (registered with project.metrics)."""
    from django.db.models import Count, Min
    from django.utils import timezone

    from project.jobs.models import ClusterHeartbeat, JobPause, JobRun

    runs = GaugeMetricFamily("jobs_runs", "Job runs waiting or running, by job and status.", labels=["job", "status"])
    oldest = GaugeMetricFamily(
        "jobs_oldest_due_age_seconds", "Age of the oldest queued run that is due.", labels=["job"]
    )
    now = timezone.now()
    active = JobRun.objects.filter(status__in=[JobRun.Status.QUEUED, JobRun.Status.RUNNING])
    for row in active.values("name", "status").annotate(n=Count("id")):
        runs.add_metric([row["name"], row["status"]], row["n"])
    due = active.filter(status=JobRun.Status.QUEUED, due_at__lte=now)
    for due_row in due.values("name").annotate(first=Min("due_at")):
        oldest.add_metric([due_row["name"]], (now - due_row["first"]).total_seconds())
    yield runs
    yield oldest
    paused = GaugeMetricFamily("jobs_paused", "1 for each job an operator paused.", labels=["job"])
    for name in JobPause.objects.values_list("name", flat=True):
        paused.add_metric([name], 1)
    yield paused
    clusters = GaugeMetricFamily("jobs_clusters_alive", "Job clusters seen pulling work recently.")
    fresh = now - timedelta(seconds=settings.JOBS_CLUSTER_STALE_AFTER)
    clusters.add_metric([], ClusterHeartbeat.objects.filter(last_seen__gte=fresh).count())
    yield clusters
