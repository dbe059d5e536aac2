"""The seven status scenarios of the export API, each as the exact sequence a client
polling ``GET /projects/:id/export`` sees. Jobs run here through the toolkit's runner; the
real-cluster versions (worker killed mid-export) are in test_cluster_e2e.py."""

from __future__ import annotations

import errno
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from exports import maintenance, services
from exports.models import ProjectExportArchive
from project.jobs import JobRun
from project.jobs.testing import recovery_sweep
from tests.exports.conftest import latest_job, read_archive, run_attempt
from tests.support.http_server import recording_server

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_rate_limits")]


def test_new_export_goes_none_queued_started_finished(poller, maintainer, project, issues, during_export) -> None:
    client = poller(maintainer, project)
    client.poll()
    client.request_export()
    client.poll()
    during_export(lambda relation: client.poll())
    assert run_attempt(latest_job(maintainer, project)) == "succeeded"
    body = client.poll()

    assert client.seen == ["none", "queued", "started", "finished"]
    assert body["_links"] == {
        "api_url": f"http://testserver/api/v4/projects/{project.pk}/export/download",
        "web_url": "http://testserver/acme/widgets/download_export",
    }
    download = client.download()
    assert download.status_code == 200
    members = read_archive(b"".join(download.streaming_content))
    assert b"Crash on start" in members["tree/project/issues.ndjson"]


def test_export_requested_over_a_finished_archive_shows_regeneration_then_finished(
    poller, maintainer, project, issues, during_export, django_capture_on_commit_callbacks
) -> None:
    client = poller(maintainer, project)
    client.request_export()
    run_attempt(latest_job(maintainer, project))
    old = ProjectExportArchive.objects.get(project=project, user=maintainer)
    old_bytes = b"".join(client.download().streaming_content)

    client.poll()
    client.request_export()
    body = client.poll()
    assert "_links" not in body  # GitLab shows links only when the status is finished
    downloads_meanwhile = []
    during_export(lambda relation: (client.poll(), downloads_meanwhile.append(_sha(client))))
    with django_capture_on_commit_callbacks(execute=True):
        run_attempt(latest_job(maintainer, project))
    client.poll()

    assert client.seen == ["finished", "regeneration_in_progress", "finished"]
    # While regenerating, the previous archive stayed downloadable, byte for byte.
    assert set(downloads_meanwhile) == {old.sha256}
    new = ProjectExportArchive.objects.get(project=project, user=maintainer)
    assert new.pk == old.pk
    assert new.file.name != old.file.name
    assert new.job_id == latest_job(maintainer, project).pk
    assert not new.file.storage.exists(old.file.name)  # replaced file removed after commit
    assert old_bytes != b""


def _sha(client) -> str:
    import hashlib

    response = client.download()
    assert response.status_code == 200
    return hashlib.sha256(b"".join(response.streaming_content)).hexdigest()


def test_failed_regeneration_keeps_the_previous_archive(poller, maintainer, project, issues, settings) -> None:
    client = poller(maintainer, project)
    client.request_export()
    run_attempt(latest_job(maintainer, project))
    old = ProjectExportArchive.objects.get(project=project, user=maintainer)

    settings.ALLOW_LOCAL_REQUESTS = True
    with recording_server(status=500) as server:
        client.poll()
        client.request_export(upload={"url": server.url(), "http_method": "PUT"})
        client.poll()
        assert run_attempt(latest_job(maintainer, project)) == "failed"
        body = client.poll()
    assert len(server.requests) == 1

    assert client.seen == ["finished", "regeneration_in_progress", "finished"]
    assert body["export_error"] == "Error uploading the project. Code 500: Internal Server Error"
    assert "_links" in body
    archive = ProjectExportArchive.objects.get(project=project, user=maintainer)
    assert (archive.file.name, archive.sha256) == (old.file.name, old.sha256)
    assert _sha(client) == old.sha256
    job = latest_job(maintainer, project)
    assert (job.status, job.error_code) == ("failed", "upload_failed")


def test_two_users_exporting_at_once_each_see_their_own_sequence(
    poller, maintainer, owner, project, issues, during_export
) -> None:
    mine, theirs = poller(maintainer, project), poller(owner, project)
    mine.poll(), theirs.poll()
    mine.request_export()
    theirs.request_export(description="Owner's copy")
    mine.poll(), theirs.poll()
    during_export(lambda relation: (mine.poll(), theirs.poll()))
    run_attempt(latest_job(maintainer, project))
    run_attempt(latest_job(owner, project))
    mine.poll(), theirs.poll()

    assert mine.seen == ["none", "queued", "started", "finished"]
    assert theirs.seen == ["none", "queued", "started", "finished"]
    archives = {a.user_id: a for a in ProjectExportArchive.objects.filter(project=project)}
    assert set(archives) == {maintainer.pk, owner.pk}
    assert archives[maintainer.pk].file.name != archives[owner.pk].file.name
    theirs_files = read_archive(b"".join(theirs.download().streaming_content))
    mine_files = read_archive(b"".join(mine.download().streaming_content))
    assert b"Owner's copy" in theirs_files["tree/project.json"]
    assert b"Widgets for everyone" in mine_files["tree/project.json"]


def test_export_failing_until_retries_run_out_goes_none_queued_started_failed(
    poller, maintainer, project, issues, settings, monkeypatch, during_export, media_root
) -> None:
    settings.EXPORT_RETRY_DELAYS = (0, 0)

    def broken_save(name, content, max_length=None):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(services.default_storage, "save", broken_save)
    client = poller(maintainer, project)
    client.poll()
    client.request_export()
    client.poll()
    during_export(lambda relation: client.poll())
    outcomes = []
    for _ in range(3):
        outcomes.append(run_attempt(latest_job(maintainer, project)))
        client.poll()

    assert outcomes == ["retried", "retried", "failed"]
    assert client.seen == ["none", "queued", "started", "failed"]
    job = latest_job(maintainer, project)
    assert (job.status, job.error_code) == ("failed", "storage_error")
    assert JobRun.objects.get(pk=job.job_run_id).attempt == 3
    assert job.error == "Could not store the archive: Input/output error."
    assert client.poll()["export_error"] == job.error
    assert list((media_root / "exports-tmp").iterdir()) == []


def test_dead_worker_is_failed_by_the_toolkits_recovery(poller, maintainer, project, settings) -> None:
    client = poller(maintainer, project)
    client.request_export()
    job = latest_job(maintainer, project)
    start = timezone.now()
    # The worker claimed the job and died on its last attempt: the run is "running" and
    # its heartbeat stopped.
    services.export_job_start(export_job_id=job.pk)
    JobRun.objects.filter(pk=job.job_run_id).update(status="running", heartbeat_at=start, attempt=4)
    client.poll()
    # The export run's own threshold (EXPORT_STUCK_AFTER), declared on the job, not the
    # toolkit's default (JOBS_LOST_AFTER).
    settings.EXPORT_STUCK_AFTER = settings.JOBS_LOST_AFTER * 10
    with time_machine.travel(start + timedelta(seconds=settings.EXPORT_STUCK_AFTER - 1), tick=False):
        assert recovery_sweep()["lost_failed"] == 0
        client.poll()
    with time_machine.travel(start + timedelta(seconds=settings.EXPORT_STUCK_AFTER + 1), tick=False):
        assert recovery_sweep()["lost_failed"] == 1
        body = client.poll()

    assert client.seen == ["started", "failed"]
    assert body["export_error"] == "The worker running the export stopped."
    assert JobRun.objects.get(pk=job.job_run_id).status == "failed"  # no worker will pick it up


def test_queued_job_whose_run_ended_is_failed_by_the_sweep(poller, maintainer, project, settings) -> None:
    client = poller(maintainer, project)
    client.request_export()
    job = latest_job(maintainer, project)
    JobRun.objects.filter(pk=job.job_run_id).update(status="succeeded")
    client.poll()
    assert maintenance.export_jobs_fail_stuck()["run_ended"] == 1
    body = client.poll()
    assert client.seen == ["queued", "failed"]
    assert body["export_error"] == "The export's job run ended without finishing it."


@pytest.mark.parametrize("state", ["queued", "started"])
def test_job_older_than_the_budget_is_failed_whatever_its_state(poller, maintainer, project, settings, state) -> None:
    client = poller(maintainer, project)
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        client.request_export()
    job = latest_job(maintainer, project)
    if state == "started":
        services.export_job_start(export_job_id=job.pk)
    client.poll()
    late = start + timedelta(seconds=settings.EXPORT_MAX_AGE + 60)
    with time_machine.travel(late, tick=False):
        # Alive and well by every other measure: fresh heartbeat, live run.
        JobRun.objects.filter(pk=job.job_run_id).update(heartbeat_at=late)
        result = maintenance.export_jobs_fail_stuck()
        body = client.poll()

    assert result["over_budget"] == 1
    assert client.seen == [state, "failed"]
    assert body["export_error"] == "The export did not finish within its 6 h budget."
