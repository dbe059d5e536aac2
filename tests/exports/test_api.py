"""The export endpoints' shapes, codes, messages, permissions and rate limits (GitLab's)."""

from __future__ import annotations

import hashlib
import socket

import pytest

from exports.models import ProjectExportArchive, ProjectExportJob
from project.models import ApplicationSetting
from tests.exports.conftest import latest_job, read_archive, run_attempt

pytestmark = pytest.mark.django_db

RATE_LIMITED = {"message": {"error": "This endpoint has been requested too many times. Try again later."}}


def _urls(project_id: int) -> list[tuple[str, str]]:
    base = f"/api/v4/projects/{project_id}/export"
    return [("get", base), ("post", base), ("get", f"{base}/download")]


@pytest.mark.parametrize("role", ["maintainer", "owner", "admin_user"])
def test_maintainers_owners_and_admins_may_export(request, api, project, role) -> None:
    user = request.getfixturevalue(role)
    client = api(user)
    assert client.post(f"/api/v4/projects/{project.pk}/export").status_code == 202
    assert client.get(f"/api/v4/projects/{project.pk}/export").json()["export_status"] == "queued"
    job = latest_job(user, project)
    assert job.exported_by_admin is (role == "admin_user")


@pytest.mark.parametrize("role", ["developer", "reporter", "guest"])
def test_developers_reporters_and_guests_get_403(request, api, project, role) -> None:
    client = api(request.getfixturevalue(role))
    for method, url in _urls(project.pk):
        response = getattr(client, method)(url)
        assert response.status_code == 403, url
        assert response.json() == {"message": "403 Forbidden"}
    assert not ProjectExportJob.objects.exists()


def test_non_members_unknown_and_foreign_projects_get_404(api, project, outsider, maintainer) -> None:
    from project.models import Visibility
    from project.services import project_create

    public = project_create(
        namespace_path="other", path="public", name="Public", owner=None, visibility_level=Visibility.PUBLIC
    )
    for client, target in [(api(outsider), project.pk), (api(outsider), public.pk), (api(maintainer), 999999)]:
        for method, url in _urls(target):
            response = getattr(client, method)(url)
            assert response.status_code == 404, url
            assert response.json() == {"message": "404 Project Not Found"}


def test_every_endpoint_is_404_when_exports_are_disabled(api, maintainer, project) -> None:
    ApplicationSetting.objects.update_or_create(pk=1, defaults={"project_export_enabled": False})
    client = api(maintainer)
    for method, url in _urls(project.pk):
        response = getattr(client, method)(url)
        assert response.status_code == 404, url
        assert response.json()["message"] == "404 Not Found"
    assert not ProjectExportJob.objects.exists()


def test_unauthenticated_requests_get_401(api, project) -> None:
    assert api().get(f"/api/v4/projects/{project.pk}/export").status_code == 401


def test_read_api_token_may_poll_but_not_start_an_export(api, maintainer, project) -> None:
    client = api(maintainer, scopes=("read_api",))
    assert client.get(f"/api/v4/projects/{project.pk}/export").status_code == 200
    assert client.post(f"/api/v4/projects/{project.pk}/export").status_code == 403


def test_project_may_be_named_by_its_url_encoded_path(api, maintainer, project) -> None:
    client = api(maintainer)
    assert client.post("/api/v4/projects/acme%2Fwidgets/export").status_code == 202
    body = client.get("/api/v4/projects/acme%2Fwidgets/export").json()
    assert body["path_with_namespace"] == "acme/widgets"


def test_status_has_gitlab_project_fields_and_links_only_when_finished(api, maintainer, project, issues) -> None:
    client = api(maintainer)
    body = client.get(f"/api/v4/projects/{project.pk}/export").json()
    assert body == {
        "id": project.pk,
        "description": "Widgets for everyone",
        "name": "Widgets",
        "name_with_namespace": "acme / Widgets",
        "path": "widgets",
        "path_with_namespace": "acme/widgets",
        "created_at": project.created_at.isoformat().replace("+00:00", "Z"),
        "export_status": "none",
        "export_progress": None,
        "export_error": None,
        "export_archive": None,
    }
    client.post(f"/api/v4/projects/{project.pk}/export")
    queued = client.get(f"/api/v4/projects/{project.pk}/export").json()
    assert "_links" not in queued
    assert queued["export_progress"] == {
        "phase": "queued",
        "relations_done": 0,
        "relations_total": 4,
        "rows_written": 0,
        "started_at": None,
    }
    run_attempt(latest_job(maintainer, project))
    finished = client.get(f"/api/v4/projects/{project.pk}/export").json()
    archive = ProjectExportArchive.objects.get()
    assert finished["export_status"] == "finished"
    assert finished["_links"]["api_url"].endswith(f"/api/v4/projects/{project.pk}/export/download")
    assert finished["export_archive"]["size"] == archive.size
    assert finished["export_archive"]["sha256"] == archive.sha256


def test_download_streams_the_archive_with_its_name_and_checksum(api, maintainer, project, issues) -> None:
    client = api(maintainer)
    client.post(f"/api/v4/projects/{project.pk}/export")
    run_attempt(latest_job(maintainer, project))
    response = client.get(f"/api/v4/projects/{project.pk}/export/download")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    assert response["Content-Disposition"].startswith('attachment; filename="')
    assert "_acme_widgets_export.tar.gz\"; filename*=UTF-8''" in response["Content-Disposition"]
    data = b"".join(response.streaming_content)
    archive = ProjectExportArchive.objects.get()
    assert int(response["Content-Length"]) == len(data) == archive.size
    assert hashlib.sha256(data).hexdigest() == archive.sha256
    assert set(read_archive(data)) >= {"VERSION", "tree/project.json", "tree/project/issues.ndjson"}


def test_download_without_an_archive_is_404_not_found_or_expired(api, maintainer, project) -> None:
    response = api(maintainer).get(f"/api/v4/projects/{project.pk}/export/download")
    assert response.status_code == 404
    assert response.json() == {"message": "404 Not found or has expired"}


def test_download_of_an_expired_archive_is_404_not_found_or_expired(api, maintainer, project, issues) -> None:
    import time_machine
    from django.utils import timezone

    client = api(maintainer)
    client.post(f"/api/v4/projects/{project.pk}/export")
    run_attempt(latest_job(maintainer, project))
    with time_machine.travel(timezone.now() + timezone.timedelta(hours=25), tick=False):
        response = client.get(f"/api/v4/projects/{project.pk}/export/download")
        assert response.json()["message"] == "404 Not found or has expired"
        assert client.get(f"/api/v4/projects/{project.pk}/export").json()["export_status"] == "none"


def test_archive_record_without_its_file_answers_not_available_yet_and_status_stays(
    api, maintainer, project, issues
) -> None:
    client = api(maintainer)
    client.post(f"/api/v4/projects/{project.pk}/export")
    run_attempt(latest_job(maintainer, project))
    archive = ProjectExportArchive.objects.get()
    archive.file.storage.delete(archive.file.name)
    response = client.get(f"/api/v4/projects/{project.pk}/export/download")
    assert response.status_code == 404
    assert response.json() == {"message": "The project export file is not available yet"}
    body = client.get(f"/api/v4/projects/{project.pk}/export").json()
    assert body["export_status"] == "finished"  # the record decides, as in GitLab
    assert body["export_error"] is None


def test_start_is_rate_limited_per_user_with_gitlabs_429_body(api, maintainer, owner, project) -> None:
    ApplicationSetting.objects.update_or_create(pk=1, defaults={"project_export_limit": 2})
    client = api(maintainer)
    url = f"/api/v4/projects/{project.pk}/export"
    assert [client.post(url).status_code for _ in range(2)] == [202, 202]
    limited = client.post(url)
    assert limited.status_code == 429
    assert limited.json() == RATE_LIMITED
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert ProjectExportJob.objects.filter(user=maintainer).count() == 2
    assert api(owner).post(url).status_code == 202  # another user has a budget of their own


def test_download_is_rate_limited_per_user_and_project(api, maintainer, project, issues) -> None:
    from project.services import project_create

    client = api(maintainer)
    other = project_create(namespace_path="acme", path="gadgets", name="Gadgets", owner=maintainer)
    for target in (project, other):
        client.post(f"/api/v4/projects/{target.pk}/export")
        run_attempt(latest_job(maintainer, target))
    first = client.get(f"/api/v4/projects/{project.pk}/export/download")
    assert first.status_code == 200
    second = client.get(f"/api/v4/projects/{project.pk}/export/download")
    assert second.status_code == 429
    assert second.json() == RATE_LIMITED
    assert client.get(f"/api/v4/projects/{other.pk}/export/download").status_code == 200


def test_description_overrides_the_project_description_in_the_archive(api, maintainer, project, issues) -> None:
    client = api(maintainer)
    client.post(f"/api/v4/projects/{project.pk}/export", {"description": "Exported copy"})  # form-encoded
    run_attempt(latest_job(maintainer, project))
    data = b"".join(client.get(f"/api/v4/projects/{project.pk}/export/download").streaming_content)
    assert b'"description":"Exported copy"' in read_archive(data)["tree/project.json"]
    project.refresh_from_db()
    assert project.description == "Widgets for everyone"


@pytest.fixture
def resolves_to(monkeypatch):
    """Make host names resolve to chosen addresses, without a DNS server."""

    def install(mapping: dict[str, list[str]]) -> None:
        real = socket.getaddrinfo

        def fake(host, port, *args, **kwargs):
            if host in mapping:
                return [
                    (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                    for a in mapping[host]
                ]
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", fake)

    return install


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"upload[url]": "ftp://example.test/x"}, "upload[url] is blocked: Only allowed schemes are http, https"),
        ({"upload[url]": "not a url"}, "upload[url] is blocked: Only allowed schemes are http, https"),
        ({"upload[url]": "http://"}, "upload[url] is blocked: URL is invalid"),
        ({"upload[url]": "http://example.test:99999/"}, "upload[url] is blocked: URL is invalid"),
        ({"upload[url]": "http://127.0.0.1/x"}, "upload[url] is blocked: Requests to localhost are not allowed"),
        (
            {"upload[url]": "http://internal.test/x"},
            "upload[url] is blocked: Requests to the local network are not allowed",
        ),
        (
            {"upload[url]": "http://mixed.test/x"},
            "upload[url] is blocked: Requests to the local network are not allowed",
        ),
        (
            {"upload[url]": "http://169.254.169.254/latest"},
            "upload[url] is blocked: Requests to the link local network are not allowed",
        ),
        ({"upload[url]": "http://[::1]:8080/"}, "upload[url] is blocked: Requests to localhost are not allowed"),
        (
            {"upload[url]": "http://[::ffff:10.0.0.1]/"},
            "upload[url] is blocked: Requests to the local network are not allowed",
        ),
        ({"upload[url]": "https://nowhere.invalid/x"}, "upload[url] is blocked: Host cannot be resolved or invalid"),
        # A value grape's `values:` refuses: its shape, {"error": …}.
        (
            {"upload[url]": "https://example.test/x", "upload[http_method]": "PATCH"},
            {"error": "upload[http_method] does not have a valid value"},
        ),
        ({"upload[http_method]": "GET"}, {"error": "upload[http_method] does not have a valid value"}),
        # Grape's values: check is case-sensitive.
        ({"upload[http_method]": "put"}, {"error": "upload[http_method] does not have a valid value"}),
    ],
)
def test_bad_upload_parameters_get_400_with_the_reason(api, maintainer, project, resolves_to, data, message) -> None:
    resolves_to(
        {
            "example.test": ["93.184.215.14"],
            "internal.test": ["10.1.2.3"],
            # Every address is checked: one private address among public ones is enough.
            "mixed.test": ["93.184.215.14", "192.168.1.5"],
        }
    )
    response = api(maintainer).post(f"/api/v4/projects/{project.pk}/export", data)
    assert response.status_code == 400, response.content
    assert response.json() == (message if isinstance(message, dict) else {"message": message})
    assert not ProjectExportJob.objects.exists()


def test_upload_parameters_are_accepted_as_json_or_form(api, maintainer, project, resolves_to) -> None:
    resolves_to({"uploads.example.test": ["93.184.215.14"]})
    client = api(maintainer)
    url = "https://uploads.example.test/bucket/archive.tar.gz?X-Signature=secret"
    assert (
        client.post(
            f"/api/v4/projects/{project.pk}/export", {"upload": {"url": url, "http_method": "POST"}}, format="json"
        ).status_code
        == 202
    )
    assert client.post(f"/api/v4/projects/{project.pk}/export", {"upload[url]": url}).status_code == 202
    first, second = ProjectExportJob.objects.order_by("id")
    assert (first.upload_url, first.upload_method) == (url, "POST")
    assert (second.upload_url, second.upload_method) == (url, "PUT")  # GitLab's default
    # The URL may be signed: it is stored encrypted, never as plain text.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT upload_url FROM project_export_jobs")
        assert all("secret" not in stored for (stored,) in cursor.fetchall())


def test_local_upload_urls_are_allowed_when_the_setting_says_so(api, maintainer, project, settings) -> None:
    settings.ALLOW_LOCAL_REQUESTS = True
    response = api(maintainer).post(f"/api/v4/projects/{project.pk}/export", {"upload[url]": "http://127.0.0.1:9/x"})
    assert response.status_code == 202


def test_overlong_description_gets_400(api, maintainer, project) -> None:
    response = api(maintainer).post(f"/api/v4/projects/{project.pk}/export", {"description": "x" * 5001})
    assert response.status_code == 400
    assert response.json() == {"error": "description is too long (maximum is 5000 characters)"}


def test_metrics_show_export_jobs_and_archives(client, api, maintainer, project) -> None:
    api(maintainer).post(f"/api/v4/projects/{project.pk}/export")
    body = client.get("/metrics").content.decode()
    assert 'exports_jobs{status="queued"} 1.0' in body
    assert "exports_archives 0.0" in body
    assert "exports_requested_total" in body


def test_parameters_may_come_in_the_query_string_as_gitlab_clients_send_them(api, maintainer, project, resolves_to):
    resolves_to({"uploads.example.test": ["93.184.215.14"]})
    query = "description=From+the+query&upload[url]=https://uploads.example.test/a&upload[http_method]=POST"
    response = api(maintainer).post(f"/api/v4/projects/{project.pk}/export?{query}")
    assert response.status_code == 202
    job = ProjectExportJob.objects.get()
    assert (job.description, job.upload_url, job.upload_method) == (
        "From the query",
        "https://uploads.example.test/a",
        "POST",
    )


def test_the_body_wins_over_the_query_string(api, maintainer, project) -> None:
    url = f"/api/v4/projects/{project.pk}/export?description=query"
    assert api(maintainer).post(url, {"description": "body"}).status_code == 202
    assert ProjectExportJob.objects.get().description == "body"


def test_json_nulls_are_absent_parameters(api, maintainer, project) -> None:
    body = {"description": None, "upload": None}
    response = api(maintainer).post(f"/api/v4/projects/{project.pk}/export", body, format="json")
    assert response.status_code == 202
    job = ProjectExportJob.objects.get()
    assert (job.description, job.upload_url) == (None, "")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"description": 5}, "description is invalid"),
        ({"description": ["a"]}, "description is invalid"),
        ({"upload": "https://example.test/x"}, "upload is invalid"),
        ({"upload": {"url": 5}}, "upload[url] is invalid"),
        ({"upload": {"http_method": True}}, "upload[http_method] is invalid"),
        ({"upload": {"http_method": "PATCH"}, "description": 7}, "description is invalid, upload[http_method] does"),
    ],
)
def test_wrongly_typed_json_parameters_get_400_naming_them(api, maintainer, project, body, message) -> None:
    response = api(maintainer).post(f"/api/v4/projects/{project.pk}/export", body, format="json")
    assert response.status_code == 400
    # Grape's parameter validation answers {"error": …}: what python-gitlab shows.
    assert set(response.json()) == {"error"}
    assert response.json()["error"].startswith(message)
    assert response["X-Error-Code"] == "invalid"
    assert not ProjectExportJob.objects.exists()


def test_refused_parameters_do_not_spend_the_rate_limit(api, maintainer, project) -> None:
    ApplicationSetting.objects.update_or_create(pk=1, defaults={"project_export_limit": 1})
    client = api(maintainer)
    url = f"/api/v4/projects/{project.pk}/export"
    assert client.post(url, {"upload[http_method]": "GET"}).status_code == 400
    assert client.post(url, {"description": "x" * 5001}).status_code == 400
    assert client.post(url).status_code == 202
