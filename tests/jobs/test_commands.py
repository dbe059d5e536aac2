"""manage.py jobs_status and jobs_control: the job console from a terminal."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from project.jobs import JobRun
from project.jobs.management.commands import jobs_status
from project.jobs.models import ClusterHeartbeat, JobPause
from tests.support import jobs as probes

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _orm_broker(settings) -> None:
    settings.JOBS_BROKER = "orm"


@pytest.fixture
def alive_cluster() -> ClusterHeartbeat:
    return ClusterHeartbeat.objects.create(
        key="host-a:4242", cluster_name="default", host="host-a", pid=4242, broker="orm", workers=4
    )


def status(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("jobs_status", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


# --- jobs_status ------------------------------------------------------------------------


def test_jobs_status_says_all_is_well_first_and_shows_every_section(alive_cluster) -> None:
    out, err = status()
    lines = out.splitlines()
    assert lines[0] == "All is well."
    assert lines[1].startswith("Job status at ")
    for heading in ("Jobs", "Clusters", "Schedules", "Backlogs", "Switches"):
        assert heading in lines
    assert _line(out, "JOB ").split() == [
        "JOB", "QUEUED", "RETRY", "RUN", "NO", "HB", "PAUSED", "1H", "S/F/C", "24H", "S/F/C", "P50/P95",
    ]  # fmt: skip
    assert _line(out, "probe.ok ").split()[1:] == ["0", "0", "0", "0", "0/0/0", "0/0/0", "-"]
    cluster = _line(out, "default ").split()
    assert cluster[:5] + cluster[6:] == ["default", "host-a", "4242", "orm", "4", "ago", "alive"]
    assert _line(out, "Broker orm, queue ").endswith("oldest due run: none")
    schedules = out.splitlines().index("Schedules")
    assert _line("\n".join(out.splitlines()[schedules:]), "jobs.recover ").split()[1:6] == ["*"] * 5  # its cron
    assert "Catalog sync events pending" in out
    assert "Exports: Project exports" in out
    assert err == ""
    assert max(len(line) for line in lines) <= 120


def test_jobs_status_lists_the_problems_on_its_first_line_and_check_exits_1() -> None:
    JobRun.objects.create(
        name="probe.permanent", status="failed", error_code="boom", error="it broke", finished_at=timezone.now()
    )
    out, _ = status()
    assert out.splitlines()[0] == "Problems: no job cluster is alive; 1 failed in the last hour."
    assert "No cluster has reported. Start one with: manage.py qcluster" in out
    with pytest.raises(CommandError, match="no job cluster is alive; 1 failed in the last hour") as raised:
        status("--check")
    assert raised.value.returncode == 1


def test_jobs_status_check_passes_when_all_is_well(alive_cluster) -> None:
    out, _ = status("--check")
    assert out.startswith("All is well.")


def test_jobs_status_shows_retries_silent_runs_pauses_timings_and_the_latest_error_clipped(alive_cluster) -> None:
    now = timezone.now()
    JobRun.objects.create(name="probe.flaky", attempt=2, due_at=now + timedelta(seconds=90))
    JobRun.objects.create(name="probe.flaky")
    JobRun.objects.create(
        name="probe.slow",
        status="running",
        started_at=now - timedelta(minutes=5),
        heartbeat_at=now - timedelta(hours=1),
    )
    for seconds in (2, 4):
        JobRun.objects.create(
            name="probe.ok", status="succeeded", started_at=now - timedelta(seconds=seconds), finished_at=now
        )
    JobRun.objects.create(
        name="probe.permanent",
        status="failed",
        error_code="bad_input",
        error="line one\nline two " + "the partner said no " * 20,
        finished_at=now - timedelta(hours=2),
    )
    JobPause.objects.create(name="probe.once", paused_by="alice")

    out, _ = status()

    assert out.splitlines()[0] == "Problems: 1 running without heartbeat; 1 job(s) paused."
    flaky = _line(out, "probe.flaky ").split()
    assert flaky[1:5] == ["1", "1", "next", "in"]  # 1 queued, 1 retry waiting, next in ~90 s
    assert flaky[5] in {"1m30s", "1m29s", "1m28s"}
    slow = _line(out, "probe.slow ").split()
    assert slow[1:5] == ["0", "0", "1", "1"]  # running 1, without heartbeat 1
    assert _line(out, "probe.once ").split()[5] == "yes"
    ok = _line(out, "probe.ok ").split()
    assert ok[-3:] == ["2/0/0", "2/0/0", "3.0s/3.9s"]
    permanent = _line(out, "probe.permanent ").split()
    assert permanent[-3:] == ["0/0/0", "0/1/0", "-"]
    error = out.splitlines()[out.splitlines().index(_line(out, "probe.permanent ")) + 1]
    assert error.startswith("  └ latest error, run #")
    assert "ago, bad_input: line one line two the partner said no the" in error
    assert len(error) == 120
    assert error.endswith("…")
    assert max(len(line) for line in out.splitlines()) <= 120


def test_jobs_status_json_prints_the_overview_as_pure_json(alive_cluster) -> None:
    JobPause.objects.create(name="probe.once", paused_by="alice")
    out, err = status("--json")
    data = json.loads(out)
    assert set(data) >= {"now", "problems", "totals", "jobs", "clusters", "broker", "schedules", "backlogs", "switches"}
    assert data["problems"] == ["1 job(s) paused"]
    assert data["clusters"][0]["host"] == "host-a"
    assert next(job for job in data["jobs"] if job["name"] == "probe.once")["paused"] is True
    assert err == ""


def test_jobs_status_json_with_check_keeps_stdout_pure_json_and_exits_1() -> None:
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("jobs_status", "--json", "--check", stdout=out, stderr=err)
    assert raised.value.returncode == 1
    assert json.loads(out.getvalue())["problems"] == ["no job cluster is alive"]


def test_jobs_status_watch_clears_the_screen_and_redraws_each_frame(alive_cluster, monkeypatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(jobs_status.time, "sleep", sleeps.append)
    out, _ = status("--watch", "5", "--frames", "2")
    frames = out.split(jobs_status.CLEAR)
    assert frames[0] == ""
    assert len(frames) == 3
    for frame in frames[1:]:
        assert frame.startswith("All is well.\nJob status at ")
        assert "refreshes every 5 s, Ctrl-C to stop" in frame
    assert sleeps == [5.0]  # between the frames, not after the last


def test_jobs_status_watch_defaults_to_two_seconds_and_ctrl_c_ends_it_cleanly(alive_cluster, monkeypatch) -> None:
    def interrupted(seconds: float) -> None:
        assert seconds == 2.0
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs_status.time, "sleep", interrupted)
    out, err = status("--watch")  # no --frames: runs until Ctrl-C
    assert out.count(jobs_status.CLEAR) == 1
    assert "refreshes every 2 s" in out
    assert err == ""


def test_jobs_status_watch_with_json_prints_one_document_per_line(alive_cluster) -> None:
    out, _ = status("--json", "--watch", "1", "--frames", "1")
    lines = out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["problems"] == []


def test_jobs_status_watch_keeps_going_when_the_database_is_away(alive_cluster, monkeypatch) -> None:
    from django.db import OperationalError

    calls = []

    def flaky_overview(**kwargs):
        calls.append(kwargs)
        raise OperationalError("connection refused\nis the server running?")

    monkeypatch.setattr(jobs_status, "overview", flaky_overview)
    monkeypatch.setattr(jobs_status.time, "sleep", lambda seconds: None)
    out, _ = status("--watch", "3", "--frames", "2")
    assert len(calls) == 2
    assert (
        out.count("cannot read the job overview: connection refused is the server running? (trying again every 3 s")
        == 2
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--watch", "0"], "--watch SECONDS must be positive"),
        (["--watch", "--check"], "cannot be combined with --watch"),
    ],
)
def test_jobs_status_refuses_bad_options(args, message) -> None:
    with pytest.raises(CommandError, match=message):
        status(*args)


def test_compact_durations_and_times_stay_short() -> None:
    assert [jobs_status.duration(s) for s in (0.052, 1.25, 12, 185, 7800, 3 * 86400 + 4 * 3600)] == [
        "52ms", "1.2s", "12s", "3m05s", "2h10m", "3d04h",
    ]  # fmt: skip
    now = timezone.now()
    assert jobs_status.relative(now + timedelta(seconds=12), now) == "in 12s"
    assert jobs_status.relative(now - timedelta(minutes=3), now) == "3m00s ago"
    assert jobs_status.relative(None, now) == "-"
    assert len(jobs_status.relative(now + timedelta(days=3), now)) == len("2026-01-01 12:00")


# --- jobs_control -----------------------------------------------------------------------


def control(*args: str) -> str:
    out = StringIO()
    call_command("jobs_control", *args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_jobs_control_cancels_a_queued_run_and_prints_the_outcome() -> None:
    run = probes.ok.enqueue(key="c")
    assert control("cancel", str(run.pk), "--by", "alice") == f"Run #{run.pk} (probe.ok) was cancelled."
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert "cancelled by alice" in run.error


def test_jobs_control_retry_now_starts_a_waiting_retry_now() -> None:
    run = JobRun.objects.create(name="probe.flaky", attempt=2, due_at=timezone.now() + timedelta(minutes=5))
    assert control("retry-now", str(run.pk)) == f"Run #{run.pk} (probe.flaky) starts attempt 2 now."
    run.refresh_from_db()
    assert run.due_at <= timezone.now()


def test_jobs_control_reruns_a_finished_run_as_a_new_run() -> None:
    run = JobRun.objects.create(name="probe.ok", kwargs={"key": "r"}, status="succeeded", finished_at=timezone.now())
    message = control("rerun", str(run.pk))
    new = JobRun.objects.exclude(pk=run.pk).get(name="probe.ok")
    assert message == f"Run #{run.pk} (probe.ok) was re-run as run #{new.pk}."
    assert new.kwargs == {"key": "r"}


def test_jobs_control_pauses_as_the_os_user_and_resumes(monkeypatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "carol")
    assert control("pause", "probe.ok", "--reason", "partner outage") == (
        "probe.ok is paused: its runs wait until it is resumed."
    )
    pause = JobPause.objects.get(name="probe.ok")
    assert (pause.paused_by, pause.reason) == ("cli:carol", "partner outage")
    assert control("resume", "probe.ok", "--by", "dave") == "probe.ok is resumed: 0 waiting run(s) sent to the workers."
    assert not JobPause.objects.exists()


def test_jobs_control_runs_a_schedule_now() -> None:
    message = control("run-schedule", "jobs.recover")
    run = JobRun.objects.get(name="jobs.recover")
    assert message == f"jobs.recover runs now as run #{run.pk}."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cancel", "999999"], "Run #999999 does not exist."),
        (["rerun", "999999"], "Run #999999 does not exist."),
        (["pause", "no.such.job"], "No job is registered as 'no.such.job'."),
        (["resume", "probe.ok"], "probe.ok is not paused."),
        (["run-schedule", "probe.ok"], "probe.ok has no schedule."),
    ],
)
def test_jobs_control_turns_a_refusal_into_a_command_error_with_its_message(args, message) -> None:
    with pytest.raises(CommandError) as raised:
        control(*args)
    assert str(raised.value) == message
    assert raised.value.returncode == 1


def test_jobs_control_refuses_to_cancel_a_finished_run_and_changes_nothing() -> None:
    run = JobRun.objects.create(name="probe.ok", status="succeeded", finished_at=timezone.now())
    with pytest.raises(CommandError, match="already succeeded; there is nothing to cancel"):
        control("cancel", str(run.pk))
    run.refresh_from_db()
    assert run.status == "succeeded"


def test_jobs_control_pausing_a_paused_job_says_so() -> None:
    control("pause", "probe.ok")
    with pytest.raises(CommandError, match=r"probe\.ok is already paused\."):
        control("pause", "probe.ok")


def test_jobs_control_needs_an_action_and_an_integer_run_id() -> None:
    with pytest.raises(CommandError):
        control()
    with pytest.raises(CommandError, match="invalid int value"):
        control("cancel", "abc")
