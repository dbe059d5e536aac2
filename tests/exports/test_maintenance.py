"""The schedules (stuck sweep, archive cleanup, job pruning) and their commands."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_q.models import Schedule

from exports import maintenance, services, tasks
from exports.models import ProjectExportArchive, ProjectExportJob
from project.jobs import JobRun
from project.jobs.schedules import schedules_sync

pytestmark = pytest.mark.django_db


def _export(project, user) -> ProjectExportArchive:
    job = services.export_request(project=project, user=user)
    services.export_run(export_job_id=job.pk)
    return ProjectExportArchive.objects.get(project=project, user=user)


def test_schedules_are_declared_with_their_settings(settings) -> None:
    schedules_sync()
    crons = dict(Schedule.objects.filter(name__startswith="exports.").values_list("name", "cron"))
    assert crons == {
        "exports.fail_stuck": "30 * * * *",
        "exports.cleanup_archives": "0 * * * *",
        "exports.prune_jobs": "30 3 * * *",
    }
    assert tasks.fail_stuck.cron == settings.EXPORT_STUCK_SWEEP_CRON


def test_sweep_leaves_healthy_and_waiting_jobs_alone(project, owner, maintainer, settings) -> None:
    now = timezone.now()
    fresh = services.export_request(project=project, user=owner)  # queued, run waiting
    waiting_retry = services.export_request(project=project, user=maintainer)
    ProjectExportJob.objects.filter(pk=waiting_retry.pk).update(status="started")
    # Its run waits for a retry delay: not dead, just waiting.
    JobRun.objects.filter(pk=waiting_retry.job_run_id).update(status="queued", attempt=2)
    with time_machine.travel(now + timedelta(minutes=30), tick=False):
        result = maintenance.export_jobs_fail_stuck()
    assert (result["over_budget"], result["run_ended"]) == (0, 0)
    assert set(ProjectExportJob.objects.values_list("status", flat=True)) == {"queued", "started"}
    assert fresh.pk


def test_sweep_removes_scratch_directories_of_stopped_jobs_only(project, owner, maintainer, media_root) -> None:
    running = services.export_request(project=project, user=owner)
    stopped = services.export_request(project=project, user=maintainer)
    services.export_job_fail(export_job_id=stopped.pk, code="x", error="x")
    root = media_root / "exports-tmp"
    (root / f"job-{running.pk}-aaaa").mkdir(parents=True)
    (root / f"job-{stopped.pk}-bbbb").mkdir()
    (root / f"job-{stopped.pk}-bbbb" / "archive.tar.gz.part").write_bytes(b"x")
    (root / "job-999999-cccc").mkdir()  # its job row is gone
    (root / "stray-file").write_bytes(b"x")
    assert maintenance.export_jobs_fail_stuck()["workdirs_removed"] == 3
    assert [p.name for p in root.iterdir()] == [f"job-{running.pk}-aaaa"]


def test_scratch_directory_older_than_the_budget_goes_even_if_its_job_looks_active(
    project, owner, media_root, settings
) -> None:
    job = services.export_request(project=project, user=owner)
    old = media_root / "exports-tmp" / f"job-{job.pk}-aaaa"
    old.mkdir(parents=True)
    past = time.time() - settings.EXPORT_MAX_AGE - 60
    os.utime(old, (past, past))
    assert maintenance.workdirs_cleanup() == 1


def test_cleanup_deletes_archives_older_than_24_hours_with_their_files(
    project, owner, maintainer, django_capture_on_commit_callbacks
) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        old = _export(project, owner)
    with time_machine.travel(start + timedelta(hours=20), tick=False):
        recent = _export(project, maintainer)
    with (
        time_machine.travel(start + timedelta(hours=24, seconds=1), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = maintenance.export_archives_cleanup()
    assert (result["archives_deleted"], result["bytes_freed"]) == (1, old.size)
    assert list(ProjectExportArchive.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not default_storage.exists(old.file.name)
    assert default_storage.exists(recent.file.name)


def test_cleanup_deletes_orphaned_files_after_a_grace_period(project, owner) -> None:
    kept = _export(project, owner)
    orphan = default_storage.save(f"exports/{project.pk}/{owner.pk}/orphan.tar.gz", ContentFile(b"left behind"))
    assert maintenance.export_archives_cleanup()["orphans_deleted"] == 0  # may be mid-publish
    with time_machine.travel(timezone.now() + timedelta(hours=2), tick=False):
        # The kept archive is past its 24 h only at +24 h; at +2 h just the orphan goes.
        assert maintenance.export_archives_cleanup()["orphans_deleted"] == 1
    assert not default_storage.exists(orphan)
    assert default_storage.exists(kept.file.name)


def test_prune_deletes_finished_jobs_not_updated_for_7_days_in_batches(project, owner, maintainer) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        old_jobs = [services.export_request(project=project, user=owner) for _ in range(5)]
        for job in old_jobs:
            services.export_job_fail(export_job_id=job.pk, code="x", error="x")
        still_active = services.export_request(project=project, user=maintainer)
    with time_machine.travel(start + timedelta(days=6), tick=False):
        recent = services.export_request(project=project, user=maintainer)
        services.export_job_fail(export_job_id=recent.pk, code="x", error="x")
    with time_machine.travel(start + timedelta(days=7, minutes=1), tick=False):
        assert maintenance.export_jobs_prune(batch_size=2) == 5
    assert set(ProjectExportJob.objects.values_list("pk", flat=True)) == {still_active.pk, recent.pk}


def test_prune_keeps_the_archive_of_a_pruned_job(project, owner) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        archive = _export(project, owner)
    with time_machine.travel(start + timedelta(days=8), tick=False):
        assert maintenance.export_jobs_prune() == 1
    archive.refresh_from_db()
    assert archive.job_id is None


def _run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_commands_say_what_they_did(project, owner, maintainer, django_capture_on_commit_callbacks) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        _export(project, owner)
        services.export_request(project=project, user=maintainer)
    with time_machine.travel(start + timedelta(days=8), tick=False):
        assert _run("fail_stuck_export_jobs") == (
            "Failed 1 stuck export job(s): 1 over the 6 h budget, 0 whose run had ended. "
            "Removed 0 scratch director(ies) of stopped jobs."
        )
        with django_capture_on_commit_callbacks(execute=True):
            assert _run("cleanup_export_archives") == (
                "Deleted 1 archive(s) older than 24 h (0.0 MB), 0 orphaned file(s) and 0 scratch director(ies)."
            )
        # The job the sweep just failed was updated now: it stays for another 7 days.
        assert _run("prune_export_jobs").startswith("Deleted 1 export job(s) last updated before ")


def test_prune_command_refuses_a_bad_batch_size() -> None:
    with pytest.raises(CommandError, match="--batch-size must be at least 1"):
        call_command("prune_export_jobs", "--batch-size", "0")


def test_export_project_command_queues_an_export(project, maintainer) -> None:
    assert _run("export_project", "acme/widgets", "--user", "maintainer").startswith("Queued export #")
    job = ProjectExportJob.objects.get()
    assert (job.project_id, job.user_id, job.status) == (project.pk, maintainer.pk, "queued")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["acme/widgets", "--user", "nobody"], "no active user named 'nobody'"),
        (["acme/nothing", "--user", "maintainer"], "maintainer cannot export 'acme/nothing': 404 Project Not Found"),
        (["acme/widgets", "--user", "developer"], "developer cannot export 'acme/widgets': 403 Forbidden"),
        (["acme/widgets", "--user", "outsider"], "outsider cannot export 'acme/widgets': 404 Project Not Found"),
        (["acme/widgets", "--user", "maintainer", "--wait", "--timeout", "0"], "--timeout must be positive"),
    ],
)
def test_export_project_command_refuses_bad_input(project, outsider, args, message) -> None:
    with pytest.raises(CommandError) as error:
        call_command("export_project", *args, stdout=StringIO(), stderr=StringIO())
    assert str(error.value) == message
