"""What a running job tells the toolkit, and what the toolkit tells it back.

A job reports how far it got with ``report_progress(done, total, note)``; a loop that has
nothing to count calls ``heartbeat()``. Both are cheap (no query): a watcher thread, one
per worker process and started on first use, publishes the heartbeat and the latest
progress of the runs executing in its process, and reads back whether an operator asked
to cancel. The job learns of that request at its next call, which raises
``JobCancelled``.

The watcher has its own database connection, so it keeps working while the job holds a
long read-only snapshot (an export) or waits on a socket (an upload). It first touches
the database ``JOBS_CONTROL_POLL`` seconds into a run, so short runs cost nothing.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

logger = logging.getLogger("project.jobs")

MAX_NOTE_LENGTH = 200


class JobCancelled(BaseException):
    """Raised inside a job by ``report_progress()`` or ``heartbeat()`` once its run is to
    stop: an operator cancelled it, or the run was taken over (recovered, or failed by
    hand). A ``BaseException``, as ``KeyboardInterrupt`` is, so that a job's broad
    ``except Exception`` does not swallow it; ``transaction.atomic`` still rolls back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Watch:
    """The state of one executing run, shared by the job's thread and the watcher."""

    run_id: int
    attempt: int
    report: dict[str, Any] | None = None
    version: int = 0
    flushed: int = 0
    last_beat: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None
    token: contextvars.Token[Watch | None] | None = field(default=None, repr=False)
    # Called once, by the watcher, if the run is still executing at ``overrun_at``
    # (monotonic): a shared message hands its runs not started yet to other workers.
    on_overrun: Callable[[], None] | None = field(default=None, repr=False)
    overrun_at: float = 0.0


_current: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("job_watch", default=None)


def poll_interval() -> float:
    return max(0.05, min(settings.JOBS_CONTROL_POLL, settings.JOBS_HEARTBEAT_INTERVAL))


class _Watcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[int, Watch] = {}
        self._wake = threading.Event()
        self._pid = 0

    def add(self, watch: Watch) -> None:
        with self._lock:
            self._watches[watch.run_id] = watch
            if self._pid != os.getpid():
                # First run in this process (a forked worker inherits no threads).
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="jobs-watcher", daemon=True).start()
        self._wake.set()

    def remove(self, watch: Watch) -> None:
        with self._lock:
            if self._watches.get(watch.run_id) is watch:
                del self._watches[watch.run_id]

    def _loop(self) -> None:
        while True:
            with self._lock:
                watches = list(self._watches.values())
                if not watches:
                    self._wake.clear()
            if not watches:
                # Idle: hold no connection (a test database cannot be dropped under one).
                connection.close()
                self._wake.wait()
                continue
            time.sleep(poll_interval())
            for watch in watches:
                with self._lock:
                    if self._watches.get(watch.run_id) is not watch:
                        continue
                try:
                    _overrun(watch)
                    check(watch)
                except DatabaseError:
                    logger.warning("heartbeat not recorded", exc_info=True, extra={"run_id": watch.run_id})
                    connection.close()
                except Exception:  # the watcher must outlive any surprise
                    logger.exception("job watcher failed", extra={"run_id": watch.run_id})


def _overrun(watch: Watch) -> None:
    if watch.on_overrun is not None and time.monotonic() >= watch.overrun_at:
        hand_on, watch.on_overrun = watch.on_overrun, None
        hand_on()


def check(watch: Watch) -> None:
    """One round of the watcher for one run: publish the heartbeat (and progress, when it
    moved), and note a cancel request or a takeover."""
    now = time.monotonic()
    version = watch.version
    beat = version != watch.flushed or now - watch.last_beat >= settings.JOBS_HEARTBEAT_INTERVAL
    with connection.cursor() as cursor:
        if beat:
            report = watch.report
            cursor.execute(
                """
                UPDATE job_runs SET heartbeat_at = %s, progress = %s::jsonb
                WHERE id = %s AND attempt = %s AND status = 'running'
                RETURNING cancel_requested_at IS NOT NULL, cancel_requested_by
                """,
                [timezone.now(), json.dumps(report) if report is not None else None, watch.run_id, watch.attempt],
            )
        else:
            cursor.execute(
                """
                SELECT cancel_requested_at IS NOT NULL, cancel_requested_by FROM job_runs
                WHERE id = %s AND attempt = %s AND status = 'running'
                """,
                [watch.run_id, watch.attempt],
            )
        row = cursor.fetchone()
        if row is None:
            cursor.execute("SELECT status, attempt FROM job_runs WHERE id = %s", [watch.run_id])
            current = cursor.fetchone()
    if beat:
        watch.last_beat, watch.flushed = now, version
    if row is not None:
        if row[0] and watch.stop_reason is None:
            watch.stop_reason = f"cancelled by {row[1] or 'an operator'}"
        return
    # None: the row is not visible from here (only inside a test's open transaction).
    if current is not None and watch.stop_reason is None:
        watch.stop_reason = f"the run was taken over (now {current[0]}, attempt {current[1]})"


_watcher = _Watcher()


def watch_start(
    *, run_id: int, attempt: int, on_overrun: Callable[[], None] | None = None, overrun_at: float = 0.0
) -> Watch:
    watch = Watch(run_id=run_id, attempt=attempt, on_overrun=on_overrun, overrun_at=overrun_at)
    _watcher.add(watch)
    watch.token = _current.set(watch)
    return watch


def watch_stop(watch: Watch) -> None:
    _watcher.remove(watch)
    if watch.token is not None:
        _current.reset(watch.token)


def current_watch() -> Watch | None:
    return _current.get()


def heartbeat() -> None:
    """Tell the toolkit the job is alive and stop it if its run is to end: raises
    ``JobCancelled`` once the run was cancelled. A no-op outside a job."""
    watch = _current.get()
    if watch is not None and watch.stop_reason is not None:
        raise JobCancelled(watch.stop_reason)


def report_progress(done: int | None = None, total: int | None = None, note: str = "", **extra: Any) -> None:
    """Record how far the running job got: ``done`` of ``total`` units, a short ``note``,
    and any JSON-safe ``extra`` values the job's own views want (shown on its run). Then
    act as ``heartbeat()``. Costs no query: the watcher publishes the latest report."""
    watch = _current.get()
    if watch is None:
        return
    watch.report = {"done": done, "total": total, "note": note[:MAX_NOTE_LENGTH], **extra}
    watch.version += 1
    heartbeat()
