"""Every change of a run's state, each one conditional UPDATE with its guard.

The runner, the recovery sweep and the control service (cancel, retry now, resume) all
move runs through these functions, so a run changes state in one way only, and a change
that lost a race (the run moved meanwhile) changes nothing and says so by returning False.

    queued ──claim──► running ──succeed──► succeeded   (succeed_then_claim: and the next run's claim)
      ▲  │                │ ├──finish────► failed | cancelled   (the job's failure hook runs)
      │  └──finish──►     │ ├──retry─────► queued (attempt + 1, due later)
      │   cancelled       │ └──defer─────► queued (same attempt)
      └── retry_now (due now) ◄── queued
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, JSONField, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from project import db
from project.jobs import djangoq
from project.jobs.models import JobPause, JobRun
from project.jobs.queue import runs_push_on_commit
from project.jobs.redact import redact

if TYPE_CHECKING:
    from project.jobs.registry import Job

logger = logging.getLogger("project.jobs")

Status = JobRun.Status
MAX_ERROR_LENGTH = 1000


def _history_entry(run: JobRun, outcome: str, code: str = "", message: str = "", *, now: Any = None) -> dict[str, Any]:
    return {
        "attempt": run.attempt,
        "due_at": run.due_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": (now or timezone.now()).isoformat(),
        "outcome": outcome,
        "error_code": code,
        "error": message[:300],
    }


def _history_appended(entry: dict[str, Any]) -> RawSQL:
    """The run's history with ``entry`` appended, in the UPDATE itself (not the list this
    process read at the claim, rewritten whole)."""
    return RawSQL("history || %s::jsonb", (json.dumps([entry]),), output_field=JSONField())


def _owned(run: JobRun, statuses: Sequence[str] = (Status.RUNNING,), **extra: Any) -> QuerySet[JobRun]:
    """The run, only while it is still in this attempt and state (nobody took it over)."""
    return JobRun.objects.filter(pk=run.pk, attempt=run.attempt, status__in=statuses, **extra)


# The hot path (every run: claim, then success) is written as SQL built once: one statement
# each, the claim returning the whole row, so a run costs no re-read and no query building.
_FIELDS = JobRun._meta.concrete_fields
_ATTNAMES = [field.attname for field in _FIELDS]
_COLUMNS = [cast(str, field.column) for field in _FIELDS]  # a concrete field always has one
_CONVERTED = [(index, field) for index, field in enumerate(_FIELDS) if hasattr(field, "from_db_value")]
_TABLE = JobRun._meta.db_table
_PAUSES = JobPause._meta.db_table

# The claim and the success commit without waiting for their WAL to reach the disk
# (JOBS_WORKER_ASYNC_COMMIT): a PostgreSQL crash may then take back the last fraction of a
# second of them, and the state it leaves is the one a worker killed a moment earlier
# leaves, which recovery moves on without charging the attempt, the server having started
# after the run was last heard from (docs/reliability.md). The setting is a
# parameter (``_commit_mode``), evaluated once per statement as a one-time filter, and
# lasts only for the statement's own transaction: inside a caller's transaction it is
# left as it was.
_COMMIT_MODE = (
    "(SELECT set_config('synchronous_commit', COALESCE(%s, current_setting('synchronous_commit')), true)) IS NOT NULL"
)


def _commit_mode() -> str | None:
    if settings.JOBS_WORKER_ASYNC_COMMIT and not connection.in_atomic_block:
        return "off"
    return None


_CLAIM_SQL = f"""
    UPDATE {_TABLE} SET status = 'running', started_at = %s, heartbeat_at = %s, finished_at = NULL,
        worker = %s, task_id = %s, progress = NULL, updated_at = %s
    WHERE id = %s AND attempt = %s AND status = 'queued' AND due_at <= %s
      AND NOT EXISTS (SELECT 1 FROM {_PAUSES} p WHERE p.name = {_TABLE}.name)
      AND {_COMMIT_MODE}
    RETURNING {", ".join(_COLUMNS)}
"""

_SUCCEED_SQL = f"""
    UPDATE {_TABLE} SET status = 'succeeded', finished_at = %s, result = %s::jsonb, error_code = '',
        error = '', history = history || %s::jsonb, updated_at = %s, progress = %s::jsonb
    WHERE id = %s AND attempt = %s AND status = 'running' AND {_COMMIT_MODE}
"""

# A worker with more runs in its message records a success and claims the next run in one
# statement: one round trip and one commit per run instead of two. The two UPDATEs touch
# different rows; the claim is the same conditional UPDATE as on its own.
_SUCCEED_THEN_CLAIM_SQL = f"""
    WITH done AS ({_SUCCEED_SQL} RETURNING 1), claimed AS ({_CLAIM_SQL})
    SELECT (SELECT count(*) FROM done), claimed.* FROM (VALUES (1)) AS one LEFT JOIN claimed ON true
"""


def _run_from_row(row: Sequence[Any]) -> JobRun:
    values = list(row)
    for index, field in _CONVERTED:
        values[index] = field.from_db_value(values[index], None, connection)
    return JobRun.from_db(connection.alias, _ATTNAMES, values)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


#: A run due this much later is claimed all the same: hosts' clocks differ a little, and a
#: message sent at the run's due time by one host's clock must not come back as early.
ON_TIME_SLACK = timedelta(seconds=1)


def _claim_params(run_id: int, attempt: int, worker: str, task_id: str, now: Any, mode: str | None) -> list[Any]:
    """``_CLAIM_SQL``'s parameters, in its order (on its own and in ``_SUCCEED_THEN_CLAIM_SQL``)."""
    return [now, now, worker, task_id, now, run_id, attempt, now + ON_TIME_SLACK, mode]


def claim(run_id: int, attempt: int, *, worker: str, task_id: str) -> JobRun | None:
    """queued → running for exactly this attempt once it is due, unless its job is paused.
    One UPDATE that returns the claimed row."""
    now = timezone.now()
    with db.prepared_cursor(connection) as cursor:
        cursor.execute(_CLAIM_SQL, _claim_params(run_id, attempt, worker, task_id, now, _commit_mode()))
        row = cursor.fetchone()
    return None if row is None else _run_from_row(row)


def _succeed_params(run: JobRun, result: Any, progress: dict[str, Any] | None, now: Any, mode: str | None) -> list[Any]:
    return [
        now,
        _json(result),
        json.dumps([_history_entry(run, "succeeded", now=now)]),  # appended in SQL, as in retry and finish
        now,
        _json(progress),
        run.pk,
        run.attempt,
        mode,
    ]


def _succeeded(run: JobRun, result: Any, now: Any) -> None:
    run.status, run.finished_at, run.result = Status.SUCCEEDED, now, result


def _plain(result: Any) -> Any:
    return result if isinstance(result, (dict, list, int, float, str, bool, type(None))) else None


def succeed(run: JobRun, result: Any, *, progress: dict[str, Any] | None, ack: int | None = None) -> bool:
    """running → succeeded, appending the attempt to the run's history in the same UPDATE.
    With ``ack`` (the ORM queue row of the message being executed), the same statement
    acknowledges the message, whether or not the run was still this worker's."""
    now = timezone.now()
    result = _plain(result)
    sql = _SUCCEED_SQL
    params: list[Any] = []
    if ack is not None:
        sql, params = djangoq.ORM_ACK_CTE + sql, [ack]
    params += _succeed_params(run, result, progress, now, _commit_mode())
    with db.prepared_cursor(connection) as cursor:
        cursor.execute(sql, params)
        updated = cursor.rowcount
    if updated:
        _succeeded(run, result, now)
    return bool(updated)


def succeed_then_claim(
    run: JobRun,
    result: Any,
    *,
    progress: dict[str, Any] | None,
    claim_id: int,
    claim_attempt: int,
    worker: str,
    task_id: str,
) -> tuple[bool, JobRun | None]:
    """``succeed`` for ``run``, and ``claim`` for the next run of the same message, in one
    statement: (whether the success was recorded, the claimed run or None)."""
    now = timezone.now()
    result = _plain(result)
    mode = _commit_mode()
    claim_params = _claim_params(claim_id, claim_attempt, worker, task_id, now, mode)
    params = [*_succeed_params(run, result, progress, now, mode), *claim_params]
    with db.prepared_cursor(connection) as cursor:
        cursor.execute(_SUCCEED_THEN_CLAIM_SQL, params)
        row = cursor.fetchone()
    assert row is not None  # the outer SELECT always gives one row
    if row[0]:
        _succeeded(run, result, now)
    return bool(row[0]), None if row[1] is None else _run_from_row(row[1:])


def retry(
    run: JobRun, *, delay: float, code: str, message: str, statuses: Sequence[str] = (Status.RUNNING,), **extra: Any
) -> bool:
    """Record a failed attempt and queue the next one ``delay`` seconds from now; its
    message is sent once the surrounding transaction commits."""
    now = timezone.now()
    due = now + timedelta(seconds=delay)
    message = redact(message)[:MAX_ERROR_LENGTH]
    updated = _owned(run, statuses, **extra).update(
        status=Status.QUEUED,
        attempt=run.attempt + 1,
        due_at=due,
        pushed_at=now,
        error_code=code,
        error=message,
        history=_history_appended(_history_entry(run, "retried", code, message, now=now)),
        updated_at=now,
    )
    if not updated:
        logger.warning("run was taken over before its retry was recorded", extra={"run_id": run.pk})
        return False
    run.attempt, run.due_at, run.status = run.attempt + 1, due, Status.QUEUED
    runs_push_on_commit(runs=[run])
    return True


def defer(run: JobRun, *, seconds: float) -> bool:
    """running → queued for the same attempt, ``seconds`` from now (waiting for capacity)."""
    now = timezone.now()
    due = now + timedelta(seconds=seconds)
    updated = _owned(run).update(
        status=Status.QUEUED, due_at=due, pushed_at=now, deferrals=F("deferrals") + 1, updated_at=now
    )
    if updated:
        run.due_at, run.status = due, Status.QUEUED
        runs_push_on_commit(runs=[run])
    return bool(updated)


def finish(
    run: JobRun,
    job: Job | None,
    *,
    status: str,
    code: str,
    message: str,
    trace: str = "",
    statuses: Sequence[str] = (Status.RUNNING,),
    **extra: Any,
) -> bool:
    """End the run ``failed`` or ``cancelled`` and run its job's failure hook in the same
    transaction, so the job's own record moves to a final state with it. A hook that
    raises is logged; it cannot undo the run's end."""
    assert status in (Status.FAILED, Status.CANCELLED)
    now = timezone.now()
    message = redact(message)[:MAX_ERROR_LENGTH]
    with transaction.atomic():
        updated = _owned(run, statuses, **extra).update(
            status=status,
            finished_at=now,
            error_code=code,
            error=message,
            traceback=redact(trace),
            history=_history_appended(_history_entry(run, status, code, message, now=now)),
            updated_at=now,
        )
        if updated and job is not None:
            try:
                with transaction.atomic():
                    job.failed(run, code, message)
            except Exception:
                logger.exception("on_failure hook of %s raised", job.name, extra={"run_id": run.pk})
    return bool(updated)


def cancel_request(run: JobRun, *, by: str) -> bool:
    """Ask a running run to stop: its job sees the request at its next heartbeat or
    progress report and the run ends ``cancelled``."""
    return bool(
        _owned(run, cancel_requested_at__isnull=True).update(
            cancel_requested_at=timezone.now(), cancel_requested_by=by[:150], updated_at=timezone.now()
        )
    )


def retry_now(run: JobRun) -> bool:
    """Make a queued run due now and send its message again (the old message, when it
    comes, finds nothing to claim)."""
    now = timezone.now()
    updated = _owned(run, (Status.QUEUED,)).update(due_at=now, pushed_at=now, updated_at=now)
    if updated:
        run.due_at = now
        runs_push_on_commit(runs=[run], due=now)
    return bool(updated)


def repush(runs: Sequence[JobRun]) -> int:
    """Send the messages of queued runs again, at their own due times (after a resume, or
    when a message was lost). Duplicates find nothing to claim."""
    if not runs:
        return 0
    now = timezone.now()
    JobRun.objects.filter(pk__in=[run.pk for run in runs], status=Status.QUEUED).update(pushed_at=now)
    runs_push_on_commit(runs=runs)
    return len(runs)
