"""The after-export upload against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

from exports import services, status
from exports.models import ProjectExportArchive
from project.jobs import JobRun
from tests.exports.conftest import run_attempt
from tests.support.http_server import recording_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def local_requests(settings) -> None:
    settings.ALLOW_LOCAL_REQUESTS = True


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_archive_is_streamed_to_the_upload_url(project, maintainer, issues, local_requests, method) -> None:
    with recording_server() as server:
        job = services.export_request(
            project=project, user=maintainer, upload_url=server.url("/bucket/a.tar.gz?sig=abc"), upload_method=method
        )
        assert run_attempt(job) == "succeeded"
    job.refresh_from_db()
    archive = ProjectExportArchive.objects.get()
    (received,) = server.requests
    assert (received.method, received.path) == (method, "/bucket/a.tar.gz?sig=abc")
    assert (received.size, received.sha256) == (archive.size, archive.sha256)
    assert received.headers["content-type"] == "application/gzip"
    assert received.headers["content-length"] == str(archive.size)
    assert (job.status, job.uploaded_at is not None) == ("finished", True)


def test_upload_connects_to_the_checked_address_with_the_original_host(
    project, maintainer, local_requests, monkeypatch
) -> None:
    real = socket.getaddrinfo
    lookups = []

    def resolve(host, port, *args, **kwargs):
        if host == "uploads.example.test":
            lookups.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with recording_server() as server:
        url = f"http://uploads.example.test:{server.port}/drop"
        job = services.export_request(project=project, user=maintainer, upload_url=url)
        assert run_attempt(job) == "succeeded"
    (received,) = server.requests
    assert received.headers["host"] == f"uploads.example.test:{server.port}"
    assert lookups == ["uploads.example.test", "uploads.example.test"]  # at request time and at upload time


def test_non_2xx_answer_fails_the_job_with_the_code_and_publishes_nothing(project, maintainer, local_requests) -> None:
    with recording_server(status=403) as server:
        job = services.export_request(project=project, user=maintainer, upload_url=server.url())
        assert run_attempt(job) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "upload_failed")
    assert job.error == "Error uploading the project. Code 403: Forbidden"
    assert JobRun.objects.get(pk=job.job_run_id).attempt == 1  # not retried
    assert not ProjectExportArchive.objects.exists()
    assert status.export_state(project=project, user=maintainer).status == "failed"


def test_unreachable_upload_host_is_retried_then_fails(project, maintainer, local_requests, settings) -> None:
    settings.EXPORT_RETRY_DELAYS = (0,)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = services.export_request(project=project, user=maintainer, upload_url=f"http://127.0.0.1:{port}/x")
    assert run_attempt(job) == "retried"
    assert run_attempt(job) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "upload_unavailable")
    assert JobRun.objects.get(pk=job.job_run_id).attempt == 2
    assert job.error == "Could not upload the project to 127.0.0.1: ConnectionRefusedError."
    assert [h["error_code"] for h in JobRun.objects.get(pk=job.job_run_id).history] == [
        "upload_unavailable",
        "upload_unavailable",
    ]


def test_upload_url_that_turned_local_since_the_request_is_refused(project, maintainer, settings) -> None:
    settings.ALLOW_LOCAL_REQUESTS = True
    job = services.export_request(project=project, user=maintainer, upload_url="http://127.0.0.1:9/x")
    settings.ALLOW_LOCAL_REQUESTS = False
    assert run_attempt(job) == "failed"
    job.refresh_from_db()
    assert (job.error_code, job.error) == (
        "upload_url_blocked",
        "upload[url] is blocked: Requests to localhost are not allowed",
    )
