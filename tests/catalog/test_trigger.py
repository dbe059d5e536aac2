"""The trigger on projects records sync events (GitLab's "PG triggers" spec, and more writers)."""

from __future__ import annotations

import psycopg
import pytest
from django.db import transaction

from catalog.models import CatalogResource, SyncEvent
from project.models import Project, Visibility
from tests.catalog.conftest import make_projects, run_sql, set_sync_enabled
from tests.support.cluster import database_url


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "New name"), ("description", "New description"), ("visibility_level", Visibility.INTERNAL)],
)
@pytest.mark.django_db
def test_updating_a_synced_column_records_one_pending_event(project, resource, field, value) -> None:
    setattr(project, field, value)
    project.save()

    (event,) = SyncEvent.objects.all()
    assert event.catalog_resource_id == resource.pk
    assert event.project_id == project.pk
    assert event.status == SyncEvent.Status.PENDING
    assert event.created_at is not None
    assert event.processed_at is None


@pytest.mark.django_db
def test_updating_other_columns_records_nothing(project, resource, owner) -> None:
    project.path = "renamed-path"
    project.namespace_path = "elsewhere"
    project.creator = None
    project.save()
    Project.objects.filter(pk=project.pk).update(name=project.name, description=project.description)

    assert not SyncEvent.objects.exists()


@pytest.mark.django_db
def test_a_project_without_a_catalog_resource_records_nothing(project) -> None:
    project.name = "New name"
    project.save()

    assert not SyncEvent.objects.exists()


@pytest.mark.django_db
def test_two_updates_record_two_events(project, resource) -> None:
    project.name = "First"
    project.save()
    project.name = "Second"
    project.save()

    assert SyncEvent.objects.filter(catalog_resource_id=resource.pk).count() == 2


def _queryset_update(ids: list[int]) -> None:
    from django.db.models import F, Value
    from django.db.models.functions import Concat

    Project.objects.filter(pk__in=ids).update(name=Concat(F("name"), Value(" v2")))


def _raw_sql(ids: list[int]) -> None:
    run_sql("UPDATE projects SET name = name || ' v2' WHERE id = ANY(%s)", [ids])


def _bulk_update(ids: list[int]) -> None:
    projects = list(Project.objects.filter(pk__in=ids))
    for project in projects:
        project.name += " v2"
    Project.objects.bulk_update(projects, ["name"])


def _upsert(ids: list[int]) -> None:
    run_sql(
        """
        INSERT INTO projects (id, name, path, namespace_path, description, visibility_level, created_at, updated_at)
        SELECT id, name || ' v2', path, namespace_path, description, visibility_level, created_at, now()
        FROM projects WHERE id = ANY(%s)
        ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name
        """,
        [ids],
    )


def _update_from_values(ids: list[int]) -> None:
    run_sql(
        "UPDATE projects p SET name = p.name || ' v2' FROM unnest(%s::bigint[]) AS v(id) WHERE p.id = v.id",
        [ids],
    )


@pytest.mark.parametrize("write", [_queryset_update, _raw_sql, _bulk_update, _upsert, _update_from_values])
@pytest.mark.django_db
def test_every_kind_of_bulk_statement_records_one_event_per_resource(write) -> None:
    with_resources = make_projects(10, prefix="cat")
    without = make_projects(20, prefix="plain", resources=False)

    write([p.pk for p in with_resources + without])

    events = list(SyncEvent.objects.values_list("project_id", "catalog_resource_id"))
    expected = set(CatalogResource.objects.values_list("project_id", "id"))
    assert len(events) == 10
    assert set(events) == expected


@pytest.mark.django_db
def test_a_bulk_statement_records_events_only_for_rows_whose_columns_changed() -> None:
    projects = make_projects(10)
    changed = [p.pk for p in projects[:4]]

    run_sql(
        "UPDATE projects SET name = CASE WHEN id = ANY(%s) THEN name || ' v2' ELSE name END, updated_at = now()",
        [changed],
    )

    assert sorted(SyncEvent.objects.values_list("project_id", flat=True)) == sorted(changed)


@pytest.mark.django_db
def test_deleting_a_project_deletes_its_resource_and_records_nothing(project, resource) -> None:
    project.delete()

    assert not CatalogResource.objects.exists()
    assert not SyncEvent.objects.exists()


def _notifications(conn: psycopg.Connection) -> list[str]:
    """Payloads received so far: a marker sent after the writes ends the list, since
    notifications arrive in commit order."""
    run_sql("SELECT pg_notify('catalog_sync_events', 'marker')")
    received = []
    for notification in conn.notifies(timeout=10):
        if notification.payload == "marker":
            return received
        received.append(notification.payload)
    raise AssertionError(f"the marker notification did not arrive (received {received})")


@pytest.mark.django_db(transaction=True)
def test_one_notification_per_committing_statement_not_per_row() -> None:
    projects = make_projects(30)
    plain = make_projects(5, prefix="plain", resources=False)
    with psycopg.connect(database_url(), autocommit=True) as listener:
        listener.execute("LISTEN catalog_sync_events")

        run_sql("UPDATE projects SET name = name || ' v2' WHERE namespace_path = 'bulk'")
        assert _notifications(listener) == [""]

        with transaction.atomic():
            for project in projects[:5]:
                run_sql("UPDATE projects SET description = 'x' WHERE id = %s", [project.pk])
        assert _notifications(listener) == [""]  # folded into one by PostgreSQL

        run_sql("UPDATE projects SET name = 'no resource' WHERE id = %s", [plain[0].pk])
        run_sql("UPDATE projects SET updated_at = now()")  # no synced column changed
        with transaction.atomic():
            run_sql("UPDATE projects SET name = 'rolled back' WHERE id = %s", [projects[0].pk])
            transaction.set_rollback(True)
        assert _notifications(listener) == []


@pytest.mark.django_db(transaction=True)
def test_switching_sync_back_on_sends_a_notification() -> None:
    set_sync_enabled(True)
    with psycopg.connect(database_url(), autocommit=True) as listener:
        listener.execute("LISTEN catalog_sync_events")
        set_sync_enabled(False)
        assert _notifications(listener) == []
        set_sync_enabled(True)
        assert _notifications(listener) == ["enabled"]
        set_sync_enabled(True)  # saved again, unchanged
        assert _notifications(listener) == []
