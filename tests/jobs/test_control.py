"""The toolkit's controls: cancel, retry now, re-run, pause and resume, and progress."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from django_q.models import OrmQ

from project.errors import Conflict
from project.jobs import JobRun, control, recovery, runner
from project.jobs.models import JobPause
from tests.support import jobs as probes
from tests.support.cluster import wait_for, wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _orm_broker(settings) -> None:
    settings.JOBS_BROKER = "orm"


@pytest.fixture
def hooked(monkeypatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    for probe in (probes.ok, probes.progress):
        monkeypatch.setattr(probe, "on_failure", lambda run, code, message: calls.append((code, message)))
    return calls


def test_cancelling_a_queued_run_ends_it_cancelled_and_runs_the_failure_hook(hooked) -> None:
    run = probes.ok.enqueue(key="c")
    outcome = control.run_cancel(run_id=run.pk, by="alice")
    run.refresh_from_db()
    assert (run.status, run.error_code) == ("cancelled", "cancelled")
    assert outcome.message == f"Run #{run.pk} (probe.ok) was cancelled."
    assert hooked == [("cancelled", "cancelled by alice before attempt 1 started")]
    assert runner.execute(run.pk, 1) == "duplicate"  # its message, when it comes, does nothing


def test_cancelling_a_run_waiting_for_its_retry_ends_it_without_the_retry(hooked) -> None:
    run = probes.flaky.enqueue(key="w", failures=5)
    assert runner.execute(run.pk, 1) == "retried"
    run.refresh_from_db()
    assert run.waiting_for_retry
    control.run_cancel(run_id=run.pk, by="alice")
    run.refresh_from_db()
    assert (run.status, run.attempt) == ("cancelled", 2)
    assert runner.execute(run.pk, 2) == "duplicate"


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancelling_a_finished_run_changes_nothing_and_says_why(status) -> None:
    run = JobRun.objects.create(name="probe.ok", kwargs={"key": "f"}, status=status, finished_at=timezone.now())
    with pytest.raises(Conflict, match=f"already {status}; there is nothing to cancel"):
        control.run_cancel(run_id=run.pk, by="alice")
    run.refresh_from_db()
    assert run.status == status


@pytest.mark.django_db(transaction=True)
def test_a_running_job_stops_at_its_next_progress_report_when_cancelled(hooked) -> None:
    # Recorded, not enqueued: no cluster may take it; this test runs it in a thread.
    run = JobRun.objects.create(name="probe.progress", kwargs={"key": "p", "steps": 400, "interval": 0.05})
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(runner.execute(run.pk, 1)))
    worker.start()
    try:
        # The watcher publishes the progress while the job runs.
        wait_for(lambda: (JobRun.objects.get(pk=run.pk).progress or {}).get("done"), timeout=10, message="no progress")
        progress = JobRun.objects.get(pk=run.pk).progress
        assert (progress["total"], progress["note"][:5], progress["key"]) == (400, "step ", "p")
        message = control.run_cancel(run_id=run.pk, by="alice").message
        assert message.endswith("was asked to stop; it ends at its next heartbeat.")
        with pytest.raises(Conflict, match="already being cancelled"):
            control.run_cancel(run_id=run.pk, by="bob")
        wait_until(lambda: not worker.is_alive(), progress=lambda: JobRun.objects.get(pk=run.pk).progress, stall=15)
    finally:
        worker.join()  # 400 steps of 0.05 s at most
    assert outcome == ["cancelled"]
    run.refresh_from_db()
    assert (run.status, run.error_code, run.error) == ("cancelled", "cancelled", "cancelled by alice")
    assert run.progress["done"] < 400
    assert hooked == [("cancelled", "cancelled by alice")]


def test_a_lost_run_that_was_asked_to_stop_ends_cancelled_not_retried(hooked) -> None:
    start = timezone.now()
    run = JobRun.objects.create(
        name="probe.ok", kwargs={"key": "l"}, status="running", heartbeat_at=start, started_at=start, max_attempts=3
    )
    control.run_cancel(run_id=run.pk, by="alice")
    with time_machine.travel(start + timedelta(seconds=120)):
        assert recovery.runs_recover()["lost_cancelled"] == 1
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert hooked[0][0] == "cancelled"


def test_a_paused_job_keeps_its_runs_queued_with_their_attempt_until_resumed(
    django_capture_on_commit_callbacks,
) -> None:
    control.job_pause(name="probe.ok", by="alice", reason="maintenance")
    with pytest.raises(Conflict, match="already paused"):
        control.job_pause(name="probe.ok", by="bob")
    with django_capture_on_commit_callbacks(execute=True):
        runs = [probes.ok.enqueue(key=f"p{n}") for n in range(3)]
    assert OrmQ.objects.count() == 3
    # The workers take the messages, but claim nothing.
    assert [runner.execute(run.pk, 1) for run in runs] == ["paused"] * 3
    assert set(JobRun.objects.values_list("status", "attempt")) == {("queued", 1)}
    # The sweep does not send them again while paused.
    old = timezone.now() - timedelta(hours=1)
    JobRun.objects.update(due_at=old, pushed_at=old)
    assert recovery.runs_recover()["repushed"] == 0
    OrmQ.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=True):
        outcome = control.job_resume(name="probe.ok", by="alice")
    assert outcome.message == "probe.ok is resumed: 3 waiting run(s) sent to the workers."
    assert OrmQ.objects.count() == 3
    assert [runner.execute(run.pk, 1) for run in runs] == ["succeeded"] * 3
    with pytest.raises(Conflict, match="not paused"):
        control.job_resume(name="probe.ok", by="alice")


def test_a_paused_schedule_records_no_run() -> None:
    control.job_pause(name="jobs.prune_runs", by="alice")
    assert runner.run_scheduled("jobs.prune_runs") == "paused"
    assert not JobRun.objects.filter(name="jobs.prune_runs").exists()
    assert JobPause.objects.get().paused_by == "alice"


def test_retry_now_makes_a_waiting_retry_due_now(django_capture_on_commit_callbacks) -> None:
    run = probes.flaky.enqueue(key="r", failures=1)
    assert runner.execute(run.pk, 1) == "retried"
    run.refresh_from_db()
    assert run.due_at > timezone.now()
    OrmQ.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=True):
        control.run_retry_now(run_id=run.pk, by="alice")
    run.refresh_from_db()
    assert run.due_at <= timezone.now()
    assert OrmQ.objects.get().lock <= timezone.now()
    assert runner.execute(run.pk, 2) == "succeeded"
    with pytest.raises(Conflict, match="is succeeded, not waiting"):
        control.run_retry_now(run_id=run.pk, by="alice")


def test_rerun_does_the_work_again_or_is_refused() -> None:
    run = probes.ok.enqueue(key="again")
    with pytest.raises(Conflict, match="is still queued"):
        control.run_rerun(run_id=run.pk, by="alice")
    assert runner.execute(run.pk, 1) == "succeeded"
    new = control.run_rerun(run_id=run.pk, by="alice").run
    assert (new.name, new.kwargs, new.status) == ("probe.ok", {"key": "again"}, "queued")
    assert runner.execute(new.pk, 1) == "succeeded"
    assert JobRun.objects.get(pk=new.pk).result == {"executions": 2}
    once = probes.once.enqueue(key="o")
    runner.execute(once.pk, 1)
    with pytest.raises(Conflict, match=r"probe\.once cannot be re-run"):
        control.run_rerun(run_id=once.pk, by="alice")


def test_run_now_starts_a_scheduled_job_outside_its_schedule() -> None:
    run = control.schedule_run_now(name="jobs.prune_runs", by="alice").run
    assert (run.name, run.scheduled, run.status) == ("jobs.prune_runs", False, "queued")
    with pytest.raises(Conflict, match="has no schedule"):
        control.schedule_run_now(name="probe.ok", by="alice")
