"""The export admin: the job list (phase, progress, retry state, errors), the detail page's
links and buttons, the actions, and archive downloads."""

from __future__ import annotations

import hashlib
import re
import socket
from datetime import timedelta

import pytest
import time_machine
from django.contrib.messages import get_messages
from django.core.files.storage import default_storage
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from exports import clients, services
from exports.models import ProjectExportArchive, ProjectExportJob
from project.jobs import JobRun
from project.jobs.testing import poll_controls
from tests.exports.conftest import run_attempt

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:exports_projectexportjob_changelist")
ARCHIVES = reverse("admin:exports_projectexportarchive_changelist")


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _levels(response) -> list[str]:
    return [m.level_tag for m in get_messages(response.wsgi_request)]


def _finished(project, user) -> ProjectExportJob:
    job = services.export_request(project=project, user=user)
    services.export_run(export_job_id=job.pk)
    job.refresh_from_db()
    return job


def _detail(job: ProjectExportJob) -> str:
    return reverse("admin:exports_projectexportjob_change", args=[job.pk])


def _act(job: ProjectExportJob, action: str) -> str:
    return reverse("admin:exports_projectexportjob_act", args=[job.pk, action])


def _buttons(page: str) -> list[str]:
    return re.findall(r'data-action="([a-z_]+)"', page)


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_job_list_shows_progress_duration_and_error_and_filters(staff, project, owner, maintainer, settings) -> None:
    settings.ALLOW_LOCAL_REQUESTS = True
    done = _finished(project, owner)
    failed = services.export_request(
        project=project, user=maintainer, upload_url="http://127.0.0.1:9/bucket?X-Amz-Signature=topsecret"
    )
    services.export_job_fail(export_job_id=failed.pk, code="upload_failed", error="Error uploading the project.")
    page = staff.get(JOBS).content.decode()
    assert "4/4 relations, 6 rows" in page
    assert '<b title="Error uploading the project.">upload_failed</b>' in page  # the message on hover
    assert re.search(r"field-duration_shown\">[0-9.]+ s</td>", page)
    assert (
        f'href="{reverse("admin:jobs_jobrun_change", args=[done.job_run_id])}" title="Run #{done.job_run_id}"' in page
    )
    assert "topsecret" not in page

    only_failed = staff.get(JOBS, {"status__exact": "failed"}).content.decode()
    assert f">#{failed.pk} acme/widgets</a>" in only_failed
    assert f">#{done.pk} acme/widgets</a>" not in only_failed
    today = done.created_at
    by_project = staff.get(
        JOBS,
        {
            "project__id__exact": project.pk,
            "created_at__year": today.year,
            "created_at__month": today.month,
            "created_at__day": today.day,
        },
    )
    assert by_project.status_code == 200
    assert f">#{done.pk} acme/widgets</a>" in by_project.content.decode()

    detail = staff.get(_detail(failed)).content.decode()
    assert "PUT to 127.0.0.1 (URL hidden)" in detail
    assert "topsecret" not in detail


def test_detail_page_has_a_readable_title_links_to_its_runs_and_no_save_buttons(staff, project, maintainer) -> None:
    job = _finished(project, maintainer)
    page = staff.get(_detail(job)).content.decode()
    assert f"Export of acme/widgets for maintainer (#{job.pk})" in page
    assert f'href="{reverse("admin:jobs_jobrun_change", args=[job.job_run_id])}"' in page
    runs = f"{reverse('admin:jobs_jobrun_changelist')}?job=exports.run&amp;kind=all&amp;target_id={job.pk}"
    assert f'<a href="{runs}">1 run(s) of this export</a>' in page
    assert 'name="_save"' not in page
    assert 'name="_continue"' not in page
    # A finished export can be retried and its archive deleted; there is nothing to cancel.
    assert _buttons(page) == ["retry", "delete_archive"]


def test_the_runs_link_lists_the_runs_of_the_export(staff, project, maintainer) -> None:
    job = _finished(project, maintainer)
    other = _finished(project, maintainer)
    response = staff.get(
        reverse("admin:jobs_jobrun_changelist"), {"job": "exports.run", "kind": "all", "target_id": job.pk}
    )
    assert [run.pk for run in response.context["cl"].result_list] == [job.job_run_id]
    assert other.job_run_id != job.job_run_id


def test_a_queued_export_offers_cancel_and_shows_waiting_for_a_slot(staff, project, maintainer) -> None:
    job = services.export_request(project=project, user=maintainer)
    page = staff.get(_detail(job)).content.decode()
    assert _buttons(page) == ["cancel"]
    JobRun.objects.filter(pk=job.job_run_id).update(deferrals=2)
    listing = staff.get(JOBS).content.decode()
    assert ">waiting for a slot</span>" in listing


def test_a_waiting_retry_shows_the_attempts_error_and_the_next_retry_time(staff, project, maintainer, settings) -> None:
    settings.ALLOW_LOCAL_REQUESTS = True
    settings.EXPORT_RETRY_DELAYS = (60,)
    job = services.export_request(project=project, user=maintainer, upload_url=f"http://127.0.0.1:{_unused_port()}/x")
    assert run_attempt(job) == "retried"
    run = JobRun.objects.get(pk=job.job_run_id)
    assert (run.status, run.attempt, run.error_code) == ("queued", 2, "upload_unavailable")

    with time_machine.travel(run.due_at - timedelta(seconds=12), tick=False):
        listing = staff.get(JOBS).content.decode()
        detail = staff.get(_detail(job)).content.decode()
    assert ">retry in 12 s</span>" in listing
    # The failed attempt's error: its code, the message on hover.
    assert '<b title="Could not upload the project to 127.0.0.1: ConnectionRefusedError.">upload_unavailable</b>' in (
        listing
    )
    assert ">in 12 s</time>" in detail  # the next retry
    assert "2 of 2" in detail  # the attempt
    assert "waiting for a retry" in detail  # the phase
    assert _buttons(detail) == ["cancel"]


def test_retry_action_queues_a_new_export_for_the_same_project_and_user(staff, project, maintainer) -> None:
    job = services.export_request(project=project, user=maintainer, description="Copy")
    services.export_job_fail(export_job_id=job.pk, code="x", error="x")
    active = services.export_request(project=project, user=maintainer)
    response = staff.post(JOBS, {"action": "retry", "_selected_action": [job.pk, active.pk]})
    new = ProjectExportJob.objects.latest("id")
    assert (new.project_id, new.user_id, new.description, new.status) == (project.pk, maintainer.pk, "Copy", "queued")
    assert new.job_run_id is not None
    assert _messages(response) == [
        f"Export of acme/widgets for maintainer (#{active.pk}): export #{active.pk} is still queued",
        "Queued 1 new export(s).",
    ]
    assert _levels(response) == ["warning", "success"]


def test_retry_of_only_active_exports_warns_that_nothing_was_done(staff, project, maintainer) -> None:
    active = services.export_request(project=project, user=maintainer)
    response = staff.post(JOBS, {"action": "retry", "_selected_action": [active.pk]})
    assert _messages(response)[-1] == "Nothing was queued."
    assert _levels(response)[-1] == "warning"
    assert ProjectExportJob.objects.count() == 1


def test_cancel_fails_a_queued_export_with_code_cancelled(staff, project, owner, maintainer) -> None:
    done = _finished(project, maintainer)
    queued = services.export_request(project=project, user=owner)
    response = staff.post(JOBS, {"action": "cancel", "_selected_action": [queued.pk, done.pk]})
    queued.refresh_from_db()
    assert (queued.status, queued.error_code) == ("failed", "cancelled")
    assert JobRun.objects.get(pk=queued.job_run_id).status == "cancelled"
    assert _messages(response) == [
        f"Export of acme/widgets for maintainer (#{done.pk}): Export #{done.pk} is already finished.",
        "Cancelled 1 export(s).",
    ]


def test_cancel_of_ended_exports_warns_that_nothing_was_done(staff, project, maintainer) -> None:
    done = _finished(project, maintainer)
    response = staff.post(_act(done, "cancel"), follow=True)
    assert response.redirect_chain[-1][0] == _detail(done)
    assert _messages(response)[-1] == "Nothing was cancelled."
    assert [m.level_tag for m in response.context["messages"]][-1] == "warning"


def test_cancel_button_stops_a_running_export_mid_upload(
    staff, project, maintainer, settings, monkeypatch, media_root
) -> None:
    """The button asks the run to stop; the export stops at its next progress report (in the
    middle of the upload here) and ends failed with code ``cancelled``."""
    settings.ALLOW_LOCAL_REQUESTS = True
    job = services.export_request(project=project, user=maintainer, upload_url="http://127.0.0.1:9/bucket")
    seen = {}

    def upload(*, url, method, body, size, on_progress):
        on_progress(size // 2)
        poll_controls()  # the watcher publishes the progress
        seen["list"] = staff.get(JOBS).content.decode()
        seen["cancel"] = staff.post(_act(job, "cancel"))
        seen["after"] = staff.get(JOBS).content.decode()
        poll_controls()  # the watcher takes in the cancel request
        on_progress(size)  # the next report stops the export
        raise AssertionError("the upload went on after the cancel")

    monkeypatch.setattr(clients, "archive_upload", upload)
    assert run_attempt(job) == "cancelled"

    assert ">uploading</span>" in seen["list"]
    assert "uploading to 127.0.0.1" in seen["list"]
    assert seen["cancel"].status_code == 302
    assert (
        _messages(seen["cancel"])[-1]
        == f"Run #{job.job_run_id} (exports.run) was asked to stop; it ends at its next heartbeat."
    )
    assert ">cancelling</span>" in seen["after"]
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "cancelled")
    assert JobRun.objects.get(pk=job.job_run_id).status == "cancelled"
    assert not ProjectExportArchive.objects.exists()


def test_delete_archive_action_removes_the_record_and_the_file(
    staff, project, maintainer, django_capture_on_commit_callbacks
) -> None:
    job = _finished(project, maintainer)
    archive = ProjectExportArchive.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(JOBS, {"action": "delete_archive", "_selected_action": [job.pk]})
    assert _messages(response) == ["Deleted 1 archive(s)."]
    assert not ProjectExportArchive.objects.exists()
    assert not default_storage.exists(archive.file.name)
    again = staff.post(JOBS, {"action": "delete_archive", "_selected_action": [job.pk]})
    assert _messages(again)[-2:] == ["The selected jobs have no archive to delete.", "Nothing was deleted."]
    assert _levels(again)[-2:] == ["warning", "warning"]


def test_staff_download_link_streams_the_archive(staff, project, maintainer) -> None:
    _finished(project, maintainer)
    archive = ProjectExportArchive.objects.get()
    link = reverse("admin:exports_projectexportarchive_download", args=[archive.pk])
    assert link in staff.get(ARCHIVES).content.decode()
    response = staff.get(link)
    assert response.status_code == 200
    assert hashlib.sha256(b"".join(response.streaming_content)).hexdigest() == archive.sha256


def test_download_link_is_for_staff_only(client, project, maintainer) -> None:
    _finished(project, maintainer)
    archive = ProjectExportArchive.objects.get()
    client.force_login(maintainer)
    response = client.get(reverse("admin:exports_projectexportarchive_download", args=[archive.pk]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_download_of_a_missing_file_says_so(staff, project, maintainer) -> None:
    _finished(project, maintainer)
    archive = ProjectExportArchive.objects.get()
    default_storage.delete(archive.file.name)
    response = staff.get(reverse("admin:exports_projectexportarchive_download", args=[archive.pk]))
    assert response.status_code == 302
    assert _messages(response) == [f"Archive #{archive.pk}: The project export file is not available yet"]


def test_archive_delete_action_and_delete_button_remove_files(
    staff, project, owner, maintainer, django_capture_on_commit_callbacks
) -> None:
    _finished(project, owner), _finished(project, maintainer)
    first, second = ProjectExportArchive.objects.order_by("id")
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(ARCHIVES, {"action": "delete_archives", "_selected_action": [first.pk]})
    assert _messages(response) == ["Deleted 1 archive(s)."]
    assert not default_storage.exists(first.file.name)
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(reverse("admin:exports_projectexportarchive_delete", args=[second.pk]), {"post": "yes"})
    assert not ProjectExportArchive.objects.exists()
    assert not default_storage.exists(second.file.name)


def test_archive_page_links_to_its_export_and_has_no_save_buttons(staff, project, maintainer) -> None:
    job = _finished(project, maintainer)
    archive = ProjectExportArchive.objects.get()
    page = staff.get(reverse("admin:exports_projectexportarchive_change", args=[archive.pk])).content.decode()
    assert f'href="{_detail(job)}">Export of acme/widgets for maintainer (#{job.pk})</a>' in page
    assert 'name="_save"' not in page


def test_the_job_list_costs_no_query_per_row(staff, project, owner, maintainer) -> None:
    _finished(project, owner)
    with CaptureQueriesContext(connection) as one:
        assert staff.get(JOBS).status_code == 200
    for _ in range(4):
        services.export_request(project=project, user=maintainer)
    with CaptureQueriesContext(connection) as five:
        response = staff.get(JOBS)
    assert len(response.context["cl"].result_list) == 5
    assert len(five) == len(one)
