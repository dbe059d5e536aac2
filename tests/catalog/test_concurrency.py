"""Processors started at the same time, each on its own database session."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from catalog import services
from tests.catalog.conftest import make_projects, out_of_sync_count, pending_count, run_sql, run_sql_scalar
from tests.support.cluster import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_processors_started_together_never_process_an_event_twice() -> None:
    projects = make_projects(200)
    for round_ in range(5):
        run_sql("UPDATE projects SET name = name || %s WHERE id = ANY(%s)", [f" r{round_}", [p.pk for p in projects]])
    assert pending_count() == 1000
    start = threading.Barrier(4)
    results: list[dict] = []

    def process() -> None:
        try:
            start.wait()
            while True:
                outcome = services.catalog_sync_events_process(batch_size=20, reenqueue=False)
                results.append(outcome)
                if outcome.get("skipped") != "locked" or not pending_count():
                    break
        finally:
            connection.close()

    threads = [threading.Thread(target=process) for _ in range(4)]
    for thread in threads:
        thread.start()
    # Done once every thread is; a loaded machine gets longer while events are processed.
    wait_until(
        lambda: not any(thread.is_alive() for thread in threads),
        progress=lambda: (pending_count(), len(results)),
        stall=60,
    )

    assert pending_count() == 0
    assert out_of_sync_count() == 0
    # Every event was taken by exactly one run: the counts add up to the events, no more.
    assert sum(r["processed_events"] for r in results) == 1000
    working = [r for r in results if r["processed_events"]]
    assert all(r.get("skipped") is None for r in working)


def test_processor_killed_while_waiting_for_a_row_lock_releases_its_lock_within_seconds() -> None:
    # PostgreSQL notices a dead client only when it next talks to it: a processor killed
    # while its statement waits for a row lock would hold the processor lock (and block
    # every later run) until that row lock is released, which may be never.
    import os
    import signal
    import subprocess
    import sys

    import psycopg

    from catalog import sql
    from project import locks
    from tests.support.cluster import database_url, process_activity

    projects = make_projects(3)
    run_sql("UPDATE projects SET name = name || ' renamed' WHERE id = ANY(%s)", [[p.pk for p in projects]])
    with psycopg.connect(database_url(), autocommit=False) as blocker:
        blocker.execute("SELECT 1 FROM catalog_resources FOR UPDATE")
        processor = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import django; django.setup(); from catalog import services; "
                "services.catalog_sync_events_process(reenqueue=False)",
            ],
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": database_url()},
        )
        try:
            wait_until(
                lambda: run_sql_scalar(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                ),
                progress=process_activity(processor),
                stall=60,
                message="the processor never waited for the row lock",
            )
            assert locks.lock_held(sql.PROCESSOR_LOCK)
            os.kill(processor.pid, signal.SIGKILL)
            processor.wait()
            # Still holding the row lock: only the server's check of its client can end it, on
            # a clock (a plain deadline, which no machine's speed shortens).
            wait_until(
                lambda: not locks.lock_held(sql.PROCESSOR_LOCK), stall=30, message="the lock outlived its holder"
            )
        finally:
            if processor.poll() is None:
                processor.kill()
        blocker.rollback()
    assert pending_count() == 3
