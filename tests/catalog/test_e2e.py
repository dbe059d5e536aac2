"""Catalog sync on real clusters, with the real listener, and no manual step."""

from __future__ import annotations

import os
import signal

import psycopg
import pytest
from django.conf import settings
from django.utils import timezone

from catalog import tasks
from catalog.models import SyncEvent
from project.jobs.models import JobRun
from tests.catalog.conftest import make_projects, out_of_sync_count, pending_count, run_sql, set_sync_enabled
from tests.support.cluster import database_url, running_cluster, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

JOB = "catalog.process_sync_events"


def _in_sync() -> bool:
    return pending_count() == 0 and out_of_sync_count() == 0


def _processed_by_runs(since) -> int:
    """Events processed by the runs created since ``since``, once they have all finished
    (a run commits its last batch a moment before it records its result)."""
    runs = JobRun.objects.filter(name=JOB, created_at__gte=since)
    wait_for(
        lambda: not runs.filter(status__in=[JobRun.Status.QUEUED, JobRun.Status.RUNNING]).exists(),
        timeout=30,
        message="processor runs did not finish",
    )
    return sum((run.result or {}).get("processed_events", 0) for run in runs.filter(status=JobRun.Status.SUCCEEDED))


def test_a_raw_sql_bulk_update_of_1000_projects_is_reflected_with_no_manual_step(cluster, catalog_listener) -> None:
    make_projects(1000)
    started = timezone.now()

    run_sql("UPDATE projects SET name = name || ' (renamed)', visibility_level = 20")

    wait_for(_in_sync, timeout=30, message=lambda: f"resources not synced:\n{catalog_listener.output()}")
    assert SyncEvent.objects.processed().count() == 1000
    assert _processed_by_runs(started) == 1000


def test_switching_sync_off_and_on_loses_nothing(cluster, catalog_listener) -> None:
    make_projects(200)
    set_sync_enabled(False)
    started = timezone.now()

    run_sql("UPDATE projects SET name = name || ' v2' WHERE id % 2 = 0")
    run_sql("UPDATE projects SET description = 'v2'")
    # A run while switched off (as the schedule would start) leaves every event waiting.
    run = tasks.process_sync_events.enqueue()
    wait_for(lambda: JobRun.objects.get(pk=run.pk).status == JobRun.Status.SUCCEEDED, message=cluster.output())
    assert JobRun.objects.get(pk=run.pk).result["skipped"] == "disabled"
    assert pending_count() == 300
    assert out_of_sync_count() == 200

    set_sync_enabled(True)  # its notification wakes the listener

    wait_for(_in_sync, timeout=30, message=lambda: f"resources not synced:\n{catalog_listener.output()}")
    assert SyncEvent.objects.count() == 300
    assert _processed_by_runs(started) == 300


def _blocked_processor_backends() -> int:
    """Processor sessions waiting for a row lock in the middle of a batch."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%catalog_resource_sync_events%%'"
        ).fetchone()[0]


def test_a_worker_killed_mid_batch_loses_no_event() -> None:
    from django_q.models import Schedule

    Schedule.objects.filter(name=JOB).delete()  # only the run this test starts may take the batch
    broker = settings.JOBS_BROKER
    projects = make_projects(50)
    run_sql("UPDATE projects SET name = name || ' v2'")
    with running_cluster(broker=broker, workers=1) as cluster, psycopg.connect(database_url()) as blocker:
        # Hold one resource row so the batch stops mid-way: its events are already marked
        # processed, uncommitted, when the worker dies.
        blocker.execute("SELECT id FROM catalog_resources WHERE project_id = %s FOR UPDATE", [projects[7].pk])
        run = tasks.process_sync_events.enqueue()
        wait_for(_blocked_processor_backends, message=lambda: f"the batch did not start:\n{cluster.output()}")
        (worker,) = [w for w in cluster.workers() if "processing" in " ".join(w.cmdline())]
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = timezone.now()
        blocker.rollback()  # the orphaned statement finishes, cannot answer, and rolls back

        # The unacknowledged message comes back when its lease ends and the runner recovers
        # the run (either broker).
        wait_for(_in_sync, timeout=40, message=lambda: f"events not processed after the kill:\n{cluster.output()}")

    events = list(SyncEvent.objects.all())
    assert len(events) == 50
    assert all(e.status == SyncEvent.Status.PROCESSED and e.processed_at > killed_at for e in events)
    run.refresh_from_db()
    assert run.history[0]["error_code"] == "worker_lost"


def test_two_clusters_at_once_take_every_event_exactly_once() -> None:
    projects = make_projects(300)
    for round_ in range(10):
        run_sql("UPDATE projects SET name = name || %s WHERE id = ANY(%s)", [f" {round_}", [p.pk for p in projects]])
    assert pending_count() == 3000
    started = timezone.now()
    small_batches = {"CATALOG_SYNC_BATCH_SIZE": "5"}

    with running_cluster(broker=settings.JOBS_BROKER, workers=2, env=small_batches):
        first = [tasks.process_sync_events.enqueue() for _ in range(4)]
        with running_cluster(broker=settings.JOBS_BROKER, workers=2, env=small_batches):
            second = [tasks.process_sync_events.enqueue() for _ in range(4)]
            wait_for(_in_sync, timeout=60, message="events not processed")
            processed = _processed_by_runs(started)

    results = [run.result for run in JobRun.objects.filter(pk__in=[r.pk for r in first + second])]
    assert all(result is not None for result in results)
    assert processed == 3000
    assert SyncEvent.objects.processed().count() == 3000
