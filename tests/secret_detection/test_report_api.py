"""The report import API: the upload is stored and answered at once (202), a job imports
it, and ``GET …/reports/:import_id`` tells how it went (issue "Security and hostile input",
parts 3, 4 and 10).

Every response is checked against the served OpenAPI schema by the ``api`` fixture.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.http import HttpRequest
from django.utils import timezone

from project.jobs import JobRun
from project.jobs.runner import execute
from secret_detection import services
from secret_detection.models import Finding, FindingTokenStatus, ReportImport
from tests.secret_detection.conftest import SAMPLE

pytestmark = pytest.mark.django_db

URL = "/api/v4/projects/{}/secret_detection/reports"
IMPORT_JOB = "secret_detection.import_report"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    """Stored reports of each test go to a directory of their own."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def error_code(response) -> str:
    """The error's stable code: the ``X-Error-Code`` header (or, in the older shape, ``error``)."""
    return response.get("X-Error-Code") or response.json().get("error", "")


def message(response) -> str:
    body = response.json()
    return str(body.get("message") or body.get("error"))


def post_raw(client, project, body: bytes, content_type: str = "application/json", **extra):
    return client.post(URL.format(project.pk), data=body, content_type=content_type, **extra)


def run_import(record_id: int) -> JobRun:
    """Execute the import's queued run here, as a worker would."""
    record = ReportImport.objects.get(pk=record_id)
    run = JobRun.objects.get(pk=record.job_run_id)
    execute(run.pk, run.attempt)
    run.refresh_from_db()
    return run


def import_through_api(client, project, body: bytes, django_capture_on_commit_callbacks, **kwargs) -> dict:
    """POST (202), run the import job, then GET its status (200): the status body."""
    response = post_raw(client, project, body, **kwargs)
    assert response.status_code == 202, response.content
    with django_capture_on_commit_callbacks(execute=True):
        run = run_import(response.json()["id"])
    assert run.status == "succeeded", (run.error_code, run.error)
    status = client.get(response.json()["status_url"].removeprefix("http://testserver"))
    assert status.status_code == 200, status.content
    return status.json()


# --- accepted, stored, imported ---------------------------------------------------------------


def test_a_report_is_stored_and_answered_202_with_a_status_url(api, project, developer, no_broker, media_root):
    response = post_raw(api(developer), project, SAMPLE.read_bytes())

    assert response.status_code == 202, response.content
    body = response.json()
    record = ReportImport.objects.get()
    assert body == {
        "id": record.pk,
        "status": "queued",
        "status_url": f"http://testserver/api/v4/projects/{project.pk}/secret_detection/reports/{record.pk}",
    }
    assert response["Location"] == body["status_url"]
    # Stored under MEDIA_ROOT, named from ids and a random token, readable by the owner only.
    assert re.fullmatch(rf"secret_detection/reports/{project.pk}/{record.pk}-[0-9a-f]{{32}}\.json", record.file.name)
    path = media_root / record.file.name
    assert path.read_bytes() == SAMPLE.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (record.size, record.user, record.status) == (SAMPLE.stat().st_size, developer, "queued")
    # Nothing is imported by the web request: the job does it.
    assert Finding.objects.count() == 0
    run = JobRun.objects.get(pk=record.job_run_id)
    assert (run.name, run.kwargs, run.target_id) == (IMPORT_JOB, {"report_import_id": record.pk}, record.pk)
    # No scratch file is left behind.
    assert list((media_root / "secret_detection/incoming").iterdir()) == []


def test_the_job_imports_the_report_and_the_status_shows_the_result(
    api, project, developer, no_broker, media_root, django_capture_on_commit_callbacks
):
    client = api(developer)
    response = post_raw(client, project, SAMPLE.read_bytes())
    record_id = response.json()["id"]
    queued = client.get(URL.format(project.pk) + f"/{record_id}")
    assert queued.status_code == 200
    assert (queued.json()["status"], queued.json()["result"], queued.json()["error"]) == ("queued", None, None)

    with django_capture_on_commit_callbacks(execute=True):
        run = run_import(record_id)

    assert run.status == "succeeded"
    body = client.get(URL.format("acme%2Fwidgets") + f"/{record_id}").json()
    routing = JobRun.objects.get(name="secret_detection.update_token_status")
    assert body["status"] == "finished"
    assert body["result"] == {
        "findings": 8,
        "created": 8,
        "updated": 0,
        "unchanged": 0,
        "duplicates": 0,
        "routing_run_id": routing.pk,
    }
    assert body["error"] is None
    assert body["job_run_id"] == run.pk
    assert body["started_at"] is not None
    assert body["finished_at"] is not None
    assert body["warnings"] == []
    assert Finding.objects.filter(project=project, imported_by=developer).count() == 8
    assert FindingTokenStatus.objects.filter(status="unknown").count() == 8
    # The stored report is deleted once imported.
    record = ReportImport.objects.get(pk=record_id)
    assert record.file.name == ""
    assert list((media_root / f"secret_detection/reports/{project.pk}").iterdir()) == []


def test_a_multipart_upload_is_streamed_to_the_same_import(
    api, project, maintainer, no_broker, django_capture_on_commit_callbacks
):
    client = api(maintainer)
    with SAMPLE.open("rb") as handle:
        response = client.post(URL.format(project.pk), {"file": handle, "note": "x"}, format="multipart")
    assert response.status_code == 202, response.content
    record = ReportImport.objects.get(pk=response.json()["id"])
    assert default_storage.open(record.file.name).read() == SAMPLE.read_bytes()

    with django_capture_on_commit_callbacks(execute=True):
        run_import(record.pk)
    assert client.get(URL.format(project.pk) + f"/{record.pk}").json()["result"]["created"] == 8


def test_importing_the_same_report_again_changes_nothing(
    api, project, developer, no_broker, django_capture_on_commit_callbacks
):
    client = api(developer)
    import_through_api(client, project, SAMPLE.read_bytes(), django_capture_on_commit_callbacks)
    again = import_through_api(client, project, SAMPLE.read_bytes(), django_capture_on_commit_callbacks)
    assert again["result"] == {
        "findings": 8,
        "created": 0,
        "updated": 0,
        "unchanged": 8,
        "duplicates": 0,
        "routing_run_id": None,
    }


def test_a_json_body_larger_than_djangos_2_5_mb_default_is_accepted_and_never_read_whole(
    api, project, developer, no_broker, monkeypatch, sample_report
):
    """Issue 4: a JSON body was refused at 2.5 MB (DATA_UPLOAD_MAX_MEMORY_SIZE) and held
    whole in memory. It is streamed to disk: ``request.body`` is never touched."""
    sample_report["vulnerabilities"][0]["description"] = "x" * (3 * 1024 * 1024)
    body = json.dumps(sample_report).encode()
    assert len(body) > 3 * 1024 * 1024

    def no_body(self):
        raise AssertionError("request.body was read: the report must be streamed")

    monkeypatch.setattr(HttpRequest, "body", property(no_body))
    response = post_raw(api(developer), project, body)

    assert response.status_code == 202, response.content
    assert ReportImport.objects.get().size == len(body)


# --- refused before anything is read ------------------------------------------------------


class _Unreadable(io.RawIOBase):
    """A request body that must not be read."""

    def readable(self) -> bool:
        return True

    def read(self, *args):
        raise AssertionError("the body of an oversized request was read")

    readinto = read


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=xyz"])
def test_an_oversized_body_is_refused_from_its_content_length_before_it_is_read(
    api, project, developer, settings, content_type
):
    """Issue 4: the 50 MB limit was checked only after the whole body had arrived."""
    declared = settings.REPORT_IMPORT_MAX_BYTES + 64 * 1024 + 1
    response = post_raw(
        api(developer),
        project,
        b"{}",
        content_type=content_type,
        CONTENT_LENGTH=str(declared),
        **{"wsgi.input": _Unreadable()},
    )
    assert response.status_code == 413
    assert error_code(response) == "report_too_large"
    assert message(response) == "413 Request Entity Too Large"
    assert ReportImport.objects.count() == 0


def test_the_documented_50_mb_limit_is_the_default(settings):
    assert settings.REPORT_IMPORT_MAX_BYTES == 50 * 1024 * 1024


def test_a_multipart_file_over_the_limit_is_cut_off_while_streaming(api, project, developer, settings, media_root):
    """Content-Length allows room for the multipart framing; the file itself is capped as
    it is written, and nothing is kept."""
    settings.REPORT_IMPORT_MAX_BYTES = 4096
    big = io.BytesIO(b" " * 10_000 + SAMPLE.read_bytes())
    big.name = "gl-secret-detection-report.json"
    response = api(developer).post(URL.format(project.pk), {"file": big}, format="multipart")

    assert response.status_code == 413
    assert ReportImport.objects.count() == 0
    assert list((media_root / "secret_detection/incoming").iterdir()) == []


def test_a_body_without_content_length_is_refused_with_411(api, project, developer):
    response = post_raw(api(developer), project, b"{}", CONTENT_LENGTH="")
    assert response.status_code == 411
    assert error_code(response) == "length_required"


def test_multipart_without_file_is_a_clear_400(api, project, developer):
    response = api(developer).post(URL.format(project.pk), {"other": "x"}, format="multipart")
    assert response.status_code == 400
    assert "file is missing" in message(response)
    assert ReportImport.objects.count() == 0


def test_imports_are_rate_limited_per_user(api, project, developer, maintainer, settings, no_broker):
    settings.REPORT_IMPORT_RATE_LIMIT = 2
    client = api(developer)
    assert [post_raw(client, project, b"{}").status_code for _ in range(2)] == [202, 202]

    refused = post_raw(client, project, SAMPLE.read_bytes())
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    assert ReportImport.objects.count() == 2
    # Per user: another developer still may.
    assert post_raw(api(maintainer), project, b"{}").status_code == 202


@pytest.mark.parametrize(("persona", "status"), [("reporter", 403), ("guest", 403), ("outsider", 404)])
def test_only_developers_and_above_import_reports(api, project, request, persona, status):
    response = post_raw(api(request.getfixturevalue(persona)), project, SAMPLE.read_bytes())
    assert response.status_code == status
    assert ReportImport.objects.count() == 0


def test_import_needs_the_api_scope(api, project, developer):
    response = post_raw(api(developer, scopes=("read_api",)), project, SAMPLE.read_bytes())
    assert response.status_code == 403
    assert error_code(response) == "insufficient_scope"


# --- the status -------------------------------------------------------------------------------


@pytest.mark.parametrize(("persona", "status"), [("reporter", 403), ("outsider", 404)])
def test_the_status_follows_the_import_permissions(api, project, developer, request, persona, status, no_broker):
    record_id = post_raw(api(developer), project, SAMPLE.read_bytes()).json()["id"]
    response = api(request.getfixturevalue(persona)).get(URL.format(project.pk) + f"/{record_id}")
    assert response.status_code == status


def test_an_import_of_another_project_is_not_found(api, project, developer, owner, no_broker):
    from project import services as core

    other = core.project_create(namespace_path="acme", path="other", name="Other", owner=owner)
    record_id = post_raw(api(owner), other, SAMPLE.read_bytes()).json()["id"]
    from project.models import ProjectMember

    ProjectMember.objects.create(project=other, user=developer, access_level=30)
    response = api(developer).get(URL.format(project.pk) + f"/{record_id}")
    assert response.status_code == 404
    assert api(developer).get(URL.format(project.pk) + "/999999").status_code == 404


# --- invalid and hostile reports: a failed import, never a 500 -------------------------------


def test_an_invalid_report_fails_its_import_listing_every_problem(
    api, project, developer, no_broker, django_capture_on_commit_callbacks, invalid_report
):
    body = import_through_api(
        api(developer), project, json.dumps(invalid_report).encode(), django_capture_on_commit_callbacks
    )
    assert body["status"] == "failed"
    assert body["result"] is None
    error = body["error"]
    assert error["code"] == "invalid_report"
    assert 'scan.type must be "secret_detection"' in error["problems"]
    assert "vulnerabilities[0].identifiers must be a list (got a string)" in error["problems"]
    assert "vulnerabilities[0].location is required" in error["problems"]
    assert error["message"].startswith("The secret detection report is invalid: ")
    assert Finding.objects.count() == 0
    assert ReportImport.objects.get().file.name == ""


def _sample_text() -> str:
    return SAMPLE.read_text()


HOSTILE = {
    # Issue 3: each of these answered 500 with a traceback.
    "nul_byte": (
        _sample_text().replace('"AWS access token"', '"AWS \\u0000 token"', 1),
        "vulnerabilities[0].name contains a NUL character or an unpaired UTF-16 surrogate",
    ),
    "lone_surrogate": (
        _sample_text().replace('"AWS access token"', '"AWS \\ud800 token"', 1),
        "vulnerabilities[0].name contains a NUL character or an unpaired UTF-16 surrogate",
    ),
    "lone_low_surrogate_in_a_key": (
        _sample_text().replace('"category"', '"cat\\udc00egory"', 1),
        "vulnerabilities[0] has a key that contains a NUL character or an unpaired UTF-16 surrogate",
    ),
    "start_line_2_31": (
        _sample_text().replace('"start_line": 12', '"start_line": 2147483648', 1),
        "vulnerabilities[0].location.start_line must be at most 2147483647",
    ),
    "nested_1000_deep": (
        _sample_text().replace('"category"', '"details": ' + "[" * 1000 + "]" * 1000 + ', "category"', 1),
        "vulnerabilities[0].details[0][0][0][0][0][0][0][0][0].… is nested more than 64 levels deep",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_reports_fail_their_import_with_the_path_and_no_500(
    api, project, developer, no_broker, django_capture_on_commit_callbacks, case
):
    text, problem = HOSTILE[case]
    body = import_through_api(api(developer), project, text.encode(), django_capture_on_commit_callbacks)
    assert body["status"] == "failed"
    assert body["error"]["code"] == "invalid_report"
    assert problem in body["error"]["problems"]
    assert Finding.objects.count() == 0


# --- failures of the job itself -----------------------------------------------------------------


def test_an_unexpected_error_fails_the_import_with_a_plain_message(
    api, project, developer, no_broker, monkeypatch, django_capture_on_commit_callbacks, media_root
):
    client = api(developer)
    record_id = post_raw(client, project, SAMPLE.read_bytes()).json()["id"]

    def broken(**kwargs):
        raise RuntimeError("connection to db-7.internal:5432 refused")

    monkeypatch.setattr(services.reports, "report_import_file", broken)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_import(record_id)

    assert run.status == "failed"
    body = client.get(URL.format(project.pk) + f"/{record_id}").json()
    assert body["status"] == "failed"
    assert body["error"] == {
        "code": "unexpected_error",
        "message": f"The import failed with an unexpected error (job run #{run.pk}).",
        "problems": [],
    }
    assert list((media_root / f"secret_detection/reports/{project.pk}").iterdir()) == []


def test_a_finished_import_is_not_run_again(api, project, developer, no_broker, django_capture_on_commit_callbacks):
    client = api(developer)
    record_id = post_raw(client, project, SAMPLE.read_bytes()).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        run_import(record_id)
    assert services.report_import_run(report_import_id=record_id) == {"skipped": True}
    assert Finding.objects.count() == 8


# --- the cleanup schedule ---------------------------------------------------------------------


def test_cleanup_fails_stale_imports_deletes_orphans_and_prunes_old_records(
    api, project, developer, no_broker, settings, media_root, django_capture_on_commit_callbacks
):
    client = api(developer)
    stale_id = post_raw(client, project, SAMPLE.read_bytes()).json()["id"]
    stale_file = media_root / ReportImport.objects.get(pk=stale_id).file.name
    old_id = post_raw(client, project, SAMPLE.read_bytes()).json()["id"]
    ReportImport.objects.filter(pk=stale_id).update(
        created_at=timezone.now() - timedelta(seconds=settings.REPORT_IMPORT_FILE_RETENTION + 1)
    )
    ReportImport.objects.filter(pk=old_id).update(
        status="finished", created_at=timezone.now() - timedelta(days=settings.REPORT_IMPORT_RETENTION_DAYS, hours=1)
    )
    orphan = media_root / "secret_detection/incoming/report-abandoned.part"
    orphan.write_bytes(b"{")
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    fresh = media_root / "secret_detection/incoming/report-receiving.part"
    fresh.write_bytes(b"{")

    with django_capture_on_commit_callbacks(execute=True):
        result = services.report_imports_cleanup()

    assert result["expired"] == 1
    assert result["pruned"] == 1
    stale = ReportImport.objects.get(pk=stale_id)
    assert (stale.status, stale.error_code, stale.file.name) == ("failed", "expired", "")
    assert not stale_file.exists()
    assert not orphan.exists()
    assert fresh.exists()
    assert not ReportImport.objects.filter(pk=old_id).exists()


def test_the_jobs_are_declared_with_their_target_and_schedule(settings):
    from secret_detection import tasks

    assert tasks.import_report.target.model == "secret_detection.ReportImport"
    assert tasks.import_report.target.argument == "report_import_id"
    assert tasks.import_report.rerunnable is False
    assert tasks.cleanup_report_imports.cron == settings.REPORT_IMPORT_CLEANUP_CRON


def test_the_admin_and_the_job_console_show_an_import(client, admin_user, api, project, developer, no_broker):
    from django.urls import reverse

    record_id = post_raw(api(developer), project, SAMPLE.read_bytes()).json()["id"]
    client.force_login(admin_user)
    listing = client.get(reverse("admin:secret_detection_reportimport_changelist"))
    detail = client.get(reverse("admin:secret_detection_reportimport_change", args=[record_id]))
    assert listing.status_code == detail.status_code == 200
    assert "queued" in detail.content.decode()

    # The job console links the import's run to the import (the job's Target).
    run_id = ReportImport.objects.get(pk=record_id).job_run_id
    run_page = client.get(reverse("admin:jobs_jobrun_change", args=[run_id]))
    assert run_page.status_code == 200
    assert f"/admin/secret_detection/reportimport/{record_id}/change/" in run_page.content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_a_real_cluster_imports_an_uploaded_report(api, project, developer, media_root):
    """End to end: the web request stores the report, a real django-q2 cluster (sharing the
    media root) imports it, and the status says so."""
    from django.conf import settings as django_settings

    from tests.support.cluster import running_cluster, wait_until

    client = api(developer)
    env = {"MEDIA_ROOT": str(media_root)}
    with running_cluster(broker=django_settings.JOBS_BROKER, workers=1, env=env) as cluster:
        response = post_raw(client, project, SAMPLE.read_bytes())
        assert response.status_code == 202, response.content
        record_id = response.json()["id"]
        # Fails only when the import's run has not moved (status, progress, heartbeat) for 60 s.
        wait_until(
            lambda: not ReportImport.objects.filter(pk=record_id, status__in=ReportImport.ACTIVE).exists(),
            progress=lambda: list(
                map(str, JobRun.objects.values_list("status", "attempt", "heartbeat_at", "progress"))
            ),
            stall=60,
            message=lambda: f"the import did not end:\n{cluster.output()}",
        )
    body = client.get(URL.format(project.pk) + f"/{record_id}").json()
    assert body["status"] == "finished", body
    assert (body["result"]["findings"], body["result"]["created"]) == (8, 8)
    assert Finding.objects.filter(project=project).count() == 8
    assert not any((media_root / "secret_detection/reports").rglob("*.json"))


def test_a_browser_session_upload_already_parsed_for_its_csrf_check_is_stored_too(
    api, project, developer, no_broker, monkeypatch
):
    """With a session, the CSRF check reads the form's token, which makes Django parse the
    multipart body first: the file is then taken from Django's upload (a temporary file)."""
    from secret_detection import views

    def not_again(*args, **kwargs):
        raise AssertionError("the body was already parsed: it cannot be read again")

    monkeypatch.setattr(views, "DjangoMultiPartParser", not_again)
    client = api()
    client.enforce_csrf_checks = True
    client.handler.enforce_csrf_checks = True
    client.force_login(developer)
    token = "a" * 32
    client.cookies["csrftoken"] = token
    with SAMPLE.open("rb") as handle:
        response = client.post(
            URL.format(project.pk), {"csrfmiddlewaretoken": token, "file": handle}, format="multipart"
        )
    assert response.status_code == 202, response.content
    assert default_storage.open(ReportImport.objects.get().file.name).read() == SAMPLE.read_bytes()

    refused = client.post(URL.format(project.pk), {"file": io.BytesIO(b"{}")}, format="multipart")
    assert refused.status_code == 403  # no CSRF token: refused before anything is stored
    assert ReportImport.objects.count() == 1
