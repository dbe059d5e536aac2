"""Demo data: every other demo project becomes a CI catalog resource (idempotent)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from catalog import services
from catalog.models import CatalogResource
from project.models import Project


def seed(*, projects: Sequence[Project], stdout: Callable[[str], None]) -> None:
    existing = set(CatalogResource.objects.filter(project__in=projects).values_list("project_id", flat=True))
    created = 0
    for index, project in enumerate(projects):
        if index % 2 or project.pk in existing:
            continue
        state = CatalogResource.State.PUBLISHED if index % 4 == 0 else CatalogResource.State.DRAFT
        services.catalog_resource_create(project_id=project.pk, state=state)
        created += 1
    total = CatalogResource.objects.filter(project__in=projects).count()
    stdout(f"CI catalog: {created} resource(s) added, {total} of {len(projects)} demo project(s) are resources")
