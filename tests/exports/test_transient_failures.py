"""Transient failures are retried by the toolkit: a database connection lost mid-export."""

from __future__ import annotations

import psycopg
import pytest
import time_machine
from django.db import connection

from exports.models import ProjectExportArchive
from project.jobs import JobRun
from tests.exports.conftest import latest_job, run_attempt
from tests.support.cluster import database_url

pytestmark = pytest.mark.django_db(transaction=True)


def test_connection_lost_mid_export_runs_the_attempt_again_without_charging_it(
    no_broker, maintainer, project, issues, during_export, settings
) -> None:
    from exports import services

    settings.EXPORT_RETRY_DELAYS = (0,)
    job = services.export_request(project=project, user=maintainer)
    killed = []

    def terminate_backend(relation: str) -> None:
        if relation == "labels" and not killed:
            backend = connection.connection.info.backend_pid
            with psycopg.connect(database_url(), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [backend])
            killed.append(backend)

    during_export(terminate_backend)
    # The database's fault, not the export's: the same attempt runs again (even a last one).
    assert run_attempt(job) == "deferred"
    run = JobRun.objects.get(pk=job.job_run_id)
    assert (run.status, run.attempt, run.deferrals, run.history) == ("queued", 1, 1, [])
    job.refresh_from_db()
    assert job.status == "started"  # the client still sees "started"
    assert not ProjectExportArchive.objects.exists()

    with time_machine.travel(run.due_at):  # the attempt runs again at its time, not before
        assert run_attempt(job) == "succeeded"
    job = latest_job(maintainer, project)
    assert job.status == "finished"
    assert JobRun.objects.get(pk=job.job_run_id).attempt == 1
    assert ProjectExportArchive.objects.get().job_id == job.pk
    assert killed
