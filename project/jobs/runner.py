"""Executing runs: claim, run under context and heartbeat, then record the outcome.

Every message names a run and an attempt. A worker first claims the run with a conditional
UPDATE (queued → running for exactly that attempt), so a duplicate or stale message finds
nothing to claim and does no work. The outcome is then recorded with another conditional
UPDATE, which fails harmlessly if the recovery sweep already took the run over.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import socket
import threading
import time
import traceback as tb
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from project import context
from project.errors import AppError
from project.jobs import declared, djangoq, metrics, pace, progress, queue, recovery, registry, transitions
from project.jobs.djangoq import TimeoutException
from project.jobs.models import JobPause, JobRun

logger = logging.getLogger("project.jobs")

MAX_ERROR_LENGTH = transitions.MAX_ERROR_LENGTH
Status = JobRun.Status
_task: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("q_task", default=None)
_current: contextvars.ContextVar[JobRun | None] = contextvars.ContextVar("current_run", default=None)
# When the message being executed began (time.monotonic()).
_began: contextvars.ContextVar[float] = contextvars.ContextVar("message_began", default=0.0)


def remember_task_id(sender: Any, func: Any = None, task: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """django-q2 ``pre_execute`` receiver: the task about to run in this worker. Its id is
    recorded on the run at claim; its message may be acknowledged with the outcome."""
    _task.set(task)


#: The runs this process executes now, in any thread (a run may execute another inline, in
#: django-q2's sync mode): a run recorded as running here but not in this set is not running.
_executing: set[int] = set()


def current_run() -> JobRun | None:
    """The run being executed in this worker, if any."""
    return _current.get()


_worker_ids: dict[int, str] = {}


def _worker_id() -> str:
    pid = os.getpid()
    worker = _worker_ids.get(pid)
    if worker is None:
        worker = _worker_ids[pid] = f"{socket.gethostname()}:{pid}"
    return worker


def execute(run_id: int, attempt: int) -> str:
    """django-q2 entry point for a message of one run. While the database cannot be
    reached, the claim is tried again for up to ``JOBS_DB_RETRY_FOR`` seconds; after that
    the message is left for redelivery, never acknowledged unread."""
    task = _task.get()
    _began.set(time.monotonic())
    started = pace.stopwatch()
    outcome = _execute(run_id, attempt, task, last=True)
    _keep_if_database_failed(task, [(run_id, attempt)])
    _paced(task, outcome, started)
    return outcome


def _keep_if_database_failed(task: dict[str, Any] | None, pairs: Sequence[tuple[int, int]]) -> None:
    """Leave the message for redelivery, whole, when the database failed while it ran
    (``database_unavailable``, or a crash and a restart): a crash takes back the last
    asynchronous commits (JOBS_WORKER_ASYNC_COMMIT), so a run this worker claimed, or
    even saw succeed, may be queued again with no other message to bring it. Redelivered,
    the message claims what is queued, and the runs already done find nothing to claim."""
    if djangoq.database_failed_since(_began.get()):
        logger.warning("the database failed during this message: it is left for redelivery")
        djangoq.redeliver_later(task, runs=pairs)


def _inline_ack(task: dict[str, Any] | None) -> int | None:
    """The message's queue row, to delete with the last outcome, unless the database failed
    since the message began (``_keep_if_database_failed``)."""
    if djangoq.database_failed_since(_began.get()):
        return None
    return djangoq.inline_ack_id(task)


# Outcomes of a run that executed: its time tells how long the job's runs take (``pace``).
_EXECUTED = frozenset({"succeeded", "retried", "failed", "deferred", "cancelled", "dropped"})


def _paced(task: dict[str, Any] | None, outcome: str, started: float) -> None:
    job = (task or {}).get("group")
    if job and outcome in _EXECUTED:
        pace.run_record(job=str(job), started=started)


def execute_many(runs: Sequence[Sequence[int]]) -> str:
    """django-q2 entry point for a message of several runs of one job (``queue.runs_push``
    packs runs due together). Each is claimed, run and recorded as ``execute`` does, one
    after another; a success is recorded in the statement that claims the next run. Once
    the message has run for ``JOBS_BATCH_BUDGET`` seconds, the runs not started yet go out
    as a message each, for whichever workers are idle: a batch of slow runs does not hold
    the others back. That happens between two runs, or, while one run overruns the budget,
    from the process's watcher thread (``_Rest``). A message redelivered after its worker
    died starts again from its first run: the runs already done find nothing to claim."""
    task = _task.get()
    _began.set(time.monotonic())
    pairs = [(int(run_id), int(attempt)) for run_id, attempt in runs]
    task_id = (task or {}).get("id", "")
    deadline = time.monotonic() + settings.JOBS_BATCH_BUDGET
    outcomes: Counter[str] = Counter()
    claimed: _Next | None = None
    rest = _Rest(pairs=pairs, task=task)
    for index, (run_id, attempt) in enumerate(pairs):
        with rest.lock:
            handed = rest.handed
            rest.start = index + 1
        tried = bool(claimed and claimed.tried)  # this run's claim was already made
        if handed and not tried:
            outcomes["sent_on"] += len(pairs) - index
            break
        if index and not handed and not tried and time.monotonic() >= deadline:
            _send_each(pairs[index:], task)
            outcomes["sent_on"] += len(pairs) - index
            break
        last = index == len(pairs) - 1
        following = None if last or handed else _Next(*pairs[index + 1], task_id=task_id, deadline=deadline)
        rest.following = following
        started = pace.stopwatch()
        try:
            outcome = _execute(
                run_id,
                attempt,
                task,
                last=last,
                following=following,
                claimed=claimed,
                on_overrun=None if following is None else rest.hand_on,
                overrun_at=deadline,
            )
        except TimeoutException:
            # The worker is replaced and the message acknowledged as failed.
            _send_each(rest.take(), task)
            raise
        except (OperationalError, InterfaceError):
            # An outcome the database did not take within the run's lost_after: the run is
            # recovered as lost, and the message comes back for the others.
            rest.take()
            _keep_if_database_failed(task, pairs)
            raise
        if outcome == DATABASE_UNAVAILABLE:
            outcomes[outcome] += len(pairs) - index
            break
        outcomes[outcome] += 1
        _paced(task, outcome, started)
        claimed = following
    _keep_if_database_failed(task, pairs)
    return ", ".join(f"{count} {outcome}" for outcome, count in outcomes.items())


@dataclasses.dataclass
class _Rest:
    """The runs of a shared message after the one executing (from ``start``), which the
    watcher thread hands on (``hand_on``) while that run overruns the message's budget.
    The lock keeps the hand-on and the worker's step to the next run apart; a next run
    claimed with the current one's success in the meantime is executed here, and its
    handed-on message finds nothing to claim."""

    pairs: list[tuple[int, int]]
    task: dict[str, Any] | None
    start: int = 0
    handed: bool = False
    following: _Next | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def take(self) -> list[tuple[int, int]]:
        """The runs not started and not handed on yet, which the caller now owns."""
        with self.lock:
            pending = [] if self.handed else self.pairs[self.start :]
            self.handed = True
        return pending

    def hand_on(self) -> None:
        with self.lock:
            pending = self.pairs[self.start :]
            if self.handed or not pending:
                return
            try:
                _push_each(pending, self.task)
            except Exception:
                logger.warning("could not hand on the runs of a shared message: they wait for this one", exc_info=True)
                return
            self.handed = True
            if self.following is not None:
                self.following.deadline = 0.0  # the success no longer claims the next run
        logger.info("run overran its shared message's budget: %d runs handed on", len(pending))


DATABASE_UNAVAILABLE = "database_unavailable"


@dataclasses.dataclass
class _Next:
    """The run after this one in its message: a success before ``deadline`` (monotonic)
    claims it in the same statement (``tried``; ``run`` is the claimed run, or None when
    there was nothing to claim)."""

    run_id: int
    attempt: int
    task_id: str
    deadline: float
    tried: bool = False
    run: JobRun | None = None


def _execute(
    run_id: int,
    attempt: int,
    task: dict[str, Any] | None,
    *,
    last: bool,
    following: _Next | None = None,
    claimed: _Next | None = None,
    on_overrun: Callable[[], None] | None = None,
    overrun_at: float = 0.0,
) -> str:
    """Claim and run one run of the message ``task`` (``claimed``: the previous run's
    success already tried the claim); ``last``: its last run, whose success may
    acknowledge the message in the same statement; ``on_overrun``: called by the watcher
    if the run still executes at ``overrun_at``."""
    task_id = (task or {}).get("id", "")
    try:
        if claimed is not None and claimed.tried:
            run = claimed.run
        else:
            run = _with_database(lambda: _claim(run_id, attempt, task_id=task_id), what="claim")
        if run is None:
            return _with_database(lambda: _unclaimed(run_id, attempt), what="read")
    except (OperationalError, InterfaceError):
        logger.error("database unavailable: message left for redelivery", extra={"run_id": run_id})
        return DATABASE_UNAVAILABLE
    except TimeoutException:
        # Out of time before the run was claimed (a claim tried again through a database
        # outage): the message is acknowledged as failed, so the run gets one of its own.
        _send_each([(run_id, attempt)], task)
        raise
    return _run(run, task if last else None, following=following, on_overrun=on_overrun, overrun_at=overrun_at)


def _send_each(pairs: Sequence[tuple[int, int]], task: dict[str, Any] | None) -> None:
    """Send a message for each of these runs of ``task`` (still queued: none was claimed).
    If that fails, the message is not acknowledged and comes back whole."""
    if not pairs:
        return
    try:
        _push_each(pairs, task)
    except Exception:
        logger.warning("could not send the rest of a message on: it is left for redelivery", exc_info=True)
        djangoq.redeliver_later(task, runs=pairs)


def _push_each(pairs: Sequence[tuple[int, int]], task: dict[str, Any] | None) -> None:
    name = str((task or {}).get("group", ""))
    queue_name = str((task or {}).get("cluster") or "")
    now = timezone.now()
    stubs = [JobRun(pk=run_id, name=name, attempt=attempt, queue=queue_name, due_at=now) for run_id, attempt in pairs]
    queue.runs_push(runs=stubs, batch=False)


_T = TypeVar("_T")


def _with_database(fn: Callable[[], _T], *, what: str, budget: float | None = None) -> _T:
    """``fn()``, tried again with backoff while the database is unreachable, for up to
    ``budget`` seconds (``JOBS_DB_RETRY_FOR``): a database restart delays a run rather than
    costing it an attempt or losing its outcome. ``fn`` must be safe to repeat (a
    conditional UPDATE, or a transaction that rolled back)."""
    deadline = time.monotonic() + (settings.JOBS_DB_RETRY_FOR if budget is None else budget)
    delay = 0.2
    while True:
        try:
            return fn()
        except (OperationalError, InterfaceError):
            djangoq.database_failed()
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise
            logger.warning("database unavailable (%s); trying again in %.1f s", what, delay, exc_info=True)
            connection.close()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _claim(run_id: int, attempt: int, *, task_id: str) -> JobRun | None:
    """Claim the run; the claim doubles as the check of the worker's connection. django-q2
    closes stale connections before each task, after which Django would test a reused one
    with a query of its own (CONN_HEALTH_CHECKS) before the claim: a round trip per run.
    Here the claim is that test: on a broken connection it fails, the connection is closed
    and the claim is made once more on a new one (a conditional UPDATE: trying again is
    harmless)."""
    # health_check_enabled and health_check_done: set in BaseDatabaseWrapper.__init__ and
    # connect() (Django >= 4.1), not declared in django-stubs.
    if connection.in_atomic_block or not connection.health_check_enabled:  # type: ignore[attr-defined]  # not in django-stubs
        return transitions.claim(run_id, attempt, worker=_worker_id(), task_id=task_id)
    connection.health_check_done = True  # type: ignore[attr-defined]  # not in django-stubs
    try:
        return transitions.claim(run_id, attempt, worker=_worker_id(), task_id=task_id)
    except (OperationalError, InterfaceError):
        djangoq.database_failed()
        logger.warning("database connection lost before the claim; claiming on a new one", exc_info=True)
        connection.close()
        return transitions.claim(run_id, attempt, worker=_worker_id(), task_id=task_id)


def run_scheduled(job_name: str) -> str:
    """django-q2 ``Schedule`` entry point: record a run for the schedule and execute it here.
    A paused job's schedule records nothing: the next fire after the resume does the work."""
    job = registry.get(job_name)
    if job is None:
        logger.error("schedule names an unknown job", extra={"job": job_name})
        return "unknown_job"
    if JobPause.objects.filter(name=job_name).exists():
        logger.info("schedule skipped: the job is paused", extra={"job": job_name})
        return "paused"
    now = timezone.now()
    run = JobRun.objects.create(
        name=job_name,
        scheduled=True,
        max_attempts=job.retry.max_attempts,
        due_at=now,
        pushed_at=now,
        queue=job.queue or djangoq.cluster_name(),
    )
    return execute(run.pk, 1)


def _unclaimed(run_id: int, attempt: int) -> str:
    run = JobRun.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("message for a run that no longer exists", extra={"run_id": run_id})
        return "missing"
    if run.status == Status.QUEUED and run.attempt == attempt:
        if run.due_at > timezone.now() + transitions.ON_TIME_SLACK:
            # A message that came back (its lease ran out, or its worker left it after a
            # database failure) for a run deferred since to a later time: the run keeps its
            # time. Sent again for that time, in case no other message will bring it (a
            # duplicate finds nothing to claim).
            logger.info("run not due yet: sent again for its time", extra={"job": run.name, "run_id": run.pk})
            transitions.repush([run])
            return "early"
        # Otherwise only a pause makes a claim of a queued run fail: the run waits, its
        # attempt unchanged, and the resume sends its message again.
        logger.info("run waits: its job is paused", extra={"job": run.name, "run_id": run.pk})
        return "paused"
    mine = run.worker == _worker_id() and run.pk not in _executing
    if run.status == Status.RUNNING and run.attempt == attempt and (mine or is_lost(run)):
        # django-q2 redelivered the message of a worker that died: recover it now rather
        # than waiting for the sweep (not charged if it died of a database outage this
        # worker saw too, as its sentinel would judge it). A run "running" in this very
        # worker that none of its threads executes is not running: a database crash took
        # back the outcome the worker recorded, or the worker gave up recording it.
        recovery.run_recover_lost(run_id=run.pk, worker_dead=mine, database_fault=recovery.database_fault_recent())
        return "recovered"
    logger.info(
        "duplicate delivery ignored",
        extra={"job": run.name, "run_id": run.pk, "attempt": attempt, "status": run.status},
    )
    return "duplicate"


is_lost = recovery.is_lost


def _object_ids(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in kwargs.items() if key.endswith(("_id", "_ids"))}


_metric_children: dict[str, tuple[Any, Any, Any, Any]] = {}
_finished_children: dict[tuple[str, str], Any] = {}


def _job_metrics(name: str) -> tuple[Any, Any, Any, Any]:
    """started, start lateness, in flight and duration, for one job (labels looked up once)."""
    children = _metric_children.get(name)
    if children is None:
        children = _metric_children[name] = (
            metrics.JOBS_STARTED.labels(job=name),
            metrics.JOB_START_LATENESS.labels(job=name),
            metrics.JOBS_IN_FLIGHT.labels(job=name),
            metrics.JOB_DURATION.labels(job=name),
        )
    return children


def _run(
    run: JobRun,
    task: dict[str, Any] | None = None,
    following: _Next | None = None,
    on_overrun: Callable[[], None] | None = None,
    overrun_at: float = 0.0,
) -> str:
    job = registry.get(run.name)
    if job is None:
        _record(
            run,
            lambda: transitions.finish(
                run, None, status=Status.FAILED, code="unknown_job", message=f"no job is registered as {run.name!r}"
            ),
        )
        return "failed"
    assert run.started_at is not None  # set by the claim
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
        _executing.add(run.pk)
        started_total, start_lateness, in_flight, duration = _job_metrics(job.name)
        started_total.inc()
        start_lateness.observe(lateness)
        # DEBUG: the run records its start; the attempt's one INFO (or worse) line is its
        # outcome, which carries the lateness and the duration.
        logger.debug("job attempt started", extra={"lateness_s": round(lateness, 3)})
        started = time.perf_counter()
        in_flight.inc()
        watch = progress.watch_start(run_id=run.pk, attempt=run.attempt, on_overrun=on_overrun, overrun_at=overrun_at)
        try:
            try:
                result = job.func(**run.kwargs)
            except registry.Defer as defer:
                seconds = defer.seconds
                _record(run, lambda: transitions.defer(run, seconds=seconds))
                logger.debug("job deferred for %.1f s: %s", seconds, defer.reason)
                outcome = "deferred"
            except progress.JobCancelled as cancelled:
                outcome = _cancelled(run, job, cancelled.reason)
            except TimeoutException:
                _close_if_broken(force=True)
                _record(
                    run,
                    lambda: transitions.finish(
                        run,
                        job,
                        status=Status.FAILED,
                        code="timeout",
                        message=f"the attempt exceeded its {job.timeout_seconds} s budget",
                    ),
                )
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified and recorded
                outcome = _failed_attempt(run, job, exc, watch)
            else:
                outcome = _succeed(run, result, watch, task, lateness, time.perf_counter() - started, following)
        finally:
            progress.watch_stop(watch)
            in_flight.dec()
            _current.reset(token)
            _executing.discard(run.pk)
            duration.observe(time.perf_counter() - started)
        finished = _finished_children.get((job.name, outcome))
        if finished is None:
            finished = _finished_children[job.name, outcome] = metrics.JOBS_FINISHED.labels(
                job=job.name, outcome=outcome
            )
        finished.inc()
        return outcome


MAX_DATABASE_DEFERRALS = recovery.MAX_DATABASE_DEFERRALS
DATABASE_DEFER_SECONDS = recovery.DATABASE_DEFER_SECONDS


def _record(run: JobRun, write: Callable[[], _T]) -> _T:
    """Record an outcome the worker holds, tried again while the database is down, for as
    long as the run cannot be taken for lost (its ``lost_after``)."""
    return _with_database(write, what="outcome", budget=declared.lost_after_seconds(run.name))


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


def _cancelled(run: JobRun, job: registry.Job, reason: str) -> str:
    _close_if_broken()
    if _record(run, lambda: transitions.finish(run, job, status=Status.CANCELLED, code="cancelled", message=reason)):
        logger.warning("job cancelled: %s", reason)
        return "cancelled"
    logger.info("job stopped: %s", reason)
    return "dropped"


def _failed_attempt(run: JobRun, job: registry.Job, exc: Exception, watch: progress.Watch) -> str:
    kind, code, message = classify(exc)
    if code == "database_unavailable":
        _close_if_broken(force=True)
    if watch.stop_reason is not None:
        # Cancelled while failing: no retry for a run an operator stopped.
        return _cancelled(run, job, watch.stop_reason)
    if code == "database_unavailable" and run.deferrals < MAX_DATABASE_DEFERRALS:
        # The database's fault, not the job's: the same attempt runs again, even the last.
        wait = job.retry.delay_after(run.attempt) or DATABASE_DEFER_SECONDS
        logger.warning("database unavailable; attempt runs again in %.1f s: %s", wait, message)
        return "deferred" if _record(run, lambda: transitions.defer(run, seconds=wait)) else "dropped"
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
        retried = _record(run, lambda: transitions.retry(run, delay=delay, code=code, message=message))
        return "retried" if retried else "dropped"
    logger.error("job failed: %s", message, extra=log_extra, exc_info=kind == "unexpected")
    _record(run, lambda: transitions.finish(run, job, status=Status.FAILED, code=code, message=message, trace=trace))
    return "failed"


def _succeed(
    run: JobRun,
    result: Any,
    watch: progress.Watch,
    task: dict[str, Any] | None,
    lateness: float,
    seconds: float,
    following: _Next | None = None,
) -> str:
    ack = None
    if following is None or time.monotonic() >= following.deadline:

        def write() -> bool:
            nonlocal ack
            ack = _inline_ack(task)  # again on each try: the database may have failed meanwhile
            return transitions.succeed(run, result, progress=watch.report, ack=ack)

        succeeded = _record(run, write)
    else:
        succeeded, following.run = _record(
            run,
            lambda: transitions.succeed_then_claim(
                run,
                result,
                progress=watch.report,
                claim_id=following.run_id,
                claim_attempt=following.attempt,
                worker=_worker_id(),
                task_id=following.task_id,
            ),
        )
        following.tried = True
    if ack is not None and task is not None:  # an ack id comes from a task
        djangoq.acknowledged(task)
    if not succeeded:
        logger.warning("run was taken over before its success was recorded", extra={"run_id": run.pk})
        return "dropped"
    logger.info("job attempt succeeded", extra={"lateness_s": round(lateness, 3), "duration_s": round(seconds, 3)})
    return "succeeded"
