"""``/metrics``: what every process recorded, plus gauges read from the database at scrape.

Counters and histograms from web and worker processes come through prometheus_client's
multiprocess files. Queue depths and ages are read from PostgreSQL when scraped, so they
are right however many processes there are; apps add theirs with ``register_db_collector``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from datetime import timedelta

from django.conf import settings
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

DbCollector = Callable[[], Iterable[Metric]]
_db_collectors: list[DbCollector] = []


def register_db_collector(collector: DbCollector) -> None:
    if collector not in _db_collectors:
        _db_collectors.append(collector)


class _DatabaseGauges:
    def collect(self) -> Iterable[Metric]:
        for collector in _db_collectors:
            try:
                yield from collector()
            except Exception:
                logger.warning("metrics collector %s failed", collector.__name__, exc_info=True)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):
            registry.register(collector)
    registry.register(_DatabaseGauges())
    return generate_latest(registry), CONTENT_TYPE_LATEST


def jobs_gauges() -> Iterable[Metric]:
    from django.db.models import Count, Min
    from django.utils import timezone

    from project.jobs.models import ClusterHeartbeat, JobRun

    runs = GaugeMetricFamily("jobs_runs", "Job runs waiting or running, by job and status.", labels=["job", "status"])
    oldest = GaugeMetricFamily(
        "jobs_oldest_due_age_seconds", "Age of the oldest queued run that is due.", labels=["job"]
    )
    now = timezone.now()
    active = JobRun.objects.filter(status__in=[JobRun.Status.QUEUED, JobRun.Status.RUNNING])
    for row in active.values("name", "status").annotate(n=Count("id")):
        runs.add_metric([row["name"], row["status"]], row["n"])
    due = active.filter(status=JobRun.Status.QUEUED, due_at__lte=now)
    for row in due.values("name").annotate(first=Min("due_at")):
        oldest.add_metric([row["name"]], (now - row["first"]).total_seconds())
    yield runs
    yield oldest
    from project.jobs.models import JobPause

    paused = GaugeMetricFamily("jobs_paused", "1 for each job an operator paused.", labels=["job"])
    for name in JobPause.objects.values_list("name", flat=True):
        paused.add_metric([name], 1)
    yield paused
    clusters = GaugeMetricFamily("jobs_clusters_alive", "Job clusters seen pulling work recently.")
    fresh = now - timedelta(seconds=settings.JOBS_CLUSTER_STALE_AFTER)
    clusters.add_metric([], ClusterHeartbeat.objects.filter(last_seen__gte=fresh).count())
    yield clusters
