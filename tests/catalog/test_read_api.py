"""``GET /projects/:id/catalog_resource``: the resource GitLab's catalog shows, with the
state of its copy of the project (pending events, stale fields), and who may read it."""

from __future__ import annotations

import pytest

from catalog import services
from catalog.models import CatalogResource, SyncEvent
from project.models import Visibility
from tests.catalog.conftest import run_sql

pytestmark = pytest.mark.django_db


def _url(project) -> str:
    return f"/api/v4/projects/{project.pk}/catalog_resource"


def test_a_fresh_resource_reads_as_synced(api, developer, project, resource) -> None:
    body = api(developer).get(_url(project)).json()
    assert body["id"] == resource.pk
    assert body["project_id"] == project.pk
    assert (body["name"], body["description"], body["visibility_level"]) == (
        "Widgets",
        "Widgets for everyone",
        "private",
    )
    assert body["state"] == "draft"
    assert body["full_path"] == "acme/widgets"
    assert body["web_path"] == "/acme/widgets"
    assert body["sync"] == {
        "status": "synced",
        "synced_at": None,
        "pending_events": 0,
        "oldest_pending_at": None,
        "last_processed_at": None,
        "stale_fields": [],
    }


def test_a_renamed_project_reads_as_pending_until_processed(api, developer, project, resource) -> None:
    run_sql("UPDATE projects SET name = 'Gadgets' WHERE id = %s", [project.pk])  # the trigger records an event
    client = api(developer)
    sync = client.get(_url(project)).json()["sync"]
    assert (sync["status"], sync["pending_events"], sync["stale_fields"]) == ("pending", 1, ["name"])
    assert sync["oldest_pending_at"] is not None
    services.catalog_sync_events_process()
    body = client.get(_url(project)).json()
    assert body["name"] == "Gadgets"
    assert (body["sync"]["status"], body["sync"]["pending_events"]) == ("synced", 0)
    assert body["sync"]["synced_at"] is not None
    assert body["sync"]["last_processed_at"] is not None


def test_a_copy_that_differs_with_no_event_waiting_reads_as_stale(api, developer, project, resource) -> None:
    run_sql("UPDATE projects SET description = 'changed' WHERE id = %s", [project.pk])
    SyncEvent.objects.update(status=SyncEvent.Status.PROCESSED)  # as if the event were lost
    sync = api(developer).get(_url(project)).json()["sync"]
    assert (sync["status"], sync["stale_fields"]) == ("stale", ["description"])


def test_a_draft_is_404_below_developer_and_a_published_one_is_readable(api, reporter, outsider, project, resource):
    response = api(reporter).get(_url(project))
    assert (response.status_code, response.json()) == (404, {"message": "404 Catalog Resource Not Found"})
    services.catalog_resource_set_state(resource_id=resource.pk, state=CatalogResource.State.PUBLISHED)
    assert api(reporter).get(_url(project)).json()["state"] == "published"
    hidden = api(outsider).get(_url(project))
    assert (hidden.status_code, hidden.json()) == (404, {"message": "404 Project Not Found"})


def test_a_published_resource_of_a_public_project_is_readable_without_a_token(api, project, resource) -> None:
    run_sql("UPDATE projects SET visibility_level = %s WHERE id = %s", [Visibility.PUBLIC, project.pk])
    services.catalog_resource_set_state(resource_id=resource.pk, state=CatalogResource.State.PUBLISHED)
    assert api().get("/api/v4/projects/acme%2Fwidgets/catalog_resource").status_code == 200


def test_a_project_without_a_resource_is_404(api, owner, project) -> None:
    assert api(owner).get(_url(project)).status_code == 404
