"""Fixtures of the CI catalog tests."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection

from catalog import services
from catalog.models import CatalogResource, SyncEvent
from project.models import ApplicationSetting, Project, Visibility
from tests.support.catalog import ListenerProcess
from tests.support.cluster import database_url


def make_projects(count: int, *, prefix: str = "bulk", resources: bool = True) -> list[Project]:
    """``count`` projects in one statement, each a catalog resource unless told otherwise."""
    projects = Project.objects.bulk_create(
        [
            Project(
                namespace_path=prefix,
                path=f"p{index}",
                name=f"{prefix} {index}",
                description=f"about {prefix} {index}",
                visibility_level=Visibility.PRIVATE,
            )
            for index in range(count)
        ]
    )
    if resources:
        CatalogResource.objects.bulk_create(
            [
                CatalogResource(
                    project=project,
                    name=project.name,
                    description=project.description,
                    visibility_level=project.visibility_level,
                )
                for project in projects
            ]
        )
    return projects


def run_sql(statement: str, params: dict | list | None = None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


def pending_count() -> int:
    return SyncEvent.objects.pending().count()


def out_of_sync_count() -> int:
    return run_sql_scalar(
        "SELECT count(*) FROM catalog_resources r JOIN projects p ON p.id = r.project_id"
        " WHERE (r.name, r.description, r.visibility_level) IS DISTINCT FROM"
        " (p.name, p.description, p.visibility_level)"
    )


def run_sql_scalar(statement: str, params: dict | list | None = None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchone()[0]


def set_sync_enabled(enabled: bool) -> None:
    setting = ApplicationSetting.current()
    setting.catalog_sync_enabled = enabled
    setting.save()


@pytest.fixture
def resource(project) -> CatalogResource:
    return services.catalog_resource_create(project_id=project.pk)


@pytest.fixture
def other_connection() -> Iterator[psycopg.Connection]:
    """A second session on the test database (another process's point of view)."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def catalog_listener(cluster) -> Iterator[ListenerProcess]:
    """``manage.py catalog_listen`` enqueueing to the session cluster."""
    listener = ListenerProcess().start()
    yield listener
    listener.stop()
