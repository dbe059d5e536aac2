"""The export job itself: state transitions, the concurrency gate, heartbeat and
cancellation, scratch files, and what the archive contains."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from exports import archive, services, status
from exports.models import ProjectExportArchive, ProjectExportJob
from project.jobs import Defer, JobRun, control
from project.jobs.testing import poll_controls, progress_report
from tests.exports.conftest import latest_job, read_archive, run_attempt

pytestmark = pytest.mark.django_db


def _job(project, user, run_status: str | None = None, **fields) -> ProjectExportJob:
    job = services.export_request(project=project, user=user)
    if fields:
        ProjectExportJob.objects.filter(pk=job.pk).update(**fields)
        job.refresh_from_db()
    if run_status:
        JobRun.objects.filter(pk=job.job_run_id).update(status=run_status)
    return job


def _running(project, user, **fields) -> ProjectExportJob:
    """An export a worker is writing now: started, its run running."""
    now = timezone.now()
    return _job(project, user, run_status="running", status="started", started_at=now, **fields)


# --- transitions ----------------------------------------------------------------------


def test_transitions_move_forward_only_and_say_when_refused(project, maintainer) -> None:
    job = _job(project, maintainer)
    assert services.export_job_finish(export_job_id=job.pk) is False  # queued → finished: no
    assert services.export_job_start(export_job_id=job.pk) is True
    assert services.export_job_start(export_job_id=job.pk) is False  # already started
    assert services.export_job_finish(export_job_id=job.pk) is True
    assert services.export_job_fail(export_job_id=job.pk, code="x", error="late") is False  # finished is final
    job.refresh_from_db()
    assert (job.status, job.error) == ("finished", "")
    assert job.finished_at is not None


def test_failed_is_final(project, maintainer) -> None:
    job = _job(project, maintainer)
    assert services.export_job_fail(export_job_id=job.pk, code="cancelled", error="stop") is True
    assert services.export_job_start(export_job_id=job.pk) is False
    assert services.export_job_finish(export_job_id=job.pk) is False
    job.refresh_from_db()
    assert (job.status, job.error_code, job.error) == ("failed", "cancelled", "stop")


def test_errors_are_stored_short_and_on_one_line(project, maintainer) -> None:
    job = _job(project, maintainer)
    services.export_job_fail(export_job_id=job.pk, code="boom", error="line one\nline\ttwo\x00 " + "x" * 400)
    job.refresh_from_db()
    assert len(job.error) == 300
    assert job.error.startswith("line one line two ")
    assert job.error.endswith("…")


def test_unexpected_errors_reach_the_client_without_internals(project, maintainer, monkeypatch) -> None:
    def broken(**kwargs):
        raise KeyError("SELECT secret FROM internals")

    monkeypatch.setattr(archive, "archive_write", broken)
    job = _job(project, maintainer)
    assert run_attempt(job) == "failed"
    job.refresh_from_db()
    assert job.error == f"The export failed with an unexpected error (job run #{job.job_run_id})."
    run = JobRun.objects.get(pk=job.job_run_id)
    assert "SELECT secret" in run.traceback  # the admin still sees everything


# --- the concurrency gate -------------------------------------------------------------


def test_gate_defers_a_job_while_the_running_limit_is_reached(project, owner, maintainer, settings) -> None:
    settings.EXPORT_MAX_CONCURRENT = 2
    for user in (owner, maintainer):
        _running(project, user)
    waiting = _job(project, maintainer)
    with pytest.raises(Defer) as deferred:
        services.export_run(export_job_id=waiting.pk)
    assert deferred.value.seconds == settings.EXPORT_SLOT_WAIT
    waiting.refresh_from_db()
    assert waiting.status == "queued"


def test_started_job_whose_run_ended_does_not_hold_a_slot(project, owner, maintainer, settings) -> None:
    settings.EXPORT_MAX_CONCURRENT = 1
    _job(project, owner, run_status="failed", status="started", started_at=timezone.now())
    job = _job(project, maintainer)
    assert services.export_run(export_job_id=job.pk)["size"] > 0


def test_gate_lets_the_oldest_waiting_job_start_first(project, owner, maintainer, settings) -> None:
    settings.EXPORT_MAX_CONCURRENT = 2
    older = _job(project, owner)
    newer = _job(project, maintainer)
    with pytest.raises(Defer):
        services.export_run(export_job_id=newer.pk)
    services.export_run(export_job_id=older.pk)
    services.export_run(export_job_id=newer.pk)
    older.refresh_from_db(), newer.refresh_from_db()
    assert older.started_at < newer.started_at


def test_older_job_without_a_live_run_does_not_block_the_queue(project, owner, maintainer) -> None:
    orphan = _job(project, owner)
    JobRun.objects.filter(pk=orphan.job_run_id).update(status="failed")
    job = _job(project, maintainer)
    assert services.export_run(export_job_id=job.pk)["size"] > 0


def test_retry_of_a_started_job_keeps_its_slot(project, owner, maintainer, settings) -> None:
    settings.EXPORT_MAX_CONCURRENT = 1
    _running(project, owner)
    # Its first attempt failed: started, its run queued for the retry.
    mine = _job(project, maintainer, status="started", started_at=timezone.now(), relations_done=2)
    services.export_run(export_job_id=mine.pk)
    mine.refresh_from_db()
    assert (mine.status, mine.relations_done) == ("finished", 4)


def test_a_deferred_job_waits_without_spending_an_attempt(project, owner, maintainer, settings) -> None:
    settings.EXPORT_MAX_CONCURRENT = 1
    _running(project, owner)
    job = _job(project, maintainer)
    assert run_attempt(job) == "deferred"
    run = JobRun.objects.get(pk=job.job_run_id)
    assert (run.status, run.attempt, run.deferrals) == ("queued", 1, 1)
    job.refresh_from_db()
    assert job.status == "queued"


def test_a_run_of_a_finished_or_failed_job_does_nothing(project, maintainer) -> None:
    job = _job(project, maintainer, status="failed")
    assert services.export_run(export_job_id=job.pk) == {"skipped": True}
    assert not ProjectExportArchive.objects.exists()


# --- heartbeat, cancellation, scratch files -------------------------------------------


def test_export_reports_its_progress_to_the_toolkit(project, maintainer, issues, during_export) -> None:
    reports = []
    during_export(lambda relation: reports.append((relation, progress_report())))
    job = _job(project, maintainer)
    assert run_attempt(job) == "succeeded"
    report = dict(reports)["labels"]  # reported as labels began: the project and its 5 members
    assert (report["done"], report["total"], report["note"]) == (2, 4, "exporting labels: 6 rows")
    run = JobRun.objects.get(pk=job.job_run_id)
    assert (run.progress["done"], run.progress["note"], run.progress["rows_written"]) == (
        4,
        "exporting issues: 11 rows",
        11,
    )
    job.refresh_from_db()
    assert (job.relations_done, job.relations_total, job.rows_written) == (4, 4, 11)


def test_export_cancelled_mid_run_stops_fails_and_publishes_nothing(
    project, maintainer, issues, during_export, media_root
) -> None:
    job = _job(project, maintainer)

    def cancel(relation: str) -> None:
        if relation == "labels":
            control.run_cancel(run_id=job.job_run_id, by="alice")
            poll_controls()  # the watcher's next round, on this test's connection

    during_export(cancel)
    assert run_attempt(job) == "cancelled"
    job.refresh_from_db()
    assert (job.status, job.error_code, job.error) == ("failed", "cancelled", "The export was cancelled by alice.")
    assert JobRun.objects.get(pk=job.job_run_id).status == "cancelled"
    assert not ProjectExportArchive.objects.exists()
    assert not list((media_root / "exports-tmp").iterdir())


def test_export_failed_by_an_admin_mid_run_publishes_nothing(project, maintainer, issues, during_export) -> None:
    job = _job(project, maintainer)
    during_export(
        lambda relation: (
            relation == "labels" and services.export_job_fail(export_job_id=job.pk, code="cancelled", error="stop")
        )
    )
    assert run_attempt(job) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "stop")
    assert not ProjectExportArchive.objects.exists()


def test_a_new_attempt_removes_what_a_killed_attempt_left(project, maintainer, media_root) -> None:
    job = _job(project, maintainer)
    leftover = media_root / "exports-tmp" / f"job-{job.pk}-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "archive.tar.gz.part").write_bytes(b"half an archive")
    other = media_root / "exports-tmp" / f"job-{job.pk + 1000}-cafe0000"
    other.mkdir()
    services.export_run(export_job_id=job.pk)
    assert not leftover.exists()
    assert other.exists()  # another job's scratch space is not ours to touch
    assert [p.name for p in (media_root / "exports-tmp").iterdir()] == [other.name]


def test_archive_file_name_is_built_from_ids_only(project, maintainer) -> None:
    job = services.export_request(project=project, user=maintainer, description="../../etc/passwd")
    services.export_run(export_job_id=job.pk)
    stored = ProjectExportArchive.objects.get().file.name
    assert stored.startswith(f"exports/{project.pk}/{maintainer.pk}/")
    assert stored.endswith(".tar.gz")
    assert ".." not in stored


# --- the archive ----------------------------------------------------------------------


def _archive_members(project, user) -> dict[str, bytes]:
    job = services.export_request(project=project, user=user)
    services.export_run(export_job_id=job.pk)
    stored = ProjectExportArchive.objects.get(project=project, user=user)
    with stored.file.open("rb") as handle:
        return read_archive(handle.read())


def test_archive_has_gitlabs_layout(project, maintainer, issues) -> None:
    members = _archive_members(project, maintainer)
    assert list(members) == [
        "VERSION",
        "GITLAB_VERSION",
        "GITLAB_REVISION",
        "tree/project.json",
        "tree/project/project_members.ndjson",
        "tree/project/labels.ndjson",
        "tree/project/issues.ndjson",
    ]
    assert members["VERSION"] == b"0.2.4"
    assert json.loads(members["tree/project.json"]) == {
        "description": "Widgets for everyone",
        "visibility_level": 0,
        "archived": False,
    }


def test_each_ndjson_line_is_one_relation_with_its_children_nested(project, maintainer, owner, issues) -> None:
    members = _archive_members(project, maintainer)
    lines = members["tree/project/issues.ndjson"].decode().splitlines()
    issues_out = [json.loads(line) for line in lines]
    assert [i["iid"] for i in issues_out] == [1, 2, 3]
    first, second, third = issues_out
    assert first["description"] == "Line one\nline two\ttabbed"
    assert second["title"] == 'Quote " and backslash \\ and unicode é ✓'
    assert second["description"] == "control \x01 char and \\n literal"
    assert [n["note"] for n in first["notes"]] == ["note 0\non 1", "note 1\non 1", "note 2\non 1"]
    assert first["notes"][0]["author"] == {"name": "owner"}
    assert first["notes"][1]["author"] == {"name": "maintainer"}
    assert {link["label"]["title"] for link in first["label_links"]} == {"bug", "ux"}
    assert [link["label"]["title"] for link in second["label_links"]] == ["ux"]
    assert second["label_links"][0]["label"]["description"] == 'say "hi"'
    assert (third["notes"], third["label_links"]) == ([], [])
    assert first["state"] == "opened"
    assert first["author_id"] == owner.pk

    labels = [json.loads(line) for line in members["tree/project/labels.ndjson"].decode().splitlines()]
    assert [(label["title"], label["type"]) for label in labels] == [("bug", "ProjectLabel"), ("ux", "ProjectLabel")]
    members_out = [json.loads(line) for line in members["tree/project/project_members.ndjson"].decode().splitlines()]
    assert {m["user"]["username"]: m["access_level"] for m in members_out} == {
        "owner": 50,
        "maintainer": 40,
        "developer": 30,
        "reporter": 20,
        "guest": 10,
    }


def test_archive_records_size_and_checksum_of_the_stored_file(project, maintainer, issues) -> None:
    import hashlib

    job = services.export_request(project=project, user=maintainer)
    result = services.export_run(export_job_id=job.pk)
    stored = ProjectExportArchive.objects.get()
    with stored.file.open("rb") as handle:
        data = handle.read()
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert result["rows"] == 1 + 5 + 2 + 3  # project.json, members, labels, issues
    assert stored.expires_at - stored.created_at == timedelta(hours=24)
    job.refresh_from_db()
    assert (job.relations_done, job.relations_total, job.rows_written) == (4, 4, 11)


def test_exports_of_other_projects_do_not_leak_in(project, maintainer, owner, issues) -> None:
    from project.models import Issue
    from project.services import project_create

    other = project_create(namespace_path="acme", path="secret", name="Secret", owner=owner)
    Issue.objects.create(project=other, iid=1, title="Other project's issue")
    members = _archive_members(project, maintainer)
    assert b"Other project" not in members["tree/project/issues.ndjson"]


def test_latest_job_decides_failed_status_not_an_older_failure(project, maintainer, issues) -> None:
    first = _job(project, maintainer)
    services.export_job_fail(export_job_id=first.pk, code="x", error="old failure")
    assert status.export_state(project=project, user=maintainer).status == "failed"
    second = _job(project, maintainer)
    services.export_run(export_job_id=second.pk)
    ProjectExportArchive.objects.update(expires_at=timezone.now())  # the archive has expired
    state = status.export_state(project=project, user=maintainer)
    assert state.status == "none"
    assert latest_job(maintainer, project).pk == second.pk
