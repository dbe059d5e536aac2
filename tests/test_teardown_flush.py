"""A transactional test's teardown flush that loses a deadlock to a worker of the session's
cluster is tried again (tests/support/management/commands/flush.py), so it never fails
a test that passed."""

from __future__ import annotations

import threading

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from project.jobs.models import JobPause
from tests.support.cluster import database_url, wait_until


def _waiting_for_job_runs() -> bool:
    with psycopg.connect(database_url(), autocommit=True) as watcher:
        row = watcher.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'job_runs'::regclass"
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.django_db(transaction=True)
def test_a_flush_that_loses_a_deadlock_to_a_claim_is_tried_again() -> None:
    JobPause.objects.create(name="probe.ok")
    failures: list[BaseException] = []

    def flush() -> None:
        try:
            call_command("flush", interactive=False, verbosity=0)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
        finally:
            connection.close()

    # As a worker's claim: job_runs first, then job_pauses. Its own deadlock check waits
    # longest, so the flush is the one PostgreSQL fails.
    with psycopg.connect(database_url()) as claim:
        claim.execute("SET deadlock_timeout = '30s'")
        claim.execute("LOCK TABLE job_runs IN ROW EXCLUSIVE MODE")
        flusher = threading.Thread(target=flush)
        flusher.start()
        wait_until(_waiting_for_job_runs, message="the flush never waited for job_runs")
        # Granted only once the flush's TRUNCATE gave its locks up: it lost the deadlock.
        claim.execute("SELECT count(*) FROM job_pauses").fetchone()
        claim.commit()
    flusher.join(timeout=60)
    assert not flusher.is_alive()
    assert failures == []
    assert not JobPause.objects.exists()  # the flush tried again, and emptied the tables
