"""What one poll of the export status costs: GitLab clients poll it about once a second."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from exports import status
from exports.models import ProjectExportArchive, ProjectExportJob
from project.jobs import JobRun


def _archive(project, user) -> ProjectExportArchive:
    now = timezone.now()
    return ProjectExportArchive.objects.create(
        project=project,
        user=user,
        file=f"exports/{project.pk}/{user.pk}/x.tar.gz",
        filename="x.tar.gz",
        size=10,
        sha256="0" * 64,
        expires_at=now + timedelta(hours=1),
    )


def _job(project, user, status: str, *, run_status: str | None = None) -> ProjectExportJob:
    run = None
    if run_status is not None:
        run = JobRun.objects.create(
            name="exports.run", status=run_status, progress={"relations_done": 1, "rows_written": 7}
        )
    return ProjectExportJob.objects.create(project=project, user=user, status=status, job_run=run, relations_total=4)


STATES = {
    "none": lambda project, user: None,
    "queued": lambda project, user: _job(project, user, "queued", run_status="queued"),
    "started": lambda project, user: _job(project, user, "started", run_status="running"),
    "finished": lambda project, user: (_job(project, user, "finished"), _archive(project, user)),
    "failed": lambda project, user: _job(project, user, "failed"),
    "regeneration_in_progress": lambda project, user: (
        _job(project, user, "finished"),
        _archive(project, user),
        _job(project, user, "started", run_status="running"),
    ),
}


@pytest.mark.parametrize("state_name", STATES)
def test_a_token_poll_runs_one_statement_in_every_state(
    state_name, api, maintainer, project, django_assert_num_queries
) -> None:
    """The token with its user and the address's ban, the project with the caller's access
    level and the settings, and the export state: one statement, whatever the state (no
    health check, no transaction around it)."""
    STATES[state_name](project, maintainer)
    client = api(maintainer)
    path = f"/api/v4/projects/{project.pk}/export"
    client.get(path)  # the token's first use is recorded (then at most once a minute)
    with django_assert_num_queries(1):
        response = client.get(path)
    assert response.status_code == 200
    assert response.json()["export_status"] == state_name


def test_a_poll_by_path_and_by_an_administrator_runs_one_statement(
    api, admin_user, project, django_assert_num_queries
) -> None:
    client = api(admin_user)
    path = "/api/v4/projects/acme%2Fwidgets/export"
    client.get(path)
    with django_assert_num_queries(1):
        response = client.get(path)
    assert response.status_code == 200


def test_the_state_is_read_in_one_statement_with_each_jobs_run(maintainer, project, django_assert_num_queries) -> None:
    old = _job(project, maintainer, "finished")
    _archive(project, maintainer)
    waiting = _job(project, maintainer, "queued", run_status="queued")
    running = _job(project, maintainer, "started", run_status="running")
    with django_assert_num_queries(1):
        state = status.export_state(project=project, user=maintainer)
        # The runs came with the jobs: reading them costs nothing more.
        assert [job.job_run.status for job in (state.active_job, state.latest_job)] == ["running", "running"]
        assert state.active_job.job_run.progress == {"relations_done": 1, "rows_written": 7}
    assert state.status == "regeneration_in_progress"
    assert state.active_job.pk == running.pk != waiting.pk
    assert state.latest_job.pk == running.pk
    assert state.archive.size == 10
    assert old.pk not in {state.active_job.pk, state.latest_job.pk}


def test_an_expired_archive_and_another_users_jobs_are_not_read(maintainer, owner, project) -> None:
    archive = _archive(project, maintainer)
    ProjectExportArchive.objects.filter(pk=archive.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    _job(project, owner, "queued", run_status="queued")
    _archive(project, owner)
    state = status.export_state(project=project, user=maintainer)
    assert (state.status, state.archive, state.active_job, state.latest_job) == ("none", None, None, None)


# --- health checks of persistent connections (project/postgresql) ---------------------------


@pytest.fixture
def health_checks(monkeypatch, settings):
    """Count the backend's health checks (``is_usable``), with health checks on."""
    checks = []
    wrapper = connections["default"]  # not the proxy: monkeypatch restores attributes on it
    wrapper.ensure_connection()
    monkeypatch.setattr(wrapper, "health_check_enabled", True)
    monkeypatch.setattr(wrapper, "health_check_done", True)
    monkeypatch.setattr(wrapper, "is_usable", lambda: checks.append(1) or True)
    settings.DB_HEALTH_CHECK_IDLE = 1.0
    return checks


def test_a_connection_used_a_moment_ago_is_not_health_checked(db, health_checks) -> None:
    connection.last_used_at = time.monotonic()
    connection.health_check_done = False  # a new request
    connection.close_if_health_check_failed()
    assert health_checks == []
    assert connection.health_check_done


def test_a_connection_idle_for_longer_is_health_checked_as_before(db, health_checks, settings) -> None:
    connection.last_used_at = time.monotonic() - 1.5
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert health_checks == [1]
    settings.DB_HEALTH_CHECK_IDLE = 0  # Django's own behaviour: every time
    connection.last_used_at = time.monotonic()
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert health_checks == [1, 1]


@pytest.mark.parametrize("state_name", STATES)
def test_the_status_body_is_the_documented_serializers_in_every_state(state_name, maintainer, project) -> None:
    from exports.serializers import ProjectExportStatusSerializer, export_status_body

    STATES[state_name](project, maintainer)
    ProjectExportJob.objects.filter(status="failed").update(error="It broke.")
    ProjectExportJob.objects.filter(status="started").update(started_at=timezone.now())
    state = status.export_state(project=project, user=maintainer)
    documented = ProjectExportStatusSerializer(project, context={"state": state}).data
    assert export_status_body(project, state) == documented
    assert list(export_status_body(project, state)) == list(documented)  # the same order too
