"""Shared fixtures: personas, a project with a member in every role, API clients, clusters."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from project import services
from project.jobs import testing
from project.models import AccessLevel, Project, ProjectMember, User, Visibility
from tests.support.cluster import ClusterProcess, leftovers_stop
from tests.support.openapi import OpenApiValidator, ValidatingAPIClient, served_schema

ROLES = {
    "guest": AccessLevel.GUEST,
    "reporter": AccessLevel.REPORTER,
    "developer": AccessLevel.DEVELOPER,
    "maintainer": AccessLevel.MAINTAINER,
}


@pytest.fixture(scope="session", autouse=True)
def _no_command_left_running(django_db_setup) -> Iterator[None]:
    """Stop the commands a test left running: one would hold the test database for the
    next run on the machine. Torn down after the fixtures that own clusters (set up after
    this one) and before the test database goes (``django_db_setup``)."""
    yield
    left = leftovers_stop()
    if left:
        warnings.warn(f"stopped commands the tests left running: {', '.join(left)}", stacklevel=1)


@pytest.fixture(autouse=True)
def _run_times_forgotten() -> None:
    """No job's run time is known at a test's start, so whether a pull here packs runs
    while workers are idle never depends on the tests that ran before."""
    testing.run_times_forget()


def _user(username: str, **extra) -> User:
    return User.objects.create_user(username=username, email=f"{username}@example.com", password="pw", **extra)


@pytest.fixture
def owner(db) -> User:
    return _user("owner")


@pytest.fixture
def maintainer(db) -> User:
    return _user("maintainer")


@pytest.fixture
def developer(db) -> User:
    return _user("developer")


@pytest.fixture
def reporter(db) -> User:
    return _user("reporter")


@pytest.fixture
def guest(db) -> User:
    return _user("guest")


@pytest.fixture
def outsider(db) -> User:
    return _user("outsider")


@pytest.fixture
def admin_user(db) -> User:
    return _user("admin", is_staff=True, is_superuser=True)


@pytest.fixture
def project(owner, maintainer, developer, reporter, guest) -> Project:
    """A private project with a member in every role."""
    created = services.project_create(
        namespace_path="acme",
        path="widgets",
        name="Widgets",
        owner=owner,
        description="Widgets for everyone",
        visibility_level=Visibility.PRIVATE,
    )
    for user, level in (
        (maintainer, AccessLevel.MAINTAINER),
        (developer, AccessLevel.DEVELOPER),
        (reporter, AccessLevel.REPORTER),
        (guest, AccessLevel.GUEST),
    ):
        ProjectMember.objects.create(project=created, user=user, access_level=level)
    return created


@pytest.fixture
def token_for(db) -> Callable[..., str]:
    def make(user: User, scopes: tuple[str, ...] = ("api",)) -> str:
        return services.access_token_create(user=user, name="test", scopes=scopes)[1]

    return make


@pytest.fixture(scope="session")
def openapi(django_db_setup, django_db_blocker) -> OpenApiValidator:
    """The served OpenAPI schema (fetched once per session) as a response validator."""
    with django_db_blocker.unblock():
        return OpenApiValidator(served_schema())


@pytest.fixture
def api(token_for, openapi) -> Callable[..., APIClient]:
    """``api(user)``: a client authenticated by personal access token (``PRIVATE-TOKEN``);
    ``api()`` an anonymous one. Every response it receives from ``/api/v4/…`` is checked
    against the served OpenAPI schema (``tests.support.openapi``): an undocumented status,
    body or header fails the test."""

    def make(user: User | None = None, scopes: tuple[str, ...] = ("api",)) -> APIClient:
        client = ValidatingAPIClient(validator=openapi)
        if user is not None:
            client.credentials(HTTP_PRIVATE_TOKEN=token_for(user, scopes))
        return client

    return make


@pytest.fixture(scope="session")
def cluster(django_db_setup, django_db_blocker) -> Iterator[ClusterProcess]:
    """One real django-q2 cluster (the configured broker) for the whole session, on the test database.

    Tests that use it must be ``transaction=True`` so the cluster sees their rows.
    """
    with django_db_blocker.unblock():
        # No scheduler: a schedule firing in the middle of a test (the catalog processor
        # taking its lock, a sweep moving rows) would race the test's own assertions.
        process = ClusterProcess(broker=settings.JOBS_BROKER, env={"Q_SCHEDULER": "0"}).start()
    yield process
    process.stop()


@pytest.fixture
def no_broker() -> Iterator[None]:
    """Runs are recorded but no message is sent: the test executes them itself, and no
    cluster another test started can take them."""
    from project.jobs.testing import messages_held

    with messages_held():
        yield


needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="REDIS_URL is not set")
BROKERS = ["orm", pytest.param("redis", marks=needs_redis)]
