"""Executing runs: claim, run under context and heartbeat, then record the outcome.

Every message names a run and an attempt. A worker first claims the run with a conditional
UPDATE (queued → running for exactly that attempt), so a duplicate or stale message finds
nothing to claim and does no work. The outcome is then recorded with another conditional
UPDATE, which fails harmlessly if the recovery sweep already took the run over.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
import traceback as tb
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, connections, transaction
from django.db.models import F
from django.utils import timezone
from django_q.exceptions import TimeoutException

from project import context
from project.errors import AppError
from project.jobs import metrics, registry
from project.jobs.models import JobRun
from project.jobs.queue import runs_push

logger = logging.getLogger("project.jobs")

MAX_ERROR_LENGTH = 1000
_task_id: contextvars.ContextVar[str] = contextvars.ContextVar("q_task_id", default="")
_current: contextvars.ContextVar[JobRun | None] = contextvars.ContextVar("current_run", default=None)


def remember_task_id(sender: Any, func: Any = None, task: dict | None = None, **kwargs: Any) -> None:
    """django-q2 ``pre_execute`` receiver: the task id is recorded on the run at claim."""
    _task_id.set((task or {}).get("id", ""))


def current_run() -> JobRun | None:
    """The run being executed in this worker, if any."""
    return _current.get()


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute(run_id: int, attempt: int) -> str:
    """django-q2 entry point for every job message."""
    run = _claim(run_id, attempt)
    if run is None:
        return _unclaimed(run_id, attempt)
    return _run(run)


def run_scheduled(job_name: str) -> str:
    """django-q2 ``Schedule`` entry point: record a run for the schedule and execute it here."""
    job = registry.get(job_name)
    if job is None:
        logger.error("schedule names an unknown job", extra={"job": job_name})
        return "unknown_job"
    now = timezone.now()
    run = JobRun.objects.create(
        name=job_name, scheduled=True, max_attempts=job.retry.max_attempts, due_at=now, pushed_at=now
    )
    return execute(run.pk, 1)


def _claim(run_id: int, attempt: int) -> JobRun | None:
    now = timezone.now()
    claimed = JobRun.objects.filter(pk=run_id, attempt=attempt, status=JobRun.Status.QUEUED).update(
        status=JobRun.Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        finished_at=None,
        worker=_worker_id(),
        task_id=_task_id.get(),
        updated_at=now,
    )
    if not claimed:
        return None
    return JobRun.objects.get(pk=run_id)


def _unclaimed(run_id: int, attempt: int) -> str:
    run = JobRun.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("message for a run that no longer exists", extra={"run_id": run_id})
        return "missing"
    if run.status == JobRun.Status.RUNNING and run.attempt == attempt and is_lost(run):
        # django-q2 redelivered the message of a worker that died: recover it now rather
        # than waiting for the sweep.
        from project.jobs.recovery import run_recover_lost

        run_recover_lost(run_id=run.pk)
        return "recovered"
    logger.info(
        "duplicate delivery ignored",
        extra={"job": run.name, "run_id": run.pk, "attempt": attempt, "status": run.status},
    )
    return "duplicate"


def is_lost(run: JobRun) -> bool:
    threshold = timezone.now() - timedelta(seconds=settings.JOBS_LOST_AFTER)
    return run.heartbeat_at is None or run.heartbeat_at < threshold


class _Heartbeat:
    """Refreshes the run's heartbeat from a side thread while the job runs."""

    def __init__(self, run: JobRun) -> None:
        self.run_id, self.attempt = run.pk, run.attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run.pk}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(settings.JOBS_HEARTBEAT_INTERVAL):
                try:
                    JobRun.objects.filter(pk=self.run_id, attempt=self.attempt, status=JobRun.Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except DatabaseError:
                    logger.warning("heartbeat not recorded", exc_info=True, extra={"run_id": self.run_id})
                    connections.close_all()
        finally:
            connections.close_all()  # this thread's connection only


def _object_ids(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in kwargs.items() if key.endswith(("_id", "_ids"))}


def _run(run: JobRun) -> str:
    job = registry.get(run.name)
    if job is None:
        _finish_failed(run, None, "unknown_job", f"no job is registered as {run.name!r}", "")
        return "failed"
    lateness = max(0.0, (run.started_at - run.due_at).total_seconds())
    bind = {
        "job": run.name,
        "run_id": run.pk,
        "task_id": run.task_id or None,
        "attempt": run.attempt,
        "request_id": run.request_id or None,
        **_object_ids(run.kwargs),
    }
    with context.bind(**bind):
        token = _current.set(run)
        metrics.JOBS_STARTED.labels(job=job.name).inc()
        metrics.JOB_START_LATENESS.labels(job=job.name).observe(lateness)
        logger.info("job attempt started", extra={"lateness_s": round(lateness, 3)})
        started = time.perf_counter()
        in_flight = metrics.JOBS_IN_FLIGHT.labels(job=job.name)
        in_flight.inc()
        try:
            with _Heartbeat(run):
                try:
                    result = job.func(**run.kwargs)
                except registry.Defer as defer:
                    outcome = _defer(run, defer)
                except TimeoutException:
                    _close_if_broken(force=True)
                    _finish_failed(run, job, "timeout", f"the attempt exceeded its {job.timeout_seconds} s budget", "")
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
                    outcome = _failed_attempt(run, job, exc)
                else:
                    outcome = _succeed(run, result)
        finally:
            in_flight.dec()
            _current.reset(token)
            metrics.JOB_DURATION.labels(job=job.name).observe(time.perf_counter() - started)
        metrics.JOBS_FINISHED.labels(job=job.name, outcome=outcome).inc()
        return outcome


def classify(exc: BaseException) -> tuple[str, str, str]:
    """(kind, code, message) where kind is retryable, permanent or unexpected."""
    message = str(exc)[:MAX_ERROR_LENGTH] or exc.__class__.__name__
    if isinstance(exc, AppError):
        return ("retryable" if exc.retryable else "permanent", exc.code, message)
    if isinstance(exc, (OperationalError, InterfaceError)):
        return "retryable", "database_unavailable", message
    return "unexpected", "unexpected_error", f"{exc.__class__.__name__}: {message}"


def _close_if_broken(*, force: bool = False) -> None:
    # After a lost connection (or a timeout that interrupted a query) the connection
    # cannot record the outcome; a fresh one is opened on next use.
    if force or connection.needs_rollback or not connection.is_usable():
        connection.close()


def _failed_attempt(run: JobRun, job: registry.Job, exc: Exception) -> str:
    kind, code, message = classify(exc)
    if code == "database_unavailable":
        _close_if_broken(force=True)
    trace = tb.format_exc() if kind == "unexpected" else ""
    delay = None
    if kind == "retryable":
        delay = job.retry.delay_after(run.attempt)
        hint = getattr(exc, "retry_after", None)
        if delay is not None and hint is not None:
            delay = max(delay, float(hint))
    log_extra = {"error_code": code, "kind": kind}
    if delay is not None:
        logger.warning("job attempt failed; retry in %.1f s: %s", delay, message, extra=log_extra)
        return "retried" if run_retry(run, delay=delay, code=code, message=message) else "dropped"
    logger.error("job failed: %s", message, extra=log_extra, exc_info=kind == "unexpected")
    _finish_failed(run, job, code, message, trace)
    return "failed"


def _history_entry(run: JobRun, outcome: str, code: str = "", message: str = "") -> dict[str, Any]:
    return {
        "attempt": run.attempt,
        "due_at": run.due_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": timezone.now().isoformat(),
        "outcome": outcome,
        "error_code": code,
        "error": message[:300],
    }


def _owned(run: JobRun, statuses: tuple[str, ...] = (JobRun.Status.RUNNING,), **extra: Any):
    """The run, only while it is still in this attempt and state (nobody took it over)."""
    return JobRun.objects.filter(pk=run.pk, attempt=run.attempt, status__in=statuses, **extra)


def run_retry(run: JobRun, *, delay: float, code: str, message: str, **extra: Any) -> bool:
    now = timezone.now()
    due = now + timedelta(seconds=delay)
    updated = _owned(run, **extra).update(
        status=JobRun.Status.QUEUED,
        attempt=run.attempt + 1,
        due_at=due,
        pushed_at=now,
        error_code=code,
        error=message,
        history=[*run.history, _history_entry(run, "retried", code, message)],
        updated_at=now,
    )
    if not updated:
        logger.warning("run was taken over before its retry was recorded", extra={"run_id": run.pk})
        return False
    run.attempt, run.due_at, run.status = run.attempt + 1, due, JobRun.Status.QUEUED
    transaction.on_commit(lambda: runs_push(runs=[run]), robust=True)
    return True


def _finish_failed(run: JobRun, job: registry.Job | None, code: str, message: str, trace: str, **extra: Any) -> bool:
    now = timezone.now()
    with transaction.atomic():
        updated = _owned(run, **extra).update(
            status=JobRun.Status.FAILED,
            finished_at=now,
            error_code=code,
            error=message,
            traceback=trace,
            history=[*run.history, _history_entry(run, "failed", code, message)],
            updated_at=now,
        )
        if updated and job is not None:
            try:
                with transaction.atomic():
                    job.failed(run, code, message)
            except Exception:
                logger.exception("on_failure hook of %s raised", job.name, extra={"run_id": run.pk})
    return bool(updated)


def _succeed(run: JobRun, result: Any) -> str:
    now = timezone.now()
    if not isinstance(result, (dict, list, int, float, str, bool, type(None))):
        result = None
    updated = _owned(run).update(
        status=JobRun.Status.SUCCEEDED,
        finished_at=now,
        result=result,
        error_code="",
        error="",
        history=[*run.history, _history_entry(run, "succeeded")],
        updated_at=now,
    )
    if not updated:
        logger.warning("run was taken over before its success was recorded", extra={"run_id": run.pk})
        return "dropped"
    logger.info("job attempt succeeded")
    return "succeeded"


def _defer(run: JobRun, defer: registry.Defer) -> str:
    now = timezone.now()
    due = now + timedelta(seconds=defer.seconds)
    updated = _owned(run).update(
        status=JobRun.Status.QUEUED, due_at=due, pushed_at=now, deferrals=F("deferrals") + 1, updated_at=now
    )
    if updated:
        run.due_at, run.status = due, JobRun.Status.QUEUED
        transaction.on_commit(lambda: runs_push(runs=[run]), robust=True)
    logger.debug("job deferred for %.1f s: %s", defer.seconds, defer.reason)
    return "deferred"
