"""process_sync_events, resync_catalog_resources and catalog_listen on the command line."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from catalog import sql
from catalog.models import CatalogResource
from project.locks import lock_key
from tests.catalog.conftest import make_projects, out_of_sync_count, pending_count, run_sql, set_sync_enabled

pytestmark = pytest.mark.django_db


def _call(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _touch_all() -> None:
    run_sql("UPDATE projects SET name = name || '!'")


def test_process_sync_events_runs_the_processor_now_and_prints_the_results() -> None:
    make_projects(3)
    _touch_all()

    output = _call("process_sync_events")

    assert "estimated_total_events=3, consumable_events=3, processed_events=3" in output
    assert pending_count() == 0
    assert out_of_sync_count() == 0


def test_process_sync_events_wait_drains_the_queue_showing_progress(settings) -> None:
    settings.CATALOG_SYNC_BATCH_SIZE = 2
    make_projects(5)
    _touch_all()

    output = _call("process_sync_events", "--wait")

    assert "batch 1: 2 event(s) processed, 2 resource(s) updated" in output
    assert "batch 3: 5 event(s) processed, 5 resource(s) updated" in output
    assert "queue empty: 5 event(s) processed by this command" in output
    assert pending_count() == 0


def test_process_sync_events_says_so_when_another_processor_runs(other_connection) -> None:
    make_projects(1)
    _touch_all()
    other_connection.execute("SELECT pg_advisory_lock(%s)", [lock_key(sql.PROCESSOR_LOCK)])

    output = _call("process_sync_events")

    assert "another processor is running" in output
    assert pending_count() == 1


def test_process_sync_events_refuses_while_sync_is_switched_off() -> None:
    set_sync_enabled(False)

    with pytest.raises(CommandError, match="switched off"):
        _call("process_sync_events", "--wait")


def test_process_sync_events_refuses_a_bad_poll_interval() -> None:
    with pytest.raises(CommandError, match="--poll"):
        _call("process_sync_events", "--wait", "--poll", "0")


def test_resync_all_rewrites_only_the_resources_that_drifted(settings) -> None:
    settings.CATALOG_SYNC_BATCH_SIZE = 2
    make_projects(5)
    CatalogResource.objects.filter(project__path__in=["p1", "p3"]).update(description="drifted")

    output = _call("resync_catalog_resources", "--all")

    assert "2/5 checked" in output
    assert "5/5 checked, 2 updated" in output
    assert "5 resource(s) checked: 2 updated, 3 already in sync" in output
    assert out_of_sync_count() == 0


def test_resync_projects_touches_only_their_resources() -> None:
    projects = make_projects(3)
    CatalogResource.objects.update(name="drifted")

    output = _call("resync_catalog_resources", "--project", str(projects[0].pk), str(projects[2].pk))

    assert "2 resource(s) checked: 2 updated, 0 already in sync" in output
    assert list(CatalogResource.objects.filter(name="drifted").values_list("project_id", flat=True)) == [projects[1].pk]


def test_resync_refuses_projects_without_a_resource_before_doing_anything() -> None:
    projects = make_projects(1)
    (plain,) = make_projects(1, prefix="plain", resources=False)
    CatalogResource.objects.update(name="drifted")

    with pytest.raises(CommandError, match=rf"no catalog resource for project\(s\): {plain.pk}, 999999"):
        _call("resync_catalog_resources", "--project", str(projects[0].pk), str(plain.pk), "999999")

    assert out_of_sync_count() == 1


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--all", "--project", "1"),
        ("--project", "abc"),
        ("--project",),
    ],
)
def test_resync_refuses_bad_arguments(args) -> None:
    with pytest.raises(CommandError):
        _call("resync_catalog_resources", *args)


def test_catalog_listen_refuses_a_negative_debounce() -> None:
    with pytest.raises(CommandError, match="--debounce"):
        _call("catalog_listen", "--debounce", "-1")
