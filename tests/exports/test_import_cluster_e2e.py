"""Export → download → import on a real django-q2 cluster, through the API; a worker
killed in the middle of an import; an import cancelled from the console's control."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from exports.importer import services
from exports.models import ProjectImportJob
from project.jobs import JobRun, control
from project.jobs.testing import recovery_sweep
from project.jobs.testing import run_is_lost as is_lost
from project.models import Issue, Label, Note
from tests.exports.importing import project_snapshot
from tests.support.cluster import ClusterProcess, running_cluster, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


@dataclass
class ImportCluster:
    process: ClusterProcess
    media: Path
    pause: Path

    def hold(self, project_id: int) -> Path:
        flag = self.pause / str(project_id)
        flag.touch()
        return flag

    def paused_worker(self, job: ProjectImportJob) -> int:
        marker = self.pause / f"{job.project_id}.paused"
        wait_until(marker.exists, progress=lambda: _run_state(job), message="the import did not reach its pause")
        return int(marker.read_text())


def _run_state(job: ProjectImportJob) -> tuple:
    run = JobRun.objects.filter(pk=job.job_run_id).values_list("status", "attempt", "heartbeat_at", "progress").first()
    return (ProjectImportJob.objects.get(pk=job.pk).status, run)


def _ended(job: ProjectImportJob) -> bool:
    """The import and its run both ended: the import's own status commits before the
    runner records the run's outcome, a moment later."""
    job.refresh_from_db()
    return not job.is_active and JobRun.objects.get(pk=job.job_run_id).status in JobRun.TERMINAL


@pytest.fixture(scope="module")
def import_cluster(django_db_setup, django_db_blocker, tmp_path_factory):
    media = tmp_path_factory.mktemp("import-media")
    pause = tmp_path_factory.mktemp("import-pause")
    env = {
        "MEDIA_ROOT": str(media),
        "JOBS_EXTRA_MODULES": "tests.support.jobs,tests.exports.import_hooks",
        "IMPORT_TEST_PAUSE_DIR": str(pause),
        "IMPORT_STUCK_AFTER": "3",
    }
    with django_db_blocker.unblock(), running_cluster(broker=settings.JOBS_BROKER, workers=2, env=env) as process:
        yield ImportCluster(process=process, media=media, pause=pause)


@pytest.fixture
def on_cluster(import_cluster, settings, no_rate_limits) -> ImportCluster:
    settings.MEDIA_ROOT = import_cluster.media
    settings.IMPORT_STUCK_AFTER = 3
    yield import_cluster
    for flag in import_cluster.pause.iterdir():
        flag.unlink()


def _exported(client, project) -> bytes:
    assert client.post(f"/api/v4/projects/{project.pk}/export").status_code == 202
    wait_until(
        lambda: client.get(f"/api/v4/projects/{project.pk}/export").json()["export_status"] == "finished",
        progress=lambda: client.get(f"/api/v4/projects/{project.pk}/export").json(),
        message="the export did not finish",
    )
    response = client.get(f"/api/v4/projects/{project.pk}/export/download")
    assert response.status_code == 200
    return b"".join(response.streaming_content)


def _archive_from_cluster(project, user) -> bytes:
    """An export written by the cluster (it takes every enqueued run)."""
    from exports import services as exports
    from exports.models import ProjectExportJob

    export = exports.export_request(project=project, user=user)

    def done() -> bool:
        return ProjectExportJob.objects.get(pk=export.pk).status in ("finished", "failed")

    wait_until(done, progress=lambda: ProjectExportJob.objects.filter(pk=export.pk).values().first())
    with export.archives.get().file.open("rb") as handle:
        return handle.read()


def test_export_download_import_through_the_api_on_a_cluster(on_cluster, api, admin_user, project, issues) -> None:
    client = api(admin_user)
    data = _exported(client, project)
    response = client.post(
        "/api/v4/projects/import",
        {"file": SimpleUploadedFile("e.tar.gz", data), "path": "copy", "namespace": "imported"},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    project_id = response.json()["id"]
    status_url = f"/api/v4/projects/{project_id}/import"
    seen = []

    def finished() -> bool:
        status = client.get(status_url).json()
        if not seen or seen[-1] != status["import_status"]:
            seen.append(status["import_status"])
        return status["import_status"] in ("finished", "failed")

    job = ProjectImportJob.objects.get(project_id=project_id)
    wait_until(finished, progress=lambda: _run_state(job), message="the import did not end")
    assert seen[-1] == "finished", on_cluster.process.output()
    assert set(seen) <= {"scheduled", "started", "finished"}
    job.refresh_from_db()
    assert project_snapshot(job.project, without_member=admin_user) == project_snapshot(project)
    assert client.get(status_url).json()["stats"]["imported"]["notes"] == 6


def test_worker_killed_mid_import_reruns_and_never_finishes_half(on_cluster, admin_user, project, issues) -> None:
    data = _archive_from_cluster(project, admin_user)
    job = services.import_request(
        user=admin_user, file=SimpleUploadedFile("e.tar.gz", data), path="killed", namespace="imported"
    )
    on_cluster.hold(job.project_id)
    worker = on_cluster.paused_worker(job)
    # Every relation is written, inside the transaction: nobody else sees any of it.
    assert not Issue.objects.filter(project_id=job.project_id).exists()

    os.kill(worker, signal.SIGKILL)
    run = JobRun.objects.get(pk=job.job_run_id)
    # Lost once its heartbeat is older than the job's lost_after: a clock, so a plain deadline.
    wait_until(
        lambda: is_lost(JobRun.objects.get(pk=run.pk)), stall=30, message="the killed run's heartbeat stayed fresh"
    )
    recovery_sweep()
    wait_until(lambda: _ended(job), progress=lambda: _run_state(job), message="the re-run did not end")
    assert job.status == "finished", on_cluster.process.output()
    run.refresh_from_db()
    assert [(h["outcome"], h["error_code"]) for h in run.history] == [("retried", "worker_lost"), ("succeeded", "")]
    assert Issue.objects.filter(project_id=job.project_id).count() == 3
    assert Note.objects.filter(issue__project_id=job.project_id).count() == 6
    assert Label.objects.filter(project_id=job.project_id).count() == 2
    assert list(on_cluster.media.glob(f"imports-tmp/job-{job.pk}-*")) == []


def test_cancelling_a_running_import_rolls_it_back(on_cluster, admin_user, project, issues) -> None:
    data = _archive_from_cluster(project, admin_user)
    job = services.import_request(
        user=admin_user, file=SimpleUploadedFile("e.tar.gz", data), path="cancelled", namespace="imported"
    )
    on_cluster.hold(job.project_id)
    on_cluster.paused_worker(job)
    control.run_cancel(run_id=job.job_run_id, by="test")
    wait_until(lambda: _ended(job), progress=lambda: _run_state(job), message="the cancelled import did not end")
    assert (job.status, job.error_code) == ("failed", "cancelled")
    assert not Issue.objects.filter(project_id=job.project_id).exists()
