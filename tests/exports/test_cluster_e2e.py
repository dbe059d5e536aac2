"""Exports on a real django-q2 cluster: polling a running export, the concurrency gate,
and a worker killed with SIGKILL in the middle of writing an archive.

The cluster loads ``tests.support.export_hooks``, which can hold an export right after it
wrote the issues to its scratch directory, so the tests look at (or kill) a job that is
genuinely half-way through.
"""

from __future__ import annotations

import os
import signal
import tarfile
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.models import F

from exports import maintenance, services
from exports.models import ProjectExportArchive, ProjectExportJob
from project.jobs import JobRun
from project.jobs.testing import recovery_sweep
from project.jobs.testing import run_is_lost as is_lost
from project.locks import lock_key
from project.services import project_create
from tests.exports.conftest import read_archive
from tests.support.cluster import ClusterProcess, running_cluster, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


@dataclass
class ExportCluster:
    process: ClusterProcess
    media: Path
    pause: Path

    def hold(self, project) -> Path:
        """Make the next export of ``project`` stop half-way (first attempt only)."""
        flag = self.pause / str(project.pk)
        flag.touch()
        return flag

    def paused_worker(self, project, timeout: float = 20) -> int:
        marker = self.pause / f"{project.pk}.paused"
        wait_for(marker.exists, timeout=timeout, message=f"export of {project} did not reach its pause point")
        return int(marker.read_text())

    def scratch(self, job: ProjectExportJob) -> list[Path]:
        return list((self.media / "exports-tmp").glob(f"job-{job.pk}-*"))


@pytest.fixture(scope="module")
def export_cluster(django_db_setup, django_db_blocker, tmp_path_factory):
    media = tmp_path_factory.mktemp("export-media")
    pause = tmp_path_factory.mktemp("export-pause")
    env = {
        "MEDIA_ROOT": str(media),
        "JOBS_EXTRA_MODULES": "tests.support.jobs,tests.support.export_hooks",
        "EXPORT_TEST_PAUSE_DIR": str(pause),
        "EXPORT_SLOT_WAIT": "0.2",
        "EXPORT_MAX_CONCURRENT": "2",
    }
    with django_db_blocker.unblock(), running_cluster(broker=settings.JOBS_BROKER, workers=3, env=env) as process:
        yield ExportCluster(process=process, media=media, pause=pause)


@pytest.fixture
def on_cluster(export_cluster, settings, no_rate_limits) -> ExportCluster:
    settings.MEDIA_ROOT = export_cluster.media
    yield export_cluster
    for flag in export_cluster.pause.iterdir():
        flag.unlink()


def _job_status(job: ProjectExportJob, *statuses: str) -> ProjectExportJob | None:
    job.refresh_from_db()
    return job if job.status in statuses else None


def test_polling_client_sees_none_queued_started_finished(on_cluster, poller, maintainer, project, issues) -> None:
    client = poller(maintainer, project)
    client.poll()
    on_cluster.hold(project)
    # Holding the gate's lock keeps the job queued long enough to be seen queued.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [lock_key(services.GATE_LOCK)])
        try:
            client.request_export()
            client.poll()
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_key(services.GATE_LOCK)])
    on_cluster.paused_worker(project)
    # Half-way: the worker's progress reaches the run, and the API shows it. The watcher
    # publishes the latest report once per poll interval: the first one shown may be from
    # before the pause (project.json alone), so wait for project.json and members at least.
    wait_for(
        lambda: ((client.poll()["export_progress"] or {}).get("rows_written") or 0) >= 1 + 5,
        timeout=10,
        message="the export's progress never showed project.json and its members",
    )
    assert client.poll()["export_progress"]["phase"] == "exporting"
    (on_cluster.pause / str(project.pk)).unlink()
    wait_for(lambda: client.poll()["export_status"] == "finished", timeout=20)

    assert client.seen == ["none", "queued", "started", "finished"]
    job = ProjectExportJob.objects.get()
    run = JobRun.objects.get(pk=job.job_run_id)
    assert (run.attempt, run.task_id != "") == (1, True)  # django-q2's task
    assert (job.relations_done, job.rows_written) == (4, 1 + 5 + 2 + 3)
    archive = ProjectExportArchive.objects.get()
    assert (
        b"Crash on start" in read_archive(b"".join(client.download().streaming_content))["tree/project/issues.ndjson"]
    )
    assert archive.size > 0


def test_worker_killed_mid_export_is_re_run_and_leaves_nothing_behind(
    on_cluster, poller, maintainer, project, issues
) -> None:
    client = poller(maintainer, project)
    on_cluster.hold(project)
    job = services.export_request(project=project, user=maintainer)
    worker = on_cluster.paused_worker(project)
    client.poll()
    (scratch,) = on_cluster.scratch(job)
    assert (scratch / "archive.tar.gz.part").exists()  # a half-written archive on disk…
    assert not ProjectExportArchive.objects.exists()  # …that nobody can see

    os.kill(worker, signal.SIGKILL)
    run = JobRun.objects.get(pk=job.job_run_id)
    wait_for(lambda: is_lost(JobRun.objects.get(pk=run.pk)), timeout=15, message="heartbeat still fresh")
    # The minute schedule (or, on the ORM broker, redelivery) would do this too; run it now.
    recovery_sweep()
    # The export's status commits before the runner records the run's outcome.
    wait_for(
        lambda: _job_status(job, "finished", "failed") and JobRun.objects.get(pk=run.pk).status in JobRun.TERMINAL,
        timeout=30,
    )
    client.poll()

    job.refresh_from_db()
    assert job.status == "finished", on_cluster.process.output()
    run.refresh_from_db()
    assert [(h["outcome"], h["error_code"]) for h in run.history] == [("retried", "worker_lost"), ("succeeded", "")]
    assert client.seen == ["started", "finished"]
    assert on_cluster.scratch(job) == []
    archive = ProjectExportArchive.objects.get()
    with archive.file.open("rb") as handle:
        members = read_archive(handle.read())
    assert len(members["tree/project/issues.ndjson"].splitlines()) == 3


def test_worker_killed_on_its_last_attempt_fails_the_export_and_cleans_up(
    on_cluster, poller, maintainer, project, issues, settings
) -> None:
    client = poller(maintainer, project)
    on_cluster.hold(project)
    job = services.export_request(project=project, user=maintainer)
    worker = on_cluster.paused_worker(project)
    client.poll()
    # As if its earlier attempts had failed: no retry is left.
    JobRun.objects.filter(pk=job.job_run_id).update(attempt=F("max_attempts"))
    os.kill(worker, signal.SIGKILL)
    run = JobRun.objects.get(pk=job.job_run_id)
    wait_for(lambda: is_lost(JobRun.objects.get(pk=run.pk)), timeout=15, message="heartbeat still fresh")
    # The sweep fails it, unless its message came back first (its lease ended while the
    # worker was held), which recovers it the same way.
    recovery_sweep()
    wait_for(lambda: JobRun.objects.get(pk=run.pk).status == "failed", timeout=15, message="the run did not fail")
    maintenance.export_jobs_fail_stuck()  # removes the scratch directory of the stopped job
    client.poll()

    assert client.seen == ["started", "failed"]
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "The worker running the export stopped.")
    assert JobRun.objects.get(pk=job.job_run_id).status == "failed"  # nobody will re-run it
    assert on_cluster.scratch(job) == []
    assert not ProjectExportArchive.objects.exists()


def test_gate_runs_two_exports_at_once_and_starts_the_oldest_waiting_next(on_cluster, maintainer) -> None:
    projects = [project_create(namespace_path="gate", path=f"p{n}", name=f"P{n}", owner=maintainer) for n in range(3)]
    for project in projects:
        on_cluster.hold(project)
    first, second, third = [services.export_request(project=p, user=maintainer) for p in projects]
    on_cluster.paused_worker(projects[0]), on_cluster.paused_worker(projects[1])
    # Three workers, but only two slots: the newest job keeps being deferred.
    wait_for(lambda: JobRun.objects.get(pk=third.job_run_id).deferrals >= 2, timeout=10)
    assert _job_status(third, "queued")

    (on_cluster.pause / str(projects[0].pk)).unlink()
    wait_for(lambda: _job_status(first, "finished"), timeout=20)
    on_cluster.paused_worker(projects[2])
    third.refresh_from_db()
    assert third.started_at >= first.finished_at
    for project in projects[1:]:
        (on_cluster.pause / str(project.pk)).unlink()
    for job in (second, third):
        wait_for(lambda job=job: _job_status(job, "finished"), timeout=20)


def test_export_project_command_waits_with_a_progress_bar(on_cluster, maintainer, project, issues) -> None:
    out, err = StringIO(), StringIO()
    call_command("export_project", str(project.pk), "--user", "maintainer", "--wait", stdout=out, stderr=err)
    archive = ProjectExportArchive.objects.get()
    assert f"finished: {archive.filename}, {archive.size} bytes, sha256 {archive.sha256}" in out.getvalue()
    assert "export #" in err.getvalue()  # tqdm's bar
    with tarfile.open(fileobj=archive.file.open("rb"), mode="r:gz") as tar:
        assert "tree/project.json" in tar.getnames()
