"""Services that keep runs moving when workers or messages are lost, and prune old runs."""

from __future__ import annotations

import logging
import os
import socket
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

import psutil
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from project.db import rows_delete_in_batches
from project.jobs import declared, djangoq, transitions
from project.jobs.models import ClusterHeartbeat, JobPause, JobRun

logger = logging.getLogger("project.jobs")

WORKER_LOST = "worker_lost"
#: Attempts put back without counting when the database, not the job, failed (the
#: runner's rule too: project/jobs/runner.py).
MAX_DATABASE_DEFERRALS = 5
DATABASE_DEFER_SECONDS = 5.0
#: A run found lost this soon after the process that finds it saw the database unavailable
#: is taken to have died of the outage (seconds): its worker was most likely stuck
#: recording an outcome until its budget ran out.
DATABASE_FAULT_WINDOW = 30.0
Status = JobRun.Status


def _running(pid: int) -> psutil.Process | None:
    """The process ``pid`` while it runs; None once it has exited. A SIGKILLed process stays
    a zombie until its parent (or init) reaps it: dead all the same. May raise AccessDenied."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def worker_gone(worker: str, started_at: datetime | None) -> bool | None:
    """Whether the worker (``host:pid``) that claimed a run at ``started_at`` no longer
    exists: known only on its own host (hostnames must be unique per cluster host), None
    elsewhere. A pid taken by a process started after the claim counts as gone."""
    host, _, pid_text = worker.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        process = _running(int(pid_text))
        if process is None:
            return True
        created = process.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:
        return False
    # create_time is rounded to the clock tick: a second of slack.
    return started_at is not None and created > started_at.timestamp() + 1


def is_lost(run: JobRun) -> bool:
    """A running run's worker is gone: dead on this host (known at once), or silent (no
    heartbeat for the job's ``lost_after``), wherever it runs."""
    if worker_gone(run.worker, run.started_at):
        return True
    threshold = timezone.now() - timedelta(seconds=declared.lost_after_seconds(run.name))
    return run.heartbeat_at is None or run.heartbeat_at < threshold


def run_recover_lost(*, run_id: int, worker_dead: bool = False, database_fault: bool = False) -> str | None:
    """Move on one run whose worker is gone: retry it under its policy, or fail it (running
    its job's failure hook) when no attempts are left. A run an operator asked to cancel
    ends cancelled instead. ``worker_dead``: its sentinel saw the worker die;
    ``database_fault``: while the database was unavailable, so the same attempt runs again
    (as a job failing on the database does, at most ``MAX_DATABASE_DEFERRALS`` times); so
    too when the server restarted since the run was last heard from."""
    with transaction.atomic():
        run = JobRun.objects.select_for_update(skip_locked=True).filter(pk=run_id, status=Status.RUNNING).first()
        if run is None or not (worker_dead or is_lost(run)):
            return None
        job = declared.get(run.name)
        message = f"worker {run.worker or '?'} stopped during attempt {run.attempt}"
        delay = job.retry.delay_after(run.attempt) if job else None
        if run.cancel_requested_at is not None:
            reason = f"cancelled by {run.cancel_requested_by or 'an operator'}; {message}"
            transitions.finish(run, job, status=Status.CANCELLED, code="cancelled", message=reason)
            outcome = "cancelled"
        elif (database_fault or database_restarted_since(run.heartbeat_at)) and run.deferrals < MAX_DATABASE_DEFERRALS:
            transitions.defer(run, seconds=DATABASE_DEFER_SECONDS)
            outcome = "deferred"
        elif delay is not None:
            transitions.retry(run, delay=delay, code=WORKER_LOST, message=message)
            outcome = "retried"
        else:
            transitions.finish(run, job, status=Status.FAILED, code=WORKER_LOST, message=message)
            outcome = "failed"
    logger.warning("lost run recovered: %s", outcome, extra={"job": run.name, "run_id": run.pk, "attempt": run.attempt})
    return outcome


def runs_recover_of_worker(*, pid: int | None, database_fault: bool = False) -> list[str | None]:
    """The sentinel saw its worker ``pid`` die: move its run on now, and end the lease of
    the message it was executing, which would otherwise hold the runs it carried after
    this one (``runner.execute_many``) until the lease ran out. A worker that died between
    two runs of a message has none running: the message is then the one of the run it
    finished last, if that message is still leased (a message acknowledged is not)."""
    worker = f"{socket.gethostname()}:{pid}"
    rows = list(JobRun.objects.filter(status=Status.RUNNING, worker=worker).values_list("pk", "task_id", "queue"))
    outcomes = [run_recover_lost(run_id=pk, worker_dead=True, database_fault=database_fault) for pk, _, _ in rows]
    messages = [(task_id, queue) for _pk, task_id, queue in rows]
    if not rows:
        # Within a lease: an older message came back by itself. By end time, which is indexed.
        since = timezone.now() - timedelta(seconds=djangoq.message_lease())
        finished = JobRun.objects.filter(finished_at__gte=since, worker=worker).order_by("-finished_at")
        messages = list(finished.values_list("task_id", "queue")[:1])
    _leases_end(messages, whose=f"dead worker {pid}'s")
    return outcomes


def _leases_end(messages: Iterable[tuple[str, str]], *, whose: str) -> None:
    """End the leases of these pulled messages (task id, queue) of dead workers."""
    by_queue: dict[str, set[str]] = defaultdict(set)
    for task_id, queue in messages:
        if task_id:
            by_queue[queue].add(task_id)
    for queue, task_ids in by_queue.items():
        try:
            djangoq.get_broker(queue or None).leases_end(task_ids)
        except Exception:  # the lease still ends by itself
            logger.warning("could not end the lease of %s message", whose, exc_info=True)


def _of_queue(queue: str | None) -> Q:
    """The runs whose messages go to ``queue`` (every run for None). A run enqueued before
    runs recorded their queue goes where its job is declared to go."""
    if queue is None:
        return Q()
    names = [job.name for job in declared.REGISTRY.values() if (job.queue or queue) == queue]
    return Q(queue=queue) | Q(queue="", name__in=names)


def database_restarted_since(moment: datetime | None) -> bool:
    """Whether the PostgreSQL server started after ``moment``. A run last heard from before
    then was running when the server stopped: a crash may have taken back the outcome its
    worker recorded (``JOBS_WORKER_ASYNC_COMMIT``), or the outage stopped the worker. Known
    to every process that finds the run, on any host, which ``database_fault_recent`` is not:
    a sentinel between two checks may never see the outage."""
    if moment is None:
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time() > %s", [moment])
        row = cursor.fetchone()
    return bool(row and row[0])


def database_fault_recent() -> bool:
    """Whether this process found the database unavailable within ``DATABASE_FAULT_WINDOW``:
    a lost run it finds now is put back for the same attempt rather than charged."""
    return djangoq.database_failed_within(DATABASE_FAULT_WINDOW)


def runs_recover_dead_local(*, queue: str | None = None) -> list[str | None]:
    """Runs claimed by workers of this host that no longer exist (a cluster killed whole),
    moved on when a cluster starts here. A sentinel passes its own ``queue``: the runs of
    another queue may belong to clusters with another broker (a retry sent through this
    one would never reach them); their own sentinels and the recover schedule see to them."""
    host = socket.gethostname()
    running = JobRun.objects.filter(_of_queue(queue), status=Status.RUNNING, worker__startswith=f"{host}:")
    rows = running.values_list("pk", "worker", "started_at", "task_id", "queue")
    dead = [(pk, task_id, to) for pk, worker, started_at, task_id, to in rows if worker_gone(worker, started_at)]
    fault = database_fault_recent()
    outcomes = [run_recover_lost(run_id=run_id, worker_dead=True, database_fault=fault) for run_id, _, _ in dead]
    # As the sentinel does when it sees the worker die (runs_recover_of_worker): this check
    # may find the dead run first, and the runs its message carried after it would then
    # wait for the lease to run out.
    _leases_end(((task_id, to) for _, task_id, to in dead), whose="dead workers'")
    return outcomes


def runs_recover_lost(*, queue: str | None = None, limit: int = 500) -> list[str | None]:
    """Every lost run (of ``queue``, when given): this host's dead workers' runs, and other
    hosts' silent ones."""
    now = timezone.now()
    thresholds = [job.lost_after_seconds for job in declared.REGISTRY.values()] + [settings.JOBS_LOST_AFTER]
    silent = JobRun.objects.filter(
        _of_queue(queue), status=Status.RUNNING, heartbeat_at__lt=now - timedelta(seconds=min(thresholds))
    ).values_list("pk", flat=True)[:limit]
    fault = database_fault_recent()
    outcomes = [run_recover_lost(run_id=run_id, database_fault=fault) for run_id in list(silent)]
    return outcomes + runs_recover_dead_local(queue=queue)


def _alive(pid: int) -> bool:
    try:
        return _running(pid) is not None
    except psutil.AccessDenied:
        return True


def runs_repush_stranded(*, queue: str, waiting_for: float, alone: bool = False, limit: int = 500) -> int:
    """Send again the messages of ``queue``'s runs that have been due for ``waiting_for``
    seconds: after a pool restart (their messages sat in the stuck task queue) or a start
    with no other cluster alive on the queue (``alone``: whatever a dead cluster had
    pulled). A message that comes back later finds nothing to claim."""
    now = timezone.now()
    if alone:
        fresh = ClusterHeartbeat.objects.filter(
            cluster_name=queue, last_seen__gte=now - timedelta(seconds=settings.JOBS_CLUSTER_STALE_AFTER)
        ).values_list("host", "pid")
        host = socket.gethostname()
        # This host's dead sentinels do not count (a cluster killed whole, restarting now).
        if any(h != host or (pid != os.getpid() and _alive(pid)) for h, pid in fresh):
            return 0
    late = now - timedelta(seconds=waiting_for)
    candidates = (
        JobRun.objects.select_for_update(skip_locked=True)
        .filter(_of_queue(queue), status=Status.QUEUED, due_at__lte=late, pushed_at__lte=late)
        .exclude(name__in=JobPause.objects.values("name"))
    )
    waiting = djangoq.message_of_run_waiting(queue)
    if waiting is not None:
        # Its own message still waits in the queue, unpulled: not stranded (sending it again
        # would only make a duplicate). A shared message cannot be told apart: sent again.
        candidates = candidates.exclude(waiting)
    with transaction.atomic():
        stranded = list(candidates[:limit])
        transitions.repush(stranded)
    if stranded:
        logger.warning("sent %d stranded messages again", len(stranded), extra={"queue": queue})
    return len(stranded)


def runs_recover(*, limit: int = 500) -> dict[str, int]:
    """Recover lost runs, re-send messages of runs that waited too long for theirs, and
    forget clusters that have been silent for JOBS_CLUSTER_PRUNE_AFTER."""
    now = timezone.now()
    outcomes = runs_recover_lost(limit=limit)
    late = now - timedelta(seconds=settings.JOBS_REPUSH_AFTER)
    with transaction.atomic():
        stale = list(
            JobRun.objects.select_for_update(skip_locked=True)
            .filter(status=Status.QUEUED, due_at__lt=late, pushed_at__lt=late)
            # A paused job's runs wait for the resume, which sends them again.
            .exclude(name__in=JobPause.objects.values("name"))[:limit]
        )
        transitions.repush(stale)
    pruned, _ = ClusterHeartbeat.objects.filter(
        last_seen__lt=now - timedelta(seconds=settings.JOBS_CLUSTER_PRUNE_AFTER)
    ).delete()
    result = {
        "lost_retried": outcomes.count("retried"),
        "lost_failed": outcomes.count("failed"),
        "lost_cancelled": outcomes.count("cancelled"),
        "repushed": len(stale),
        "clusters_pruned": pruned,
    }
    if any(result.values()):
        logger.warning("recovery sweep moved runs on", extra=result)
    return result


def runs_prune(*, older_than_days: int | None = None, batch_size: int = 5000) -> int:
    """Delete finished runs older than the retention, in batches (short locks)."""
    days = older_than_days or settings.JOBS_RUN_RETENTION_DAYS
    cutoff = timezone.now() - timedelta(days=days)
    finished = JobRun.objects.filter(status__in=JobRun.TERMINAL, finished_at__lt=cutoff)
    return rows_delete_in_batches(finished, batch_size=batch_size)
