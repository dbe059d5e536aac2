"""``project.sqlrows``: model instances from hand-written statements behave as the ORM's."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.db.models import signals

from exports.models import ProjectExportJob
from project import sqlrows
from project.jobs import JobRun
from project.models import User

pytestmark = pytest.mark.django_db

_JOB = sqlrows.Columns(ProjectExportJob, "j", ["id", "status", "job_run", "error", "started_at"])
_RUN = sqlrows.Columns(JobRun, "r", ["id", "status", "progress"])
_SQL = f"""
    SELECT {_JOB.sql}, {_RUN.sql}
    FROM project_export_jobs AS j LEFT JOIN job_runs AS r ON r.id = j.job_run_id
    WHERE j.id = %s"""


def _read(job_id: int) -> tuple[ProjectExportJob, JobRun | None]:
    with connection.cursor() as cursor:
        cursor.execute(_SQL, [job_id])
        job, run = sqlrows.split(cursor.fetchone(), _JOB, _RUN)
        return job, run


def _job(project, user) -> ProjectExportJob:
    run = JobRun.objects.create(name="exports.run", status="running", progress={"relations_done": 2})
    started = dt.datetime(2026, 11, 30, 12, 0, 1, tzinfo=dt.UTC)
    return ProjectExportJob.objects.create(
        project=project, user=user, status="started", job_run=run, started_at=started, description="kept"
    )


def test_an_instance_read_from_a_row_is_the_orms(project, maintainer) -> None:
    job = _job(project, maintainer)

    read, run = _read(job.pk)

    orm = ProjectExportJob.objects.only("id", "status", "job_run", "error", "started_at").get(pk=job.pk)
    assert read == orm
    assert not read._state.adding
    assert read._state.db == orm._state.db == "default"
    assert (read.status, read.job_run_id, read.error, read.started_at) == (
        orm.status,
        orm.job_run_id,
        orm.error,
        orm.started_at,
    )
    assert read.get_deferred_fields() == orm.get_deferred_fields()
    assert run.progress == {"relations_done": 2}  # a JSON column, through its converter
    read.job_run = run
    assert read.job_run is run  # the related cache, as the status uses it


def test_a_field_left_unread_is_loaded_when_touched(project, maintainer, django_assert_num_queries) -> None:
    job = _job(project, maintainer)
    read, _ = _read(job.pk)

    with django_assert_num_queries(1):
        assert read.description == "kept"


def test_with_a_post_init_receiver_an_instance_is_built_through_init(project, maintainer) -> None:
    job = _job(project, maintainer)
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    signals.post_init.connect(receiver, sender=ProjectExportJob)
    try:
        read, run = _read(job.pk)
    finally:
        signals.post_init.disconnect(receiver, sender=ProjectExportJob)

    assert seen == [read]  # not the run: nothing listens to JobRun's
    assert run.status == "running"


def test_a_left_join_that_found_nothing_gives_none(maintainer) -> None:
    columns = sqlrows.Columns(User, "u", ["id", "username"])
    assert columns.instance([None, None]) is None
