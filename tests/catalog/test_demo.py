"""seed_demo makes some demo projects catalog resources."""

from __future__ import annotations

import pytest

from catalog.models import CatalogResource
from project.demo import demo_seed

pytestmark = pytest.mark.django_db


def test_seed_demo_gives_every_other_project_a_resource_once() -> None:
    lines: list[str] = []
    projects = demo_seed(projects=4, issues=0, notes_per_issue=0, log=lines.append)
    demo_seed(projects=4, issues=0, notes_per_issue=0, log=lines.append)

    resources = list(CatalogResource.objects.select_related("project").order_by("project_id"))
    assert [r.project for r in resources] == [projects[0], projects[2]]
    assert [r.state for r in resources] == [CatalogResource.State.PUBLISHED, CatalogResource.State.DRAFT]
    assert all(r.name == r.project.name and r.description == r.project.description for r in resources)
    assert "CI catalog: 2 resource(s) added, 2 of 4 demo project(s) are resources" in lines
    assert "CI catalog: 0 resource(s) added, 2 of 4 demo project(s) are resources" in lines
