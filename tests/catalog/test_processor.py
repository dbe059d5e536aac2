"""The sync-event processor (GitLab's ProcessSyncEventsService and worker specs, and more)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import DatabaseError
from django.utils import timezone

from catalog import services, sql
from catalog.models import CatalogResource, SyncEvent
from project.jobs.models import JobRun
from project.locks import lock_key
from project.models import Project, Visibility
from tests.catalog.conftest import make_projects, out_of_sync_count, pending_count, run_sql, set_sync_enabled

pytestmark = pytest.mark.django_db

JOB = "catalog.process_sync_events"


def _queued_runs() -> int:
    return JobRun.objects.filter(name=JOB, status=JobRun.Status.QUEUED).count()


@pytest.fixture
def two_resources() -> tuple[CatalogResource, CatalogResource]:
    """GitLab's setup: one processed event, then two updates of each project (4 pending)."""
    project1, project2 = make_projects(2)
    resource1, resource2 = (CatalogResource.objects.get(project=p) for p in (project1, project2))
    SyncEvent.objects.create(
        catalog_resource_id=resource1.pk,
        project_id=project1.pk,
        status=SyncEvent.Status.PROCESSED,
        processed_at=timezone.now(),
    )
    for project, number in ((project1, 1), (project2, 2)):
        project.name, project.description = f"Name {number}", f"Test {number}"
        project.save()
        project.visibility_level = Visibility.INTERNAL if number == 1 else Visibility.PUBLIC
        project.save()
    return resource1, resource2


def _refuse_resource_updates_to(*, name: str) -> None:
    """A real database error whenever a resource would be renamed to ``name``."""
    run_sql(
        """
        CREATE FUNCTION test_refuse_resource_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'poisoned resource'; END $$
        """
    )
    run_sql(
        "CREATE TRIGGER test_refuse_resource_update BEFORE UPDATE ON catalog_resources FOR EACH ROW"
        f" WHEN (NEW.name = '{name}') EXECUTE FUNCTION test_refuse_resource_update()"
    )


def _assert_synced(resource: CatalogResource) -> None:
    resource.refresh_from_db()
    project = Project.objects.get(pk=resource.project_id)
    assert (resource.name, resource.description, resource.visibility_level) == (
        project.name,
        project.description,
        project.visibility_level,
    )


def test_processing_syncs_the_resources_and_marks_every_event_processed(two_resources) -> None:
    assert pending_count() == 4

    results = services.catalog_sync_events_process()

    assert pending_count() == 0
    for resource in two_resources:
        _assert_synced(resource)
    assert results == {"estimated_total_events": 4, "consumable_events": 4, "processed_events": 4}
    assert not SyncEvent.objects.filter(processed_at__isnull=True).exists()


@pytest.mark.parametrize(
    ("batch_size", "max_batches", "expected"),
    [
        (2, None, {"estimated_total_events": 2, "consumable_events": 2, "processed_events": 2}),
        (1, 1, {"estimated_total_events": 2, "consumable_events": 1, "processed_events": 1, "reenqueued": True}),
        (1, None, {"estimated_total_events": 2, "consumable_events": 2, "processed_events": 2}),
    ],
)
def test_the_results_hash_counts_the_run(batch_size, max_batches, expected) -> None:
    for project in make_projects(2):
        Project.objects.filter(pk=project.pk).update(name=f"{project.name}!")

    results = services.catalog_sync_events_process(batch_size=batch_size, max_batches=max_batches)

    assert results == expected


def test_the_results_hash_of_an_empty_queue_is_zero_and_nothing_is_enqueued() -> None:
    assert services.catalog_sync_events_process() == {
        "estimated_total_events": 0,
        "consumable_events": 0,
        "processed_events": 0,
    }
    assert _queued_runs() == 0


def test_estimated_total_events_is_the_id_range_of_pending_events(resource, project) -> None:
    events = [SyncEvent.objects.create(catalog_resource_id=resource.pk, project_id=project.pk) for _ in range(5)]
    SyncEvent.objects.filter(pk__in=[e.pk for e in events[:2]]).update(status=SyncEvent.Status.PROCESSED)

    results = services.catalog_sync_events_process()

    assert results["estimated_total_events"] == 3


def test_enqueues_itself_again_while_events_remain(two_resources) -> None:
    results = services.catalog_sync_events_process(batch_size=1, max_batches=1)

    assert results["reenqueued"] is True
    run = JobRun.objects.get(name=JOB)
    assert run.status == JobRun.Status.QUEUED
    assert run.dedupe_key == services.DEDUPE_KEY
    assert pending_count() == 2  # the claimed event's resource had two; both were taken


def test_does_not_enqueue_itself_when_no_event_remains(two_resources) -> None:
    results = services.catalog_sync_events_process(batch_size=4)

    assert "reenqueued" not in results
    assert _queued_runs() == 0


def test_a_run_stops_after_its_time_budget_and_enqueues_itself_again() -> None:
    projects = make_projects(3)
    run_sql("UPDATE projects SET name = name || '!' WHERE id = ANY(%s)", [[p.pk for p in projects]])

    results = services.catalog_sync_events_process(batch_size=1, time_budget=0)

    assert results["processed_events"] == 1
    assert results["reenqueued"] is True
    assert pending_count() == 2


def test_orphaned_events_are_processed_without_error(two_resources) -> None:
    resource1, resource2 = two_resources
    resource1.delete()

    results = services.catalog_sync_events_process()

    assert results["processed_events"] == 4
    assert pending_count() == 0
    _assert_synced(resource2)


def test_a_batch_takes_the_other_pending_events_of_its_resources(project, resource) -> None:
    for number in range(3):
        Project.objects.filter(pk=project.pk).update(name=f"Name {number}")

    results = services.catalog_sync_events_process(batch_size=1, max_batches=1)

    assert results["consumable_events"] == 3
    assert pending_count() == 0
    _assert_synced(resource)


def test_redoing_a_processed_batch_is_harmless(two_resources) -> None:
    services.catalog_sync_events_process()
    before = list(CatalogResource.objects.order_by("pk").values())
    SyncEvent.objects.update(status=SyncEvent.Status.PENDING, processed_at=None)  # as if the commit was lost

    results = services.catalog_sync_events_process()

    assert results["processed_events"] == 5
    assert list(CatalogResource.objects.order_by("pk").values()) == before  # not even synced_at moved


def test_a_failed_batch_stays_pending_and_earlier_batches_stay_processed() -> None:
    projects = make_projects(3)
    for project in projects:
        Project.objects.filter(pk=project.pk).update(name=f"{project.name}!")
    poisoned = projects[2]
    Project.objects.filter(pk=poisoned.pk).update(name="poison")
    _refuse_resource_updates_to(name="poison")  # a database error in the third batch only

    with pytest.raises(DatabaseError, match="poisoned resource"):
        services.catalog_sync_events_process(batch_size=2)

    poisoned_resource = CatalogResource.objects.get(project=poisoned)
    assert set(SyncEvent.objects.pending().values_list("catalog_resource_id", flat=True)) == {poisoned_resource.pk}
    assert SyncEvent.objects.processed().count() == 2
    assert out_of_sync_count() == 1


def test_while_switched_off_events_accumulate_and_switching_on_drains_them(two_resources) -> None:
    set_sync_enabled(False)

    results = services.catalog_sync_events_process()

    assert results["skipped"] == "disabled"
    assert results["processed_events"] == 0
    assert pending_count() == 4
    assert _queued_runs() == 0

    set_sync_enabled(True)
    assert services.catalog_sync_events_process()["processed_events"] == 4
    assert pending_count() == 0


def test_a_concurrent_run_returns_at_once_without_processing(two_resources, other_connection) -> None:
    other_connection.execute("SELECT pg_advisory_lock(%s)", [lock_key(sql.PROCESSOR_LOCK)])
    assert services.catalog_processor_running()

    results = services.catalog_sync_events_process()

    assert results == {
        "estimated_total_events": 0,
        "consumable_events": 0,
        "processed_events": 0,
        "skipped": "locked",
    }
    assert pending_count() == 4
    assert _queued_runs() == 0  # the lock holder re-enqueues if needed, not this run

    other_connection.execute("SELECT pg_advisory_unlock(%s)", [lock_key(sql.PROCESSOR_LOCK)])
    assert not services.catalog_processor_running()
    assert services.catalog_sync_events_process()["processed_events"] == 4


def test_the_processor_lock_is_released_after_a_run_even_when_it_fails(two_resources) -> None:
    _refuse_resource_updates_to(name="Name 1")

    with pytest.raises(DatabaseError):
        services.catalog_sync_events_process()

    assert not services.catalog_processor_running()


@pytest.mark.django_db(transaction=True)
def test_events_locked_by_another_transaction_are_skipped_not_waited_for(other_connection, no_broker) -> None:
    # The re-enqueued runs are committed here: keep their messages from the session's
    # cluster, whose processor would take the lock this test asserts on.
    first, second = make_projects(2)
    for project in (first, second):
        Project.objects.filter(pk=project.pk).update(name=f"{project.name}!")
    with other_connection.transaction():
        # Another processor's claim on the first project's events.
        other_connection.execute(
            "SELECT id FROM catalog_resource_sync_events WHERE project_id = %s FOR UPDATE", [first.pk]
        )

        results = services.catalog_sync_events_process()

        assert results["processed_events"] == 1
        assert list(SyncEvent.objects.pending().values_list("project_id", flat=True)) == [first.pk]
        assert JobRun.objects.get(name=JOB).due_at <= timezone.now()  # progress: again at once
        JobRun.objects.all().delete()

        # Nothing left it can take: it comes back later instead of spinning.
        stalled = services.catalog_sync_events_process()

        assert stalled["processed_events"] == 0
        assert stalled["reenqueued"] is True
        assert JobRun.objects.get(name=JOB).due_at >= timezone.now() + timedelta(seconds=4)
    assert services.catalog_sync_events_process()["processed_events"] == 1
    assert pending_count() == 0


def test_a_run_logs_its_results(two_resources, caplog) -> None:
    with caplog.at_level("INFO", logger="catalog.services"):
        services.catalog_sync_events_process()

    (record,) = [r for r in caplog.records if r.getMessage() == "catalog sync events processed"]
    assert (record.estimated_total_events, record.consumable_events, record.processed_events) == (4, 4, 4)
    assert record.resources_synced == 2
