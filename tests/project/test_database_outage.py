"""While PostgreSQL cannot be reached, every endpoint answers 503 with ``Retry-After`` in
the API's error shape, not a 500 (issue 11, defect 8): a client, or SDRS posting a
callback, sends its request again instead of losing it. A real unreachable database:
the connection is pointed at a port nobody listens on, or its backend is terminated."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.test import Client

from project.models import ApplicationSetting, Project, User
from tests.support.cluster import database_url

# no_broker: an export these requests start must not run on a cluster another test left
# running, which read its tables while the test's teardown truncated them (a deadlock, once).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_broker")]

CALLBACK = "/api/v4/internal/token_status/callback"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def database_unreachable() -> Iterator[None]:
    """Django's connection goes to a closed port: every connection attempt is refused, as
    while PostgreSQL restarts. Restored (and reconnected) afterwards."""
    saved = {key: connection.settings_dict[key] for key in ("HOST", "PORT")}
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(_closed_port()))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.update(saved)


def _terminate_this_connection() -> None:
    """pg_terminate_backend on Django's connection, from another session: the next query
    on it fails as after a server restart."""
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    with psycopg.connect(database_url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def _assert_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    assert int(response["Retry-After"]) >= 1
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"message": "503 Service Unavailable"}
    assert response["X-Error-Code"] == "database_unavailable"


@pytest.fixture
def clients(project: Project, maintainer: User, admin_user: User, token_for) -> dict[str, Client]:
    ApplicationSetting.objects.update(project_export_enabled=True)
    token = Client(raise_request_exception=False, HTTP_PRIVATE_TOKEN=token_for(maintainer))
    browser = Client(raise_request_exception=False)
    browser.force_login(admin_user)  # a session row, read back on every admin request
    return {"token": token, "anonymous": Client(raise_request_exception=False), "admin": browser}


def _requests(project: Project) -> dict[str, tuple[str, Callable[[Client], object]]]:
    export = f"/api/v4/projects/{project.pk}/export"
    return {
        "current user": ("token", lambda c: c.get("/api/v4/user")),
        "project": ("token", lambda c: c.get(f"/api/v4/projects/{project.pk}")),
        "export status": ("token", lambda c: c.get(export)),
        "export request": ("token", lambda c: c.post(export)),
        "export download": ("token", lambda c: c.get(f"{export}/download")),
        "findings": ("token", lambda c: c.get(f"/api/v4/projects/{project.pk}/secret_detection/findings")),
        "public project without a token": ("anonymous", lambda c: c.get(f"/api/v4/projects/{project.pk}")),
        "SDRS callback": (
            "anonymous",
            lambda c: c.post(
                CALLBACK,
                data=b'{"finding_id": 1, "status": "active", "request_id": "r"}',
                content_type="application/json",
                HTTP_X_SDRS_TIMESTAMP="1",
                HTTP_X_SDRS_SIGNATURE="sha256=00",
            ),
        ),
        "admin index": ("admin", lambda c: c.get("/admin/")),
        "job console": ("admin", lambda c: c.get("/admin/jobs/")),
        "admin change list": ("admin", lambda c: c.get("/admin/exports/projectexportjob/")),
    }


def test_every_endpoint_answers_503_with_retry_after_while_the_database_refuses_connections(project, clients) -> None:
    requests = _requests(project)
    with database_unreachable():
        for name, (who, send) in requests.items():
            response = send(clients[who])
            try:
                _assert_unavailable(response)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from exc

    # Back again: the same requests are served (whatever their own answer), none is a 5xx.
    for name, (who, send) in requests.items():
        assert send(clients[who]).status_code < 500, name


@pytest.mark.parametrize("request_name", ["current user", "export request", "SDRS callback", "admin index"])
def test_a_connection_lost_under_a_request_answers_503_and_the_next_request_reconnects(
    project, clients, request_name
) -> None:
    who, send = _requests(project)[request_name]
    _terminate_this_connection()

    _assert_unavailable(send(clients[who]))

    close_old_connections()  # what the WSGI handler does between requests (the test client does not)
    assert send(clients[who]).status_code < 500


def test_liveness_needs_no_database_and_readiness_reports_it_down(clients) -> None:
    with database_unreachable():
        assert clients["anonymous"].get("/-/liveness").status_code == 200
        readiness = clients["anonymous"].get("/-/readiness")
    assert readiness.status_code == 503
    assert readiness.json()["db_check"][0]["status"] == "failed"


def test_other_server_errors_stay_500(clients, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("project.views.health.readiness_report", broken)
    response = clients["anonymous"].get("/-/readiness")
    assert response.status_code == 500
    assert response.json() == {"message": "500 Internal Server Error"}
    assert "Retry-After" not in response
