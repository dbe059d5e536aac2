"""What starts the processor: application updates on commit, the schedule, the listener."""

from __future__ import annotations

import threading

import pytest
from django.conf import settings
from django.urls import reverse

from catalog import services, sql
from catalog.listener import APPLICATION_NAME, Listener
from catalog.models import SyncEvent
from project import services as project_services
from project.jobs.models import JobRun
from project.locks import lock_key
from tests.catalog.conftest import make_projects, run_sql, set_sync_enabled
from tests.support.catalog import listening_backends
from tests.support.cluster import wait_for

JOB = "catalog.process_sync_events"


def _runs() -> list[JobRun]:
    return list(JobRun.objects.filter(name=JOB))


@pytest.mark.django_db
def test_a_synced_field_changed_through_the_application_enqueues_the_processor_on_commit(
    project, resource, django_capture_on_commit_callbacks
) -> None:
    project.name = "Renamed"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        project_services.project_update(project=project, fields=["name"])
        assert SyncEvent.objects.pending().count() == 1  # the trigger, same transaction
        assert _runs() == []  # nothing before the commit

    for callback in callbacks:
        callback()
    (run,) = _runs()
    assert run.status == JobRun.Status.QUEUED
    assert run.dedupe_key == services.DEDUPE_KEY


@pytest.mark.django_db
def test_other_fields_or_projects_without_a_resource_enqueue_nothing(
    project, resource, django_capture_on_commit_callbacks
) -> None:
    (plain,) = make_projects(1, resources=False)
    with django_capture_on_commit_callbacks(execute=True):
        project.path = "new-path"
        project_services.project_update(project=project, fields=["path"])
        plain.name = "Renamed"
        project_services.project_update(project=plain, fields=["name"])

    assert _runs() == []
    assert not SyncEvent.objects.exists()


@pytest.mark.django_db
def test_the_project_admin_change_form_goes_through_the_application_hook(
    admin_client, project, resource, django_capture_on_commit_callbacks
) -> None:
    url = reverse("admin:project_project_change", args=[project.pk])
    data = {
        "name": "Renamed in the admin",
        "path": project.path,
        "namespace_path": project.namespace_path,
        "description": project.description,
        "visibility_level": project.visibility_level,
        "creator": project.creator_id,
        "members-TOTAL_FORMS": "0",
        "members-INITIAL_FORMS": "0",
        "members-MIN_NUM_FORMS": "0",
        "members-MAX_NUM_FORMS": "1000",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, data)

    assert response.status_code == 302, response.content.decode()[:2000]
    assert SyncEvent.objects.pending().count() == 1
    assert len(_runs()) == 1


@pytest.mark.django_db
def test_bursts_of_requests_share_one_queued_run() -> None:
    make_projects(2)
    run_sql("UPDATE projects SET name = name || '!'")
    for _ in range(5):
        assert services.catalog_sync_request(source="listener")

    assert len(_runs()) == 1


@pytest.mark.django_db
def test_no_run_is_requested_without_pending_events() -> None:
    make_projects(2)

    assert not services.catalog_sync_request(source="listener")
    assert _runs() == []


@pytest.mark.django_db
def test_no_run_is_requested_while_a_processor_holds_the_lock_or_sync_is_off(other_connection) -> None:
    make_projects(2)
    run_sql("UPDATE projects SET name = name || '!'")
    other_connection.execute("SELECT pg_advisory_lock(%s)", [lock_key(sql.PROCESSOR_LOCK)])
    assert not services.catalog_sync_request(source="listener")
    other_connection.execute("SELECT pg_advisory_unlock(%s)", [lock_key(sql.PROCESSOR_LOCK)])

    set_sync_enabled(False)
    assert not services.catalog_sync_request(source="listener")

    assert _runs() == []


@pytest.mark.django_db
def test_the_processor_and_the_pruning_are_scheduled() -> None:
    from django_q.models import Schedule

    from project.jobs.schedules import schedules_sync

    schedules_sync()

    processor = Schedule.objects.get(name=JOB)
    assert processor.cron == settings.CATALOG_SYNC_CRON == "* * * * *"
    assert Schedule.objects.get(name="catalog.prune_sync_events").cron == settings.CATALOG_PRUNE_CRON


class _Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def _start(listener: Listener) -> threading.Thread:
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    wait_for(lambda: listener.connections >= 1, message="the listener did not connect")
    return thread


@pytest.mark.django_db(transaction=True)
def test_the_listener_catches_up_on_start_then_folds_a_burst_into_one_request() -> None:
    projects = make_projects(20)
    recorder = _Recorder()
    listener = Listener(request=recorder, debounce=2.0)
    thread = _start(listener)
    try:
        wait_for(lambda: recorder.calls == 1, message="no catch-up request after connecting")

        for project in projects:  # twenty commits, twenty notifications
            run_sql("UPDATE projects SET name = name || '!' WHERE id = %s", [project.pk])
        wait_for(lambda: recorder.calls == 2, message="no request after the burst")

        wait_for(lambda: listener.notifications == 20, message="notifications missing")
        assert recorder.calls == 2
    finally:
        listener.stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_the_listener_reconnects_after_losing_its_connection() -> None:
    (project,) = make_projects(1)
    recorder = _Recorder()
    listener = Listener(request=recorder, debounce=0, reconnect_delays=(0.1,))
    thread = _start(listener)
    try:
        wait_for(lambda: listening_backends(), message="the listener is not listening")
        run_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            [APPLICATION_NAME],
        )
        wait_for(lambda: listener.connections == 2, message="the listener did not reconnect")
        # It catches up after every connect: notifications sent meanwhile are lost.
        wait_for(lambda: recorder.calls == 2, message="no catch-up request after the reconnect")
        wait_for(lambda: listening_backends(), message="the listener is not listening again")

        run_sql("UPDATE projects SET name = 'after the reconnect' WHERE id = %s", [project.pk])

        wait_for(lambda: recorder.calls == 3, message="no request after the reconnect")
    finally:
        listener.stop.set()
        thread.join(timeout=5)
