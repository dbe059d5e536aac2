"""The toolkit's promises, proven on a real django-q2 cluster."""

from __future__ import annotations

import os
import signal

import pytest

from project.jobs.models import JobRun
from tests.conftest import BROKERS
from tests.support import jobs as probes
from tests.support.cluster import running_cluster, wait_for
from tests.support.models import ProbeExecution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def _finished(run: JobRun, timeout: float = 20) -> JobRun:
    def done() -> JobRun | None:
        run.refresh_from_db()
        return run if run.status in (JobRun.Status.SUCCEEDED, JobRun.Status.FAILED) else None

    return wait_for(done, timeout=timeout, message=f"run {run.pk} did not finish: {run.status}")


def test_job_runs_on_the_cluster_and_records_success(cluster) -> None:
    run = probes.ok.enqueue(key="a")
    run = _finished(run)
    assert run.status == "succeeded"
    assert run.result == {"executions": 1}
    assert run.attempt == 1
    assert run.task_id
    assert [entry["outcome"] for entry in run.history] == ["succeeded"]


def test_retryable_failure_is_retried_with_the_configured_delays_then_failed(cluster) -> None:
    run = probes.flaky.enqueue(key="always", failures=99)
    run = _finished(run, timeout=30)
    assert run.status == "failed"
    assert run.error_code == "probe_transient"
    assert [entry["outcome"] for entry in run.history] == ["retried", "retried", "failed"]
    executions = list(ProbeExecution.objects.filter(key="always").order_by("attempt"))
    assert [e.attempt for e in executions] == [1, 2, 3]
    # Each retry was due exactly the policy's delay after the failed attempt ended, and
    # did not start before it was due.
    for previous, entry, delay in zip(run.history, run.history[1:], (1, 2), strict=False):
        from datetime import datetime

        finished = datetime.fromisoformat(previous["finished_at"])
        due = datetime.fromisoformat(entry["due_at"])
        started = datetime.fromisoformat(entry["started_at"])
        assert abs((due - finished).total_seconds() - delay) < 0.1
        assert started >= due


def test_retryable_failure_recovers_when_the_cause_passes(cluster) -> None:
    run = _finished(probes.flaky.enqueue(key="once", failures=1))
    assert run.status == "succeeded"
    assert run.attempt == 2
    assert run.result == {"executions": 2}


def test_permanent_failure_is_not_retried(cluster) -> None:
    run = _finished(probes.permanent.enqueue(key="perm"))
    assert run.status == "failed"
    assert run.error_code == "probe_permanent"
    assert run.attempt == 1
    assert run.traceback == ""
    assert ProbeExecution.objects.filter(key="perm").count() == 1


def test_unexpected_exception_is_recorded_with_its_traceback_and_not_retried(cluster) -> None:
    run = _finished(probes.unexpected.enqueue(key="boom"))
    assert run.status == "failed"
    assert run.error_code == "unexpected_error"
    assert "ZeroDivisionError" in run.error
    assert "Traceback" in run.traceback
    assert "1 / 0" in run.traceback
    assert ProbeExecution.objects.filter(key="boom").count() == 1


def test_duplicate_messages_for_one_run_do_the_work_once(cluster) -> None:
    from project.jobs.queue import runs_push

    run = probes.ok.enqueue(key="dup")
    runs_push(runs=[run])
    runs_push(runs=[run])
    _finished(run)
    wait_for(lambda: not _queue_has_messages(), message="messages were not consumed")
    assert ProbeExecution.objects.filter(key="dup").count() == 1


def test_deduplicated_enqueues_share_one_queued_run(cluster) -> None:
    from django.db import transaction

    with transaction.atomic():
        first = probes.ok.enqueue(key="dedupe", _dedupe_key="k")
        second = probes.ok.enqueue(key="dedupe", _dedupe_key="k")
    assert first.pk == second.pk
    _finished(first)
    assert ProbeExecution.objects.filter(key="dedupe").count() == 1


def _queue_has_messages() -> bool:
    from django.conf import settings

    from project.jobs.djangoq import get_broker

    broker = get_broker()
    if settings.JOBS_BROKER == "orm":
        from django_q.models import OrmQ

        return OrmQ.objects.filter(key=broker.list_key).exists()
    return broker.queue_size() > 0


@pytest.mark.parametrize("broker", BROKERS)
def test_worker_killed_mid_job_is_retried_not_left_running(broker) -> None:
    with running_cluster(broker=broker, workers=1) as cluster:
        run = probes.slow.enqueue(key="killed", seconds=30)
        wait_for(lambda: ProbeExecution.objects.filter(key="killed").exists(), message="job did not start")
        (worker,) = [w for w in cluster.workers() if "processing" in " ".join(w.cmdline())]
        os.kill(worker.pid, signal.SIGKILL)
        # The unacknowledged message comes back when its lease ends (either broker) and the
        # runner recovers the run itself.
        run = _finished(run, timeout=40)
        assert run.status == "succeeded", cluster.output()
    assert run.attempt == 2
    assert run.history[0]["outcome"] == "retried"
    assert run.history[0]["error_code"] == "worker_lost"
    assert ProbeExecution.objects.filter(key="killed").count() == 2


@pytest.mark.parametrize("broker", BROKERS)
def test_delayed_retry_waits_in_the_broker_until_due(broker) -> None:
    with running_cluster(broker=broker, workers=1):
        run = _finished(probes.fail_once.enqueue(delay=2), timeout=30)
    assert run.status == "succeeded"
    retry = run.history[-1]
    from datetime import datetime

    lateness = (datetime.fromisoformat(retry["started_at"]) - datetime.fromisoformat(retry["due_at"])).total_seconds()
    assert lateness >= 0
    first = run.history[0]
    delay = (datetime.fromisoformat(retry["due_at"]) - datetime.fromisoformat(first["finished_at"])).total_seconds()
    assert abs(delay - 2) < 0.1


def test_attempt_over_its_time_budget_is_failed_with_timeout(cluster) -> None:
    run = _finished(probes.too_slow.enqueue(key="slow"), timeout=30)
    assert run.status == "failed"
    assert run.error_code == "timeout"
    assert "1 s budget" in run.error
    assert ProbeExecution.objects.filter(key="slow").count() == 1


@pytest.mark.parametrize("broker", BROKERS)
def test_running_job_cancelled_on_the_cluster_stops_at_its_next_report(broker) -> None:
    from project.jobs import control
    from tests.support.cluster import wait_until

    with running_cluster(broker=broker) as process:
        run = probes.progress.enqueue(key="stop", steps=600, interval=0.05)

        def state() -> object:
            return JobRun.objects.filter(pk=run.pk).values("status", "heartbeat_at", "progress").first()

        wait_until(lambda: (state()["progress"] or {}).get("done"), progress=state, message=process.output())
        control.run_cancel(run_id=run.pk, by="alice")
        wait_until(lambda: state()["status"] == "cancelled", progress=state, message=process.output())
    run.refresh_from_db()
    assert (run.error_code, run.error) == ("cancelled", "cancelled by alice")
    assert run.progress["done"] < 600
    assert ProbeExecution.objects.filter(key="stop").count() == 1  # not retried


@pytest.mark.parametrize("broker", BROKERS)
def test_paused_job_waits_on_the_cluster_and_runs_once_resumed(broker) -> None:
    from project.jobs import control
    from tests.support.cluster import wait_until

    with running_cluster(broker=broker) as process:
        control.job_pause(name="probe.ok", by="alice")
        runs = [probes.ok.enqueue(key=f"paused-{n}") for n in range(3)]
        other = probes.flaky.enqueue(key="not-paused", failures=0)
        # Another job's run goes through: the cluster is working, and still claims none of
        # the paused job's runs.
        wait_until(
            lambda: JobRun.objects.get(pk=other.pk).status == "succeeded", progress=process.work, message=process.output
        )
        assert set(JobRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", "attempt")) == {
            ("queued", 1)
        }
        assert not ProbeExecution.objects.filter(key__startswith="paused-").exists()
        control.job_resume(name="probe.ok", by="alice")

        def done() -> int:
            return JobRun.objects.filter(pk__in=[r.pk for r in runs], status="succeeded").count()

        wait_until(lambda: done() == 3, progress=done, message=process.output())
    assert ProbeExecution.objects.filter(key__startswith="paused-").count() == 3
