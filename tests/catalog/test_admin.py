"""The CI catalog pages of the admin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from catalog.models import CatalogResource, SyncEvent
from project.jobs.models import JobRun
from project.models import Project
from tests.catalog.conftest import make_projects, out_of_sync_count, set_sync_enabled

pytestmark = pytest.mark.django_db

RESOURCES = reverse("admin:catalog_catalogresource_changelist")
EVENTS = reverse("admin:catalog_syncevent_changelist")


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def _levels(response) -> list[str]:
    return [m.level_tag for m in response.context["messages"]] if response.context else []


def _changelist_queries(admin_client) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(RESOURCES)
    assert response.status_code == 200
    return len(queries)


def test_the_in_sync_column_costs_no_query_per_row(admin_client, django_assert_num_queries) -> None:
    make_projects(2, prefix="few")
    few = _changelist_queries(admin_client)
    make_projects(40, prefix="many")
    Project.objects.filter(namespace_path="many", path__in=["p1", "p2", "p3"]).update(name="changed")

    with django_assert_num_queries(few):
        response = admin_client.get(RESOURCES)

    page = response.content.decode()
    assert page.count('alt="False"') == 3
    assert page.count('alt="True"') == 39


def test_resources_can_be_filtered_by_in_sync(admin_client) -> None:
    make_projects(4)
    Project.objects.filter(path="p0").update(description="changed")

    response = admin_client.get(RESOURCES, {"in_sync": "no"})

    assert [r.project.path for r in response.context["cl"].result_list] == ["p0"]


def test_adding_a_resource_copies_the_project(admin_client, project) -> None:
    response = admin_client.post(
        reverse("admin:catalog_catalogresource_add"), {"project": project.pk, "state": CatalogResource.State.PUBLISHED}
    )

    assert response.status_code == 302
    resource = CatalogResource.objects.get(project=project)
    assert (resource.name, resource.description, resource.visibility_level, resource.state) == (
        project.name,
        project.description,
        project.visibility_level,
        CatalogResource.State.PUBLISHED,
    )


def test_a_project_cannot_become_a_resource_twice(admin_client, project, resource) -> None:
    response = admin_client.post(reverse("admin:catalog_catalogresource_add"), {"project": project.pk, "state": 0})

    assert response.status_code == 200
    assert "already exists" in response.content.decode()


def test_changing_the_state_keeps_the_copied_fields(admin_client, project, resource) -> None:
    response = admin_client.post(
        reverse("admin:catalog_catalogresource_change", args=[resource.pk]), {"state": CatalogResource.State.PUBLISHED}
    )

    assert response.status_code == 302
    resource.refresh_from_db()
    assert resource.state == CatalogResource.State.PUBLISHED
    assert resource.name == project.name


def test_resync_selected_resources_works_without_any_event(admin_client) -> None:
    make_projects(3)
    CatalogResource.objects.update(name="stale")  # drifted with no event to say so
    assert not SyncEvent.objects.exists()
    ids = list(CatalogResource.objects.values_list("pk", flat=True)[:2])

    response = admin_client.post(RESOURCES, {"action": "resync_selected", "_selected_action": ids}, follow=True)

    assert "Resynced 2 resource(s): 2 updated, 0 already in sync." in _messages(response)
    assert out_of_sync_count() == 1


def test_process_pending_events_now_queues_one_processor_run(admin_client, project, resource) -> None:
    Project.objects.filter(pk=project.pk).update(name="changed")

    response = admin_client.post(reverse("admin:catalog_syncevent_process"), follow=True)

    assert _messages(response) == ["A processor run was queued for 1 pending event(s)."]
    assert _levels(response) == ["success"]
    assert JobRun.objects.filter(name="catalog.process_sync_events", status=JobRun.Status.QUEUED).count() == 1


def test_process_pending_events_now_is_also_an_action_on_resources(admin_client, resource) -> None:
    response = admin_client.post(
        RESOURCES, {"action": "process_pending_now", "_selected_action": [resource.pk]}, follow=True
    )

    assert _messages(response) == ["No event is pending."]
    assert _levels(response) == ["warning"]  # nothing was done
    assert not JobRun.objects.exists()


def test_process_pending_events_now_explains_when_sync_is_switched_off(admin_client) -> None:
    set_sync_enabled(False)

    response = admin_client.post(reverse("admin:catalog_syncevent_process"), follow=True)

    assert any("switched off" in message for message in _messages(response))
    assert not JobRun.objects.exists()


def test_process_pending_events_now_refuses_get(admin_client) -> None:
    assert admin_client.get(reverse("admin:catalog_syncevent_process")).status_code == 405


def _event(*, resource: CatalogResource, created_at: datetime, processed: bool) -> SyncEvent:
    return SyncEvent.objects.create(
        catalog_resource_id=resource.pk,
        project_id=resource.project_id,
        created_at=created_at,
        status=SyncEvent.Status.PROCESSED if processed else SyncEvent.Status.PENDING,
        processed_at=created_at + timedelta(seconds=2) if processed else None,
    )


def test_the_event_list_shows_the_pending_count_and_the_oldest_pending_age(admin_client, resource) -> None:
    now = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
    _event(resource=resource, created_at=now - timedelta(hours=3), processed=True)
    _event(resource=resource, created_at=now - timedelta(minutes=5), processed=False)
    _event(resource=resource, created_at=now - timedelta(minutes=1), processed=False)

    with time_machine.travel(now, tick=False):
        response = admin_client.get(EVENTS)

    page = response.content.decode()
    assert '<span id="catalog-pending">2</span>' in page
    assert '<span id="catalog-oldest-age">0:05:00</span>' in page
    assert "Process pending events now" in page


def test_the_event_list_warns_when_sync_is_switched_off(admin_client) -> None:
    set_sync_enabled(False)

    page = admin_client.get(EVENTS).content.decode()

    assert "Processing is switched off" in page


def test_the_process_button_sits_above_the_summary_not_over_it(admin_client) -> None:
    """Django floats the object tools up beside the title; the summary box (and its
    "switched off" banner) comes after them and clears the float, so they never overlap."""
    set_sync_enabled(False)

    page = admin_client.get(EVENTS).content.decode()

    tools, button = page.index('<ul class="object-tools">'), page.index('data-action="process_pending_now"')
    summary, banner = page.index('id="catalog-sync-summary"'), page.index("Processing is switched off")
    assert tools < button < summary < banner
    assert "clear: both" in page[summary : summary + 120]
    assert page.index("<h1>") < tools


def test_the_event_list_names_resources_and_projects(admin_client, project, resource) -> None:
    event = _event(resource=resource, created_at=datetime.now(UTC), processed=False)
    orphan = SyncEvent.objects.create(catalog_resource_id=999_999, project_id=project.pk)

    page = admin_client.get(EVENTS).content.decode()

    resource_url = reverse("admin:catalog_catalogresource_change", args=[resource.pk])
    assert f'<a href="{resource_url}">{resource.name}</a>' in page
    assert f'<a href="{reverse("admin:project_project_change", args=[project.pk])}">acme/widgets</a>' in page
    assert "#999999 (deleted)" in page
    assert event.pk != orphan.pk


def test_a_resource_page_links_to_its_events_and_the_processor_runs(admin_client, resource) -> None:
    page = admin_client.get(reverse("admin:catalog_catalogresource_change", args=[resource.pk])).content.decode()

    runs = reverse("admin:jobs_jobrun_changelist") + "?job=catalog.process_sync_events&amp;kind=all"
    assert f'<a href="{runs}">' in page
    assert f'{EVENTS}?catalog_resource_id={resource.pk}">Events of this resource</a> (0 pending)' in page
    assert 'data-action="resync_selected"' in page  # the button


def test_the_resync_button_on_a_resource_page(admin_client, resource) -> None:
    CatalogResource.objects.filter(pk=resource.pk).update(name="stale")

    response = admin_client.post(
        reverse("admin:catalog_catalogresource_act", args=[resource.pk, "resync_selected"]), follow=True
    )

    assert _messages(response) == ["Resynced 1 resource(s): 1 updated, 0 already in sync."]
    assert out_of_sync_count() == 0
    again = admin_client.post(
        reverse("admin:catalog_catalogresource_act", args=[resource.pk, "resync_selected"]), follow=True
    )
    assert _levels(again) == ["warning"]  # already in sync: nothing was written


def test_events_can_be_filtered_by_status_and_date(admin_client, resource) -> None:
    old = _event(resource=resource, created_at=datetime(2020, 1, 1, tzinfo=UTC), processed=False)
    recent = _event(resource=resource, created_at=datetime.now(UTC), processed=True)

    pending = admin_client.get(EVENTS, {"status__exact": SyncEvent.Status.PENDING})
    # The parameters of the "Created at: Today" choice.
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    today = admin_client.get(
        EVENTS, {"created_at__gte": str(midnight), "created_at__lt": str(midnight + timedelta(days=1))}
    )

    assert [e.pk for e in pending.context["cl"].result_list] == [old.pk]
    assert [e.pk for e in today.context["cl"].result_list] == [recent.pk]


def test_events_are_read_only(admin_client, resource) -> None:
    event = _event(resource=resource, created_at=datetime.now(UTC), processed=False)

    page = admin_client.get(reverse("admin:catalog_syncevent_change", args=[event.pk]))

    assert page.status_code == 200
    assert admin_client.post(reverse("admin:catalog_syncevent_delete", args=[event.pk])).status_code == 403


def test_an_unknown_state_is_refused(resource) -> None:
    from catalog import services
    from project.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="unknown catalog resource state 7"):
        services.catalog_resource_set_state(resource_id=resource.pk, state=7)
