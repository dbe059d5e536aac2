"""job_runs' partial indexes serve the statements the product actually runs.

A partial index is used only when PostgreSQL can prove its condition from the statement
(``status = 'queued'``, ``scheduled``): a reader rewritten so that it no longer says so
would fall back to scanning every run ever kept, and nothing else would notice. Each test
captures the product's own statements, drops (inside the test's transaction, rolled back
after it) every other index those statements could use, and checks that PostgreSQL plans
them on the partial index instead of a sequential scan.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from project.jobs import JobRun, overview, recovery
from tests.support import jobs as probes

pytestmark = pytest.mark.django_db

# Every index of job_runs but its primary key and the two partial ones under test (read
# from the model, so an index added later is dropped too and cannot stand in for them).
_UNDER_TEST = {"job_runs_queued_due", "job_runs_scheduled_created"}
_OTHERS = [index.name for index in JobRun._meta.indexes if index.name not in _UNDER_TEST]


def _plans(make_statements: Callable[[], object], *, reading: str) -> list[str]:
    """The plans of the statements ``make_statements()`` runs whose text contains
    ``reading``, with the other indexes gone and sequential scans priced out."""
    with CaptureQueriesContext(connection) as captured:
        make_statements()
    statements = [query["sql"] for query in captured.captured_queries if reading in query["sql"]]
    assert statements, f"no statement read {reading}"
    with connection.cursor() as cursor:
        for index in _OTHERS:
            cursor.execute(f"DROP INDEX {index}")
        cursor.execute("SET LOCAL enable_seqscan = off")
        plans = []
        for statement in statements:
            cursor.execute(f"EXPLAIN {statement}")
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    return plans


def test_the_stranded_run_sweeps_read_queued_runs_by_due_time_through_their_partial_index() -> None:
    probes.noop.enqueue()

    def sweeps() -> None:
        recovery.runs_recover()
        recovery.runs_repush_stranded(queue="default", waiting_for=60)

    plans = _plans(sweeps, reading='"due_at" <')

    assert len(plans) == 2
    assert all("job_runs_queued_due" in plan for plan in plans), plans


def test_the_retry_waiting_filter_reads_queued_runs_through_their_partial_index(admin_client) -> None:
    probes.noop.enqueue()

    plans = _plans(lambda: admin_client.get("/admin/jobs/jobrun/", {"status": "retry_waiting"}), reading='"due_at" >')

    assert all("job_runs_queued_due" in plan for plan in plans), plans


def test_the_consoles_last_run_of_each_schedule_reads_scheduled_runs_through_their_partial_index() -> None:
    plans = _plans(overview.schedule_rows, reading="AND scheduled")

    assert all("job_runs_scheduled_created" in plan for plan in plans), plans
