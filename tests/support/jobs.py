"""Probe jobs for the toolkit's tests and the retry benchmark (``JOBS_EXTRA_MODULES``)."""

from __future__ import annotations

import os
import signal
import time

from project.errors import PermanentError, RetryableError
from project.jobs import RetryPolicy, current_run, job


def _record(key: str) -> int:
    from tests.support.models import ProbeExecution

    run = current_run()
    ProbeExecution.objects.create(key=key, run_id=run.pk, attempt=run.attempt, pid=os.getpid())
    return ProbeExecution.objects.filter(key=key).count()


@job("probe.ok")
def ok(*, key: str) -> dict:
    """Succeeds and records one execution."""
    return {"executions": _record(key)}


@job("probe.flaky", retry=RetryPolicy(delays=(1, 2)))
def flaky(*, key: str, failures: int) -> dict:
    """Fails with a retryable error ``failures`` times, then succeeds."""
    executions = _record(key)
    if executions <= failures:
        raise RetryableError(f"transient failure {executions}", code="probe_transient")
    return {"executions": executions}


@job("probe.permanent", retry=RetryPolicy(delays=(1, 1)))
def permanent(*, key: str) -> None:
    """Fails permanently at once, although retries would be allowed."""
    _record(key)
    raise PermanentError("the probe was told to fail", code="probe_permanent")


@job("probe.unexpected", retry=RetryPolicy(delays=(1,)))
def unexpected(*, key: str) -> None:
    """Raises an exception the toolkit does not know."""
    _record(key)
    return 1 / 0


@job("probe.slow", retry=RetryPolicy(delays=(0.5,)), timeout=60)
def slow(*, key: str, seconds: float, first_attempt_only: bool = True) -> dict:
    """Records its start, then sleeps (long enough to be killed)."""
    executions = _record(key)
    run = current_run()
    if run.attempt == 1 or not first_attempt_only:
        time.sleep(seconds)
    return {"executions": executions}


@job("probe.fail_once", retry=RetryPolicy(delays=(1,)))
def fail_once(*, delay: float) -> None:
    """Fails its first attempt asking for a retry after ``delay`` s (the retry benchmark)."""
    if current_run().attempt == 1:
        raise RetryableError("first attempt fails on purpose", code="probe_transient", retry_after=delay)


@job("probe.too_slow", retry=RetryPolicy(delays=(1,)), timeout=1)
def too_slow(*, key: str) -> None:
    """Sleeps past its 1 s budget."""
    _record(key)
    time.sleep(10)


@job("probe.progress", retry=RetryPolicy(delays=(1,)), timeout=120)
def progress(*, key: str, steps: int, interval: float) -> dict:
    """Reports progress ``steps`` times, ``interval`` s apart (long enough to be cancelled)."""
    from project.jobs import report_progress

    _record(key)
    for step in range(1, steps + 1):
        time.sleep(interval)
        report_progress(step, steps, f"step {step} of {steps}", key=key)
    return {"steps": steps}


@job("probe.once", rerun=False)
def once(*, key: str) -> None:
    """A job that declares it cannot be re-run."""
    _record(key)


@job("probe.delivered_twice")
def delivered_twice() -> str:
    """Gets its own message again while it runs, handled inline (as in django-q2's sync
    mode); returns what that delivery came to."""
    from project.jobs import runner

    run = current_run()
    return runner.execute(run.pk, run.attempt)


@job("probe.noop")
def noop() -> None:
    """Does nothing (the throughput benchmark: the toolkit's own cost per run)."""


def _die(sender: object, **kwargs: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@job("probe.die_handing_over")
def die_handing_over(*, key: str) -> None:
    """Succeeds, then kills its worker while the worker hands the result over, which
    django-q2 does holding the lock of the worker's timer (the guard's lock too)."""
    from django_q.signals import post_execute_in_worker

    _record(key)
    post_execute_in_worker.connect(_die, weak=False, dispatch_uid="probe.die_handing_over")
