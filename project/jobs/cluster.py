"""The job cluster's supervisor: django-q2's sentinel, made to keep a cluster executing.

``manage.py qcluster`` (our command, which replaces django-q2's) runs django-q2's cluster
with this sentinel. What it adds, each for a failure that stock django-q2 does not notice:

* **A stalled pool restarts.** Workers share one task queue, whose read lock an idle
  worker holds while it waits. A worker killed while waiting (SIGKILL, the OOM killer)
  never releases it: no worker can take a task again, and the cluster looks alive. The
  sentinel counts the tasks workers take; when tasks wait, a worker is idle and none was
  taken for ``JOBS_STALL_AFTER`` seconds, it gives the pool a new queue: idle workers
  and the pusher are replaced at once, busy ones finish their task first. The runs whose
  messages were stranded in the old queue (due for that long) are sent again.
* **A dead worker's run moves on at once.** When a worker dies (not recycled), the run it
  was executing is recovered there and then (retried under its policy, or failed), rather
  than when its heartbeat goes stale. At start, the runs of this host's workers that no
  longer exist (a cluster killed whole) are recovered the same way; every
  ``JOBS_LOST_CHECK_EVERY`` seconds, so are runs whose heartbeat went stale elsewhere.
  A sentinel recovers the runs of its own queue only (the every-minute recover schedule
  covers them all): a retry is sent through its broker, which another queue's clusters
  may not read.
  A cluster that starts with no other alive on its queue sends the due runs' messages
  again (those a dead cluster had pulled would otherwise wait for their lease), except
  the runs whose own message still waits in the ORM queue, unpulled.
* **SIGTERM to the whole process group is a clean stop**, as systemd sends it
  (``KillMode=control-group``): the sentinel turns it into a graceful stop, and workers,
  pusher and monitor ignore it, so running jobs finish and the pulled messages are given
  back. A worker over its time budget is killed with SIGKILL.
* **Stopping cannot hang**: workers that do not exit within their budget are killed.
* **A worker killed while it holds its timer's lock does not stop the guard.** django-q2's
  worker holds that lock while it hands its result over, and stock django-q2's guard
  waits for it without a limit: one SIGKILL at that moment and no worker is ever
  replaced again. This guard reads timers without the lock and waits for it briefly.
* **The database's fault is not the job's**: a worker that dies (its budget spent waiting
  for the database, say) within ``recovery.DATABASE_FAULT_WINDOW`` of the sentinel finding the
  database unavailable has its run put back for the same attempt, not charged.
"""

from __future__ import annotations

import logging
import signal
import time
import uuid
from multiprocessing import Value, current_process
from multiprocessing.process import BaseProcess
from typing import Any, cast

from django import db
from django.conf import settings
from django.db import DatabaseError
from django_q import cluster as stock
from django_q.conf import Conf
from django_q.queues import Queue
from django_q.status import Stat
from django_q.worker import worker

from project.jobs import djangoq, overview, recovery

logger = logging.getLogger("project.jobs")

IDLE, RECYCLED, TIMED_OUT = -1, -2, 0


def _ignore_sigterm() -> None:
    # The sentinel coordinates the stop of its children: a group SIGTERM must not kill a
    # worker in the middle of a job, nor the pusher while it holds messages.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _child(target: Any, *args: Any) -> None:
    _ignore_sigterm()
    target(*args)


class Sentinel(stock.Sentinel):
    # What django-q2's sentinel sets up and this one replaces or reads (django-q2 has no types).
    pool: list[Any]
    pusher: Any
    monitor: Any
    task_queue: Any
    result_queue: Any
    event_out: Any
    stop_event: Any
    start_event: Any
    cluster_id: Any
    pool_size: int
    timeout: int

    def __init__(
        self,
        stop_event: Any,
        start_event: Any,
        cluster_id: Any,
        broker: Any = None,
        timeout: int | None = None,
        start: bool = True,
    ) -> None:
        super().__init__(stop_event, start_event, cluster_id, broker, timeout, start=False)
        self._terminating = False
        signal.signal(signal.SIGTERM, self._sigterm)
        self.draining: list[Any] = []
        self.pool_restarts = 0
        self._taken = Value("L", 0)
        djangoq.taken_counter_set(self._taken)
        self._stall = _StallWatch(after=settings.JOBS_STALL_AFTER)
        self._next_lost_check = 0.0
        self._dead_workers: dict[int | None, bool] = {}
        if start:
            self.start()

    def _sigterm(self, signum: int, frame: Any) -> None:
        # Only a flag: setting the multiprocessing Event from a handler that interrupted
        # this process's own wait on it deadlocks (notify_all waits for the waiter).
        self._terminating = True

    # --- processes -------------------------------------------------------------------

    def spawn_process(self, target: Any, *args: Any) -> BaseProcess:
        process = stock.get_mp_context().Process(
            target=_child, args=(target, *args), name=f"Process-{uuid.uuid4().hex}"
        )
        process.daemon = True
        if target is worker:
            process.daemon = Conf.DAEMONIZE_WORKERS
            process.timer = args[2]  # django-q2's guard reads it
            self.pool.append(process)
        process.start()
        return cast(BaseProcess, process)

    def spawn_cluster(self) -> None:
        self._warn_of_other_brokers()
        self._recover_dead_workers_runs()  # closes the connections both opened before the fork
        super().spawn_cluster()

    def _warn_of_other_brokers(self) -> None:
        try:
            others = overview.clusters_on_other_brokers(broker=settings.JOBS_BROKER)
        except DatabaseError:
            return
        if others:
            logger.error(
                "job clusters on this database use another broker than this one (%s): neither side sees "
                "the work the other's senders enqueue; give every cluster and web server the same JOBS_BROKER",
                settings.JOBS_BROKER,
                extra={"other_brokers": others},
            )

    def reincarnate(self, process: Any) -> None:
        if process in self.pool:
            timer = _timer(process)
            if timer == TIMED_OUT and process.is_alive():
                # Over its budget: stock django-q2 sends SIGTERM, which workers ignore here.
                process.kill()
                process.join(5)
            if not process.is_alive():
                # It may have died holding its timer's lock, which stock django-q2 takes.
                process.timer = Value("f", timer)
            super().reincarnate(process)
            if timer != RECYCLED:
                self._recover_runs_of(process.pid)
            return
        super().reincarnate(process)

    def _recover_runs_of(self, pid: int | None) -> None:
        # A worker that died while the database was away most likely died of it (stuck
        # recording an outcome until its budget ran out): its attempt is not charged.
        fault = self._dead_workers.get(pid, recovery.database_fault_recent())
        try:
            recovery.runs_recover_of_worker(pid=pid, database_fault=fault)
        except DatabaseError:
            logger.warning("could not recover the run of dead worker %s yet", pid, exc_info=True)
            db.connections.close_all()
            djangoq.database_failed()
            self._dead_workers[pid] = fault  # tried again at the next lost-run check
        else:
            self._dead_workers.pop(pid, None)

    def _recover_dead_workers_runs(self) -> None:
        try:
            recovery.runs_recover_dead_local(queue=self._queue())
            # Pulled by a cluster that died (if no other serves the queue): at once, not
            # when their lease ends.
            recovery.runs_repush_stranded(queue=self._queue(), waiting_for=0, alone=True)
        except DatabaseError:
            logger.warning("could not look for runs of dead workers", exc_info=True)
        db.connections.close_all()  # not inherited by the processes about to be forked

    # --- the guard loop -------------------------------------------------------------

    def guard(self) -> None:
        logger.info("%s guarding cluster %s [%s]", current_process().name, self._cluster_name(), self.queue_name())
        self.start_event.set()
        Stat(self).save()
        logger.info("Q Cluster %s running.", self._cluster_name())
        counter = 0.0
        cycle = Conf.GUARD_CYCLE
        while True:
            for process in list(self.pool):
                # Liveness first: a dead worker may hold its timer's lock.
                if not process.is_alive() or not _tick(process, cycle):
                    self.reincarnate(process)
            self._drain_check()
            if not self.monitor.is_alive():
                self.reincarnate(self.monitor)
            if not self.pusher.is_alive():
                self.reincarnate(self.pusher)
            if self._stalled():
                self.pool_restart()
            self._lost_check()
            counter += cycle
            if counter >= 30 and Conf.SCHEDULER:
                counter = 0
                stock.scheduler(broker=self.broker)
            Stat(self).save()
            if self._terminating or self.stop_event.wait(cycle) or self._terminating:
                break
        if self._terminating:
            logger.info("SIGTERM: stopping the cluster once running jobs finish")
        self.stop()

    def _queue(self) -> str:
        # The queue as runs record it (``JobRun.queue``), not django-q2's ``queue_name()``,
        # which is the broker's list key ("django_q:<name>:q" with Redis).
        return djangoq.cluster_name()

    def _cluster_name(self) -> str:
        return str(stock.humanize(self.cluster_id.hex))

    def _stalled(self) -> bool:
        idle = any(p.is_alive() and _timer(p) == IDLE for p in self.pool)
        try:
            waiting = self.task_queue.qsize()
        except NotImplementedError:  # macOS: no sem_getvalue
            return False
        return self._stall.update(waiting=waiting > 0 and idle, taken=self._taken.value)

    def pool_restart(self) -> None:
        """Give the pool a new task queue: the old one's read lock is held by a dead worker."""
        self.pool_restarts += 1
        logger.critical(
            "no worker took a task for %.0f s while tasks waited and a worker was idle: "
            "the task queue is stuck (a worker died holding its lock); restarting the pool",
            self._stall.after,
        )
        self.pusher.kill()
        self.pusher.join(5)
        for process in list(self.pool):
            self.pool.remove(process)
            if process.is_alive() and _timer(process) > 0:
                self.draining.append(process)  # busy: finishes its task, then is stopped
            else:
                process.kill()
                process.join(5)
        old = self.task_queue
        self.task_queue = Queue(maxsize=Conf.QUEUE_LIMIT) if Conf.QUEUE_LIMIT else Queue()
        old.cancel_join_thread()
        db.connections.close_all()
        for _ in range(self.pool_size):
            self.spawn_worker()
        self.pusher = self.spawn_pusher()
        self._stall.reset(self._taken.value)
        try:
            # Their messages are in the old queue: sent again rather than left to their lease.
            recovery.runs_repush_stranded(queue=self._queue(), waiting_for=self._stall.after)
        except DatabaseError:
            logger.warning("could not send the stranded messages again", exc_info=True)
        db.connections.close_all()

    def _drain_check(self) -> None:
        for process in list(self.draining):
            timer = _timer(process)
            if not process.is_alive() or timer <= 0:
                # Done with its task (now waiting on the dead queue), or over its budget.
                if process.is_alive():
                    process.kill()
                    process.join(5)
                self.draining.remove(process)
                if timer == TIMED_OUT or timer > 0:
                    self._recover_runs_of(process.pid)
            else:
                _tick(process, Conf.GUARD_CYCLE)

    def _lost_check(self) -> None:
        now = time.monotonic()
        if now < self._next_lost_check:
            return
        self._next_lost_check = now + settings.JOBS_LOST_CHECK_EVERY
        for pid in list(self._dead_workers):
            self._recover_runs_of(pid)
        try:
            recovery.runs_recover_lost(queue=self._queue())
        except DatabaseError:
            logger.warning("lost-run check failed", exc_info=True)
            db.connections.close_all()
            djangoq.database_failed()

    # --- stopping --------------------------------------------------------------------

    def stop(self) -> None:
        """django-q2's stop, bounded: a worker that has not exited within its budget after
        the queue is drained is killed (its run is recovered at the next start or check)."""
        Stat(self).save()
        logger.info("%s stopping cluster processes", current_process().name)
        self.event_out.set()
        deadline = time.monotonic() + max(Conf.POLL, 1) + 10
        while self.pusher.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.pusher.is_alive():
            self.pusher.kill()
        for _ in range(len(self.pool)):
            self.task_queue.put("STOP")
        self.task_queue.close()
        self.task_queue.join_thread()
        deadline = time.monotonic() + self.timeout + 10
        while (self.pool or self.draining) and time.monotonic() < deadline:
            self._drain_check()
            self.pool = [p for p in self.pool if p.is_alive()]
            time.sleep(0.1)
            Stat(self).save()
        for process in self.pool + self.draining:
            logger.error("worker %s did not stop within %s s: killed", process.pid, self.timeout)
            process.kill()
            self._recover_runs_of(process.pid)
        self.pool, self.draining = [], []
        self.result_queue.put("STOP")
        self.result_queue.close()
        self.result_queue.join_thread()
        deadline = time.monotonic() + 30
        while self.monitor.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        Stat(self).save()


def _timer(process: Any) -> float:
    """A worker's timer, read without its lock (which a killed worker may hold for ever)."""
    return float(process.timer.get_obj().value)


def _tick(process: Any, cycle: float) -> bool:
    """Count a busy worker's budget down; False once it is spent. A worker holds its
    timer's lock while it hands its result over (its budget must not run out then):
    when the lock is held, the tick is skipped rather than waited for, because the
    holder may have been killed; the next cycle finds it dead."""
    lock = process.timer.get_lock()
    if not lock.acquire(timeout=cycle):
        return True
    try:
        value = process.timer.value
        if value == TIMED_OUT:
            return False
        if value > 0:
            process.timer.value = value - cycle
        return True
    finally:
        lock.release()


class _StallWatch:
    """True once ``waiting`` has held for ``after`` seconds with ``taken`` unchanged."""

    def __init__(self, *, after: float) -> None:
        self.after = after
        self._since: float | None = None
        self._taken = -1

    def update(self, *, waiting: bool, taken: int) -> bool:
        now = time.monotonic()
        if not waiting or taken != self._taken:
            self._since, self._taken = (now if waiting else None), taken
            return False
        if self._since is None:
            self._since = now
        return now - self._since >= self.after

    def reset(self, taken: int) -> None:
        self._since, self._taken = None, taken


def sentinel_install() -> None:
    """Make django-q2's ``Cluster.start`` spawn this sentinel (it names the module's
    ``Sentinel``; tests/jobs/test_djangoq_adapter.py checks that it still does)."""
    stock.Sentinel = Sentinel
