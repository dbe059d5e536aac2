"""The catalog read API's query: a project's catalog resource with its sync state, read in
one statement (the sync event counts and times as subqueries)."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.db.models import Count, DateTimeField, IntegerField, Max, Min, OuterRef, Subquery
from django.db.models.functions import Coalesce

from catalog.models import CatalogResource, SyncEvent
from project.errors import NotFound
from project.models import AccessLevel, Project, User
from project.services import is_administrator, project_access_level


def _events(status: int):
    return (
        SyncEvent.objects.filter(catalog_resource_id=OuterRef("pk"), status=status)
        .order_by()
        .values("catalog_resource_id")
    )


def catalog_resource_require(*, user: User | AnonymousUser, project: Project) -> CatalogResource:
    """The catalog resource of a project the caller can see, with its sync state annotated
    (``pending_events``, ``oldest_pending_at``, ``last_processed_at``).

    As in GitLab's catalog, a published resource is shown to everyone who can see the
    project; a draft one only to the developers and above who could publish it (and to
    administrators). Anything else is a 404, so a draft's existence is not revealed.
    """
    pending = _events(SyncEvent.Status.PENDING)
    processed = _events(SyncEvent.Status.PROCESSED)
    resource = (
        CatalogResource.objects.filter(project=project)
        .select_related("project")
        .annotate(
            pending_events=Coalesce(
                Subquery(pending.annotate(n=Count("id")).values("n"), output_field=IntegerField()), 0
            ),
            oldest_pending_at=Subquery(pending.annotate(t=Min("created_at")).values("t"), output_field=DateTimeField()),
            last_processed_at=Subquery(
                processed.annotate(t=Max("processed_at")).values("t"), output_field=DateTimeField()
            ),
        )
        .first()
    )
    if resource is None or (resource.state != CatalogResource.State.PUBLISHED and not _may_see_drafts(user, project)):
        raise NotFound("404 Catalog Resource Not Found")
    return resource


def _may_see_drafts(user: User | AnonymousUser, project: Project) -> bool:
    level = project_access_level(user=user, project=project)
    return (level is not None and level >= AccessLevel.DEVELOPER) or is_administrator(user)
