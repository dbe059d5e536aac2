"""Recording runs and handing their messages to the broker."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import JSONField
from django.utils import timezone

from project import context, db
from project.db import rows_insert_like
from project.jobs import declared, djangoq, metrics
from project.jobs.models import JobRun

if TYPE_CHECKING:
    import datetime as dt

    from project.jobs.registry import Job

logger = logging.getLogger(__name__)

_ALLOWED = (int, str, bool, float, type(None))


def _check_kwargs(job_name: str, kwargs: dict[str, Any]) -> None:
    # Runs carry ids and flags only, so no secret or large payload reaches the broker.
    for key, value in kwargs.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(item, _ALLOWED) for item in values):
            raise TypeError(f"job {job_name}: argument {key!r} must be an id, a flag or a list of them")


def runs_enqueue(
    *,
    job: Job,
    kwargs_list: Sequence[dict[str, Any]],
    delay: float,
    dedupe_key: str | None,
    delays: Sequence[float] | None = None,
) -> list[JobRun]:
    """``delays``, when given, holds each run's own delay (``delay`` is then ignored)."""
    for kwargs in kwargs_list:
        _check_kwargs(job.name, kwargs)
    if delays is not None and len(delays) != len(kwargs_list):
        raise ValueError(f"job {job.name}: {len(delays)} delays for {len(kwargs_list)} runs")
    now = timezone.now()
    base = {
        "name": job.name,
        "status": JobRun.Status.QUEUED,
        "max_attempts": job.retry.max_attempts,
        "due_at": now + timedelta(seconds=delay),
        "pushed_at": now,
        "request_id": context.request_id() or "",
        "queue": job.queue or djangoq.cluster_name(),
    }
    if dedupe_key is not None:
        with transaction.atomic():
            queued = JobRun.objects.filter(name=job.name, dedupe_key=dedupe_key, status=JobRun.Status.QUEUED)
            existing = queued.first()
            if existing is not None:
                return [existing]
            try:
                with transaction.atomic():
                    runs = [
                        JobRun.objects.create(
                            kwargs=kwargs_list[0],
                            target_id=job.target_id(kwargs_list[0]),
                            dedupe_key=dedupe_key,
                            **base,
                        )
                    ]
            except IntegrityError:
                return [queued.get()]
            runs_push_on_commit(runs=runs)
    else:
        # One INSERT needs no transaction of its own: outside one it commits at once and the
        # message goes out right after (on_commit runs at once in autocommit), without the
        # BEGIN and COMMIT round trips that bulk_create always adds.
        rows = [JobRun(kwargs=kwargs, target_id=job.target_id(kwargs), **base) for kwargs in kwargs_list]
        for row, each in zip(rows, delays or (), strict=False):
            row.due_at = now + timedelta(seconds=each)
        # With the ORM broker, a single run's message is written by the same statement.
        key = None if _held or len(rows) > 1 else djangoq.message_key_in_database(rows[0].queue)
        if len(rows) == 1:
            _run_insert(rows[0], message_key=key)
        else:
            # The runs differ only in these: one INSERT, the rest prepared once.
            varying: dict[str, list[Any]] = {
                "kwargs": [json.dumps(row.kwargs) for row in rows],
                "target_id": [row.target_id for row in rows],
                "due_at": [row.due_at for row in rows],
            }
            alias = transaction.get_connection().alias
            for row, pk in zip(rows, rows_insert_like(rows[0], varying), strict=True):
                row.pk = pk
                row._state.adding, row._state.db = False, alias
        runs = rows
        if key is None:
            runs_push_on_commit(runs=runs)
    metrics.JOBS_ENQUEUED.labels(job=job.name).inc(len(runs))
    return runs


# A single run is one INSERT of every column, written once and prepared per connection:
# Model.save() compiled the statement and prepared each of the run's columns on every call,
# most of an enqueue's Python. A run's columns hold plain values and JSON only.
_RUN_FIELDS = [field for field in JobRun._meta.concrete_fields if not field.primary_key]
_IS_JSON = [isinstance(field, JSONField) for field in _RUN_FIELDS]
_INSERT_RUN = (
    f"INSERT INTO {JobRun._meta.db_table} ({', '.join(str(field.column) for field in _RUN_FIELDS)}) "
    f"VALUES ({', '.join('%s::jsonb' if json_column else '%s' for json_column in _IS_JSON)}) "
)
_INSERT_RUN_SQL = f"{_INSERT_RUN} RETURNING {JobRun._meta.pk.column}"
_COLUMN = {field.name: str(field.column) for field in JobRun._meta.concrete_fields}
_NAMING = ", ".join(_COLUMN[name] for name in ("id", "attempt", "name"))
_INSERT_RUN_AND_MESSAGE_SQL = djangoq.run_and_message_insert_sql(f"{_INSERT_RUN} RETURNING {_NAMING}")


def _run_insert(run: JobRun, *, message_key: str | None = None) -> None:
    """INSERT the run; with ``message_key``, its ORM message to that queue in the same
    statement (``djangoq.run_and_message_insert_sql``), due when the run is."""
    values = []
    for field, json_column in zip(_RUN_FIELDS, _IS_JSON, strict=True):
        value = getattr(run, field.attname)
        values.append(json.dumps(value) if json_column and value is not None else value)
    connection = transaction.get_connection()
    with db.prepared_cursor(connection) as cursor:
        if message_key is None:
            cursor.execute(_INSERT_RUN_SQL, values)
        else:
            cursor.execute(_INSERT_RUN_AND_MESSAGE_SQL, [*values, message_key, run.due_at])
        row = cursor.fetchone()
    assert row is not None  # an INSERT … RETURNING gives its row
    run.pk = row[0]
    run._state.adding, run._state.db = False, connection.alias


#: While above zero, runs are recorded but no message is sent (``testing.messages_held``).
_held = 0


def runs_push_on_commit(*, runs: Sequence[JobRun], due: dt.datetime | None = None) -> None:
    """``runs_push`` once the current transaction commits (at once outside one). Whether
    messages are held is decided now: a transaction a test commits after its hold ended
    must not send the runs it recorded during the hold to a cluster still running."""
    if _held:
        return
    transaction.on_commit(lambda: runs_push(runs=runs, due=due), robust=True)


def runs_push(*, runs: Sequence[JobRun], due: dt.datetime | None = None, batch: bool = True) -> None:
    """Send each run's current attempt to its queue's broker. Runs of one job due together
    share a message (``batch``: up to ``JOBS_BATCH_MAX`` runs, and no more than the
    workers' share of them, so each worker still gets some); the worker executes them one
    after another (``runner.execute_many``)."""
    if _held:
        return
    by_queue: dict[str | None, list[JobRun]] = defaultdict(list)
    for run in runs:
        job = declared.get(run.name)
        by_queue[run.queue or (job.queue if job else None)].append(run)
    now = timezone.now()
    for queue, queued in by_queue.items():
        messages = []
        names = djangoq.message_key_in_database(queue) is not None
        for name, at, group in _due_together(queued, due=due, now=now):
            job = declared.get(name)
            timeout = job.timeout_seconds if job else None
            size = djangoq.runs_per_message(len(group)) if batch else 1
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                first = chunk[0]
                if len(chunk) == 1:
                    message = djangoq.run_message(
                        run_id=first.pk, attempt=first.attempt, job=name, timeout=timeout, names=names
                    )
                else:
                    message = djangoq.package_many(
                        runs=[(run.pk, run.attempt) for run in chunk],
                        name=f"{name}#{first.pk}.{first.attempt}+{len(chunk) - 1}",
                        group=name,
                        # Each run may take its job's budget once it starts, and the last
                        # one starts at most JOBS_BATCH_BUDGET after the first.
                        timeout=None if timeout is None else timeout + math.ceil(settings.JOBS_BATCH_BUDGET),
                    )
                messages.append((message, at))
        djangoq.get_broker(queue).enqueue_many_at(messages)


def _due_together(
    runs: Sequence[JobRun], *, due: dt.datetime | None, now: dt.datetime
) -> list[tuple[str, dt.datetime, list[JobRun]]]:
    """The runs grouped by job and due time, in the order given. Runs already due form
    one group per job, due at the earliest of them (the broker serves the oldest first)."""
    groups: dict[tuple[str, dt.datetime | None], list[JobRun]] = defaultdict(list)
    for run in runs:
        at = due or run.due_at
        groups[(run.name, None if at <= now else at)].append(run)
    return [(name, at or min(due or run.due_at for run in group), group) for (name, at), group in groups.items()]
