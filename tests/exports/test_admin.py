"""The export admin: job list with filters and progress, actions, archives download."""

from __future__ import annotations

import hashlib

import pytest
from django.contrib.messages import get_messages
from django.core.files.storage import default_storage
from django.urls import reverse

from exports import services
from exports.models import ProjectExportArchive, ProjectExportJob
from project.jobs.models import JobRun

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:exports_projectexportjob_changelist")
ARCHIVES = reverse("admin:exports_projectexportarchive_changelist")


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _finished(project, user) -> ProjectExportJob:
    job = services.export_request(project=project, user=user)
    services.export_run(export_job_id=job.pk)
    job.refresh_from_db()
    return job


def test_job_list_shows_progress_duration_and_error_and_filters(staff, project, owner, maintainer, settings) -> None:
    settings.ALLOW_LOCAL_REQUESTS = True
    done = _finished(project, owner)
    failed = services.export_request(
        project=project, user=maintainer, upload_url="http://127.0.0.1:9/bucket?X-Amz-Signature=topsecret"
    )
    services.export_job_fail(export_job_id=failed.pk, code="upload_failed", error="Error uploading the project.")
    page = staff.get(JOBS).content.decode()
    assert "4/4 relations, 6 rows" in page
    assert "upload_failed: Error uploading the project." in page
    assert " s</td>" in page  # duration
    assert "topsecret" not in page

    only_failed = staff.get(JOBS, {"status__exact": "failed"}).content.decode()
    assert f">{failed.pk}</a>" in only_failed
    assert f">{done.pk}</a>" not in only_failed
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
    assert f">{done.pk}</a>" in by_project.content.decode()

    detail = staff.get(reverse("admin:exports_projectexportjob_change", args=[failed.pk])).content.decode()
    assert "PUT to 127.0.0.1 (URL hidden)" in detail
    assert "topsecret" not in detail


def test_retry_action_queues_a_new_export_for_the_same_project_and_user(staff, project, maintainer) -> None:
    job = services.export_request(project=project, user=maintainer, description="Copy")
    services.export_job_fail(export_job_id=job.pk, code="x", error="x")
    active = services.export_request(project=project, user=maintainer)
    response = staff.post(JOBS, {"action": "retry", "_selected_action": [job.pk, active.pk]})
    new = ProjectExportJob.objects.latest("id")
    assert (new.project_id, new.user_id, new.description, new.status) == (project.pk, maintainer.pk, "Copy", "queued")
    assert new.job_run_id is not None
    assert sorted(_messages(response)) == sorted(
        [f"Export #{job.pk}: queued export #{new.pk}.", f"Export #{active.pk}: export #{active.pk} is still queued"]
    )


def test_mark_failed_action_fails_queued_jobs_and_their_runs(staff, project, owner, maintainer) -> None:
    done = _finished(project, maintainer)
    queued = services.export_request(project=project, user=owner)
    response = staff.post(JOBS, {"action": "mark_failed", "_selected_action": [queued.pk, done.pk]})
    queued.refresh_from_db()
    assert (queued.status, queued.error_code, queued.error) == (
        "failed",
        "cancelled",
        "Marked failed by admin in the admin.",
    )
    assert JobRun.objects.get(pk=queued.job_run_id).status == "failed"
    assert _messages(response) == [
        "Marked 1 export job(s) failed.",
        "1 job(s) were already finished or failed and were left alone.",
    ]


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
    assert _messages(again)[-1] == "The selected jobs have no archive to delete."


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
