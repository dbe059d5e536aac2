"""The toolkit's one seam to django-q2: its brokers, its message format, its signals, its
schedules and its configuration. No other module of the product imports django_q
(the admin's transport views excepted, and ``cluster.py``, the cluster's supervisor, which
subclasses django-q2's sentinel), so a django-q2 upgrade is checked here and in
tests/jobs/test_djangoq_adapter.py, which fails loudly when one of these changes.

Written against django-q2 1.11.x. The internals relied on:

* ``django_q.brokers.orm.ORM`` and ``django_q.brokers.redis_broker.Redis`` are subclassed:
  we replace ``enqueue``, ``dequeue``, ``queue_size``, ``purge_queue`` and use
  ``get_connection()``, ``connection`` and ``list_key``. The cluster instantiates
  ``Q_CLUSTER["broker_class"]`` with ``list_key=``.
* ``Broker.set_stat(key, value, timeout)`` is called by the sentinel's guard loop about
  every half second (``Sentinel.guard`` → ``Stat(self).save()``): our cluster heartbeat.
* ``django_q.cluster``: ``Cluster.start`` spawns the module's ``Sentinel`` (replaced by
  ``cluster.sentinel_install``); the sentinel's pool, queues, spawn and guard methods; a
  worker's ``timer`` (-1 idle, -2 recycled, 0 timed out, else seconds left).
* The message format: ``SignedPackage.dumps(task)`` of a dict with ``id`` (a humanhash
  uuid), ``name``, ``func`` (a dotted path), ``args``, ``kwargs``, ``started``, and the
  options ``group``, ``ack_failure`` and ``timeout`` that ``async_task(q_options=...)``
  would set. We build it here rather than through ``async_task`` because a message must
  go to the broker with a due time, which ``async_task`` cannot pass. A message of one
  run is stored as text that names the run (signed on Redis) and turned into that task
  when pulled (see "messages that name a run" below).
* The pusher hands each pulled ``(ack_id, payload)`` to a worker after
  ``SignedPackage.loads(payload)``; when ``dequeue`` raises, it sleeps 10 s and exits, so
  ours never raises for an unavailable store (``_unavailable``).
* ``django_q.signals.pre_execute(sender, func, task)`` in the worker: the task id, and the
  task dict itself, which the worker later puts on the result queue for the monitor.
* The monitor acknowledges a finished task only while it carries an ``ack_id``
  (``task.pop("ack_id", False)``): the worker deletes a successful run's ORM message in
  the statement that records the success and drops the ``ack_id`` (see ``ORM_ACK_CTE``).
* ``django_q.exceptions.TimeoutException`` (a ``SystemExit``) raised in a worker whose
  task ran past its timeout.
* ``django_q.models.OrmQ`` (``key``, ``payload``, ``lock``) and ``Schedule`` (``name``,
  ``func``, ``args``, ``schedule_type``, ``cron``, ``repeats``, ``next_run``).
* ``django_q.conf.Conf``: ``CLUSTER_NAME``, ``RETRY``, ``BULK`` (messages handed out
  per pull; ``pull_size()`` takes more to merge a backlog), ``POLL``, ``ORM``, ``WORKERS``.

Delayed messages: django-q2's scheduler ticks only every 30 s, too coarse for retry delays
of a few seconds, so a delayed message is handed to the broker with its due time:

* PostgreSQL (ORM broker): the ``lock`` column already means "nobody may pull this before",
  so a delayed message is inserted with ``lock`` set to its due time. Pulling is one
  ``UPDATE … RETURNING`` over up to ``pull_size()`` ``FOR UPDATE SKIP LOCKED`` rows in due order,
  so several clusters can pull from one table without handing out the same message twice.
* Redis: delayed messages wait in a sorted set scored by due time; one Lua script (atomic)
  moves the due ones onto the list and pops up to ``pull_size()`` messages at each pull, leasing
  them in another sorted set until the monitor acknowledges them (``Broker.acknowledge``,
  called by django-q2's monitor with the ``ack_id`` the pusher put in the task).

Both record a heartbeat for their cluster in PostgreSQL (readiness uses it), written from
the sentinel's guard loop, not from the pusher, which blocks while the workers are busy.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from multiprocessing.util import Finalize
from typing import TYPE_CHECKING, Any, cast

import redis as redis_lib
from django.conf import settings
from django.core.signing import Signer
from django.db import InterfaceError, OperationalError, connections, transaction
from django.db.models import Exists, OuterRef, TextField, Value
from django.db.models.functions import Cast, Concat, Now
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf
from django_q.exceptions import TimeoutException
from django_q.humanhash import uuid
from django_q.models import OrmQ, Schedule
from django_q.signals import pre_execute
from django_q.signing import BadSignature, SignedPackage

from project import db
from project.jobs import declared, pace

if TYPE_CHECKING:
    # The mixin extends Broker.set_stat; at run time it is mixed in before ORM or Redis.
    from django_q.brokers import Broker as _MixinBase
else:
    _MixinBase = object

__all__ = [
    "RUNNER",
    "RUNNER_MANY",
    "SCHEDULED_FUNC",
    "OrmBroker",
    "RedisBroker",
    "TimeoutException",
    "cluster_name",
    "get_broker",
    "package",
    "package_many",
    "pre_execute_connect",
    "schedule_next_runs",
    "schedules_upsert",
    "worker_count",
]

#: What every message runs (one run, or several of one job), and what every schedule runs.
RUNNER = "project.jobs.runner.execute"
RUNNER_MANY = "project.jobs.runner.execute_many"
SCHEDULED_FUNC = "project.jobs.runner.run_scheduled"

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 5.0
_INSERT_BATCH = 1000


class _HeartbeatMixin(_MixinBase):
    broker_name = ""
    _unavailable_since = 0.0  # when pulls began to fail (monotonic), 0 while they work
    _last_beat = 0.0

    def set_stat(self, key: str, value: str, timeout: int) -> Any:  # what django-q2's returns
        self._beat()
        return super().set_stat(key, value, timeout)

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat < HEARTBEAT_EVERY:
            return
        self._last_beat = now
        try:
            cluster_heartbeat_record(broker=self.broker_name)
        except Exception:  # a missed heartbeat must not stop the sentinel
            logger.warning("could not record the cluster heartbeat", exc_info=True)
            database_failed()


class _PacedPulls:
    """While messages keep coming, a pusher pulls at most once per ``JOBS_BATCH_WAIT``, so
    that those arriving meanwhile are pulled, and packed (``_backlog_merged``), together; a
    message after a quiet spell is not held. Without it, the pusher pulled again as soon as
    it had handed the last pull out: under single enqueues at a few hundred a second, a
    Redis pull (a fraction of a millisecond) found about four messages and an ORM pull (a
    statement) about twelve, and each message cost its pull, its hand-over, a worker's
    first claim and its acknowledgement (docs/benchmarks-history.md, session 9). A pull that hands
    out a whole bulk (``bulk()`` messages: more may be waiting) is followed at once, so a
    backlog, or a busy cluster's stream of messages that cannot share, is not held to a
    bulk per interval."""

    _found_at = float("-inf")  # time.monotonic() of the last pull that found messages, if paced

    def _pull_paced(self) -> None:
        wait = settings.JOBS_BATCH_WAIT - (time.monotonic() - self._found_at)
        if wait > 0:
            time.sleep(wait)

    def _pull_found(self, *, handed: int) -> None:
        full = handed >= bulk()
        self._found_at = float("-inf") if full else time.monotonic()


_database_failed_at: float | None = None


def database_failed() -> None:
    """This process found the database unavailable just now."""
    global _database_failed_at
    _database_failed_at = time.monotonic()


def database_failed_within(seconds: float) -> bool:
    """Whether this process found the database unavailable in the last ``seconds``."""
    return _database_failed_at is not None and time.monotonic() - _database_failed_at <= seconds


def database_failed_since(moment: float) -> bool:
    """Whether this process found the database unavailable after ``moment`` (``time.monotonic()``)."""
    return _database_failed_at is not None and _database_failed_at >= moment


def cluster_heartbeat_record(*, broker: str) -> None:
    """One row per running cluster, keyed by host and sentinel pid."""
    host = socket.gethostname()
    pid = os.getpid()
    now = timezone.now()
    with connections["default"].cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO job_cluster_heartbeats (key, cluster_name, host, pid, broker, workers, first_seen, last_seen)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (key) DO UPDATE SET last_seen = EXCLUDED.last_seen, workers = EXCLUDED.workers
            """,
            [f"{host}:{pid}", Conf.CLUSTER_NAME, host, pid, broker, Conf.WORKERS, now, now],
        )


# One message, as OrmQ.objects.create() would insert it, written once (the ORM compiled it
# on every call).
_INSERT_MESSAGE_SQL = f"INSERT INTO {OrmQ._meta.db_table} (key, payload, lock) VALUES (%s, %s, %s)"


def _due_now(ids: Sequence[int]) -> None:
    """Make these ORM messages pullable at once (their lease, or their pre-fetch, ended)."""
    with connections[Conf.ORM].cursor() as cursor:
        cursor.execute("UPDATE django_q_ormq SET lock = %s WHERE id = ANY(%s)", [timezone.now(), list(ids)])


def bulk() -> int:
    """How many messages one pull hands out: django-q2's ``bulk``, a message per worker."""
    return max(1, int(Conf.BULK))


def pull_size() -> int:
    """How many messages one pull takes: a message for each worker, and as many more as
    could share messages with them (``runs_per_message``)."""
    return bulk() * int(settings.JOBS_BATCH_MAX)


def runs_per_message(runs: int) -> int:
    """How many of ``runs`` due together share a message: at most ``JOBS_BATCH_MAX``, and
    no more than the workers' share of them, so each worker still gets some."""
    return max(1, min(settings.JOBS_BATCH_MAX, math.ceil(runs / worker_count())))


_MERGE_SQL = f"""
WITH gone AS (DELETE FROM {OrmQ._meta.db_table} WHERE id = ANY(%s))
INSERT INTO {OrmQ._meta.db_table} (key, payload, lock)
SELECT %s, payload, %s FROM unnest(%s::text[]) AS merged(payload)
RETURNING id, payload
"""


_Pulled = tuple[dt.datetime, int, str]  # a pulled message: its due time, id and payload


def _handed_out(rows: list[_Pulled], *, key: str, lock: dt.datetime) -> list[_Pulled]:
    """The pulled ORM messages as the pusher hands them out: signed tasks, in due order.
    A message that names a run (``run_and_message_insert_sql``) becomes its task here; a
    backlog is merged (``_backlog_merged``), the merged message replacing its parts in one
    statement (leased as they were), so a crash at any point leaves the parts or the whole."""
    kept, merged = _backlog_merged([payload for _due, _pk, payload in rows], read=message_task)
    handed = [
        (rows[index][0], rows[index][1], _reference_signed(rows[index][2], plain=True) or rows[index][2])
        for index in kept
    ]
    if merged:
        due = {payload: rows[parts[0]][0] for payload, parts in merged}
        with db.prepared_cursor(connections[Conf.ORM]) as cursor:
            cursor.execute(
                _MERGE_SQL, [[rows[index][1] for _payload, parts in merged for index in parts], key, lock, list(due)]
            )
            handed.extend((due[payload], pk, payload) for pk, payload in cursor.fetchall())
    handed.sort(key=lambda row: (row[0], row[1]))
    # A pull takes more than ``bulk`` messages only to merge them: what is left beyond that
    # is given back at once, so a cluster holds no more pulled messages than it did.
    size = bulk()
    if len(handed) > size:
        _due_now([pk for _due, pk, _payload in handed[size:]])
        del handed[size:]
    return handed


def _short_runs_per_message(job: str, runs: int) -> int:
    """How many of ``runs`` of ``job`` share a message while workers are idle: short runs
    are the processor's work, so they are spread over its cores (one message per core, for
    a core per message), and no message holds more than ``JOBS_BATCH_WAIT`` seconds of them
    by the job's measured run time (``pace``)."""
    spread = math.ceil(runs / max(2, len(os.sched_getaffinity(0))))
    return max(1, min(settings.JOBS_BATCH_MAX, spread, pace.runs_within(job, settings.JOBS_BATCH_WAIT)))


def _backlog_merged(
    messages: Sequence[bytes | str], *, read: Callable[[bytes | str], dict[str, Any] | None]
) -> tuple[list[int], list[tuple[str, list[int]]]]:
    """How a pull of ``messages`` (their payloads, in due order, each read by ``read``) is
    handed out: the indexes of those handed out as they are, and the merged messages, each
    with the indexes of its parts.

    A pull of more messages than the cluster has workers is a backlog: its messages of one
    run each that belong to one job are merged into messages of several runs, as
    ``queue.runs_push`` packs runs sent together (``runs_per_message``), so a backlog of
    single enqueues costs the workers a message per few runs rather than one per run.
    Otherwise a run waits behind others while a worker is idle only when its job's runs
    are known to be short (``pace``): up to ``JOBS_BATCH_WAIT`` seconds of them share a
    message. The rest is handed out as it is."""
    if len(messages) < 2 or settings.JOBS_BATCH_MAX <= 1:
        return list(range(len(messages))), []
    backlog = len(messages) > worker_count()
    by_job: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    kept: list[int] = []
    for index, payload in enumerate(messages):
        task = read(payload)
        if task is None or task.get("func") != RUNNER or not task.get("group"):
            kept.append(index)
        else:
            by_job[task["group"]].append((index, task))
    merged: list[tuple[str, list[int]]] = []
    for job, singles in by_job.items():
        size = runs_per_message(len(singles)) if backlog else 1
        if settings.JOBS_BATCH_WAIT > 0 and len(singles) > size:
            size = max(size, _short_runs_per_message(job, len(singles)))
        for start in range(0, len(singles), size):
            chunk = singles[start : start + size]
            if len(chunk) == 1:
                kept.append(chunk[0][0])
                continue
            first = chunk[0][1]
            timeout = first.get("timeout")
            payload = package_many(
                runs=[(task["args"][0], task["args"][1]) for _index, task in chunk],
                name=f"{first['name']}+{len(chunk) - 1}",
                group=job,
                timeout=None if timeout is None else timeout + math.ceil(settings.JOBS_BATCH_BUDGET),
            )
            merged.append((payload, [index for index, _task in chunk]))
    return sorted(kept), merged


# --- messages that name a run --------------------------------------------------------------
#
# With the ORM broker, a message of one run names it, ``jobs.run:<run id>:<attempt>:<job>``,
# rather than carrying a signed task: the sender neither pickles nor signs it. A single
# enqueue writes it in the statement that records the run (the run's id exists only once
# that INSERT has drawn it from the sequence): one round trip and one commit, and the
# message commits with the run (inside the sender's transaction, both become visible at
# its commit, and a rollback takes both). The pusher turns it into django-q2's task when it
# pulls it, with the task id ``r<run id>.<attempt>``, which the run records at its claim (so
# the sentinel finds the message to end its lease). It need not be signed there: it is
# parsed, never unpickled, and it lies in the runs' own database, where whoever could
# write it could write the runs too. Elsewhere (Redis: another service, with credentials
# of its own) the message names the run too but is signed, ``jobs.srun:<run id>:<attempt>:
# <job>:<signature>``: an HMAC of the name with ``SECRET_KEY`` (``SECRET_KEY_FALLBACKS``
# honoured), a few microseconds, where django-q2's signed task is a pickle, a zlib pass
# and a humanhash id (a Redis enqueue: 0.50 ms of the sender's CPU before, 0.37-0.40
# after). A reader of such a store never takes a plain name (``plain=False``).

_REFERENCE = re.compile(rf"(\d+):(\d+):({declared.JOB_NAME.pattern})")
_PLAIN_PREFIX = "jobs.run:"
_SIGNED_PREFIX = "jobs.srun:"
_SIGNING_SALT = "project.jobs.run-message"


def run_message(*, run_id: int, attempt: int, job: str, timeout: int | None, names: bool) -> str:
    """The message of one run's attempt, which names the run (see above): plainly with
    ``names`` (for an ORM queue on the runs' database: ``message_key_in_database``), else
    signed. A run whose job name could not be named (none declared now) gets django-q2's
    signed task."""
    if not declared.JOB_NAME.fullmatch(job):
        return package(run_id=run_id, attempt=attempt, name=f"{job}#{run_id}.{attempt}", group=job, timeout=timeout)
    reference = f"{run_id}:{attempt}:{job}"
    if names:
        return _PLAIN_PREFIX + reference
    return _SIGNED_PREFIX + Signer(salt=_SIGNING_SALT).sign(reference)


def run_and_message_insert_sql(run_insert: str) -> str:
    """One statement that runs ``run_insert`` (an INSERT of one run ending ``RETURNING id,
    attempt, name``) and inserts its ORM message (``run_message``); its parameters are
    followed by the message's queue key and due time. It returns the run's id."""
    return (
        f"WITH run AS ({run_insert}), "
        f"message AS (INSERT INTO {OrmQ._meta.db_table} (key, payload, lock) "
        "SELECT %s, 'jobs.run:' || id || ':' || attempt || ':' || name, %s FROM run) "
        "SELECT id FROM run"
    )


def message_key_in_database(queue: str | None) -> str | None:
    """The ORM queue key of ``queue``'s messages when they are rows of the runs' own
    database (the ORM broker on the default database), so that a run and its message can
    be written together; None otherwise."""
    if settings.JOBS_BROKER != "orm" or Conf.ORM != "default":
        return None
    return queue or Conf.CLUSTER_NAME


def message_of_run_waiting(queue: str | None) -> Exists | None:
    """For a query of runs: the run's own message, one that names it, waits in ``queue``'s
    ORM queue, due and not pulled (a pulled one is leased: its ``lock`` lies ahead). None
    when messages are not rows of the runs' database."""
    key = message_key_in_database(queue)
    if key is None:
        return None
    named = Concat(
        Value("jobs.run:"),
        Cast(OuterRef("id"), TextField()),
        Value(":"),
        Cast(OuterRef("attempt"), TextField()),
        Value(":"),
        OuterRef("name"),
        output_field=TextField(),
    )
    return Exists(OrmQ.objects.using(Conf.ORM).filter(key=key, lock__lte=Now(), payload=named))


def message_task(payload: bytes | str, *, plain: bool = True) -> dict[str, Any] | None:
    """The task of a message (one that names a run, or django-q2's signed task), or None
    when it cannot be read. ``plain``: a message that names its run unsigned is taken
    (an ORM message, in the runs' own database); a Redis reader passes False."""
    return _reference_task(payload, plain=plain) or _loads(payload)


def _reference_task(payload: bytes | str, *, plain: bool) -> dict[str, Any] | None:
    if isinstance(payload, bytes):
        if not payload.startswith(b"jobs."):
            return None
        try:
            payload = payload.decode()
        except UnicodeDecodeError:
            return None
    if plain and payload.startswith(_PLAIN_PREFIX):
        reference = payload[len(_PLAIN_PREFIX) :]
    elif payload.startswith(_SIGNED_PREFIX):
        try:
            reference = Signer(salt=_SIGNING_SALT).unsign(payload[len(_SIGNED_PREFIX) :])
        except BadSignature:
            return None
    else:
        return None
    match = _REFERENCE.fullmatch(reference)
    if match is None:
        return None
    run_id, attempt, name = int(match[1]), int(match[2]), match[3]
    job = declared.get(name)
    return _task(
        RUNNER,
        (run_id, attempt),
        name=f"{name}#{run_id}.{attempt}",
        group=name,
        timeout=job.timeout_seconds if job else None,
        task_id=f"r{run_id}.{attempt}",
    )


def _reference_signed(payload: bytes | str, *, plain: bool) -> str | None:
    """django-q2's signed task for a message that names its run (what its pusher reads);
    None for any other message."""
    task = _reference_task(payload, plain=plain)
    return None if task is None else cast(str, SignedPackage.dumps(task))


def _redis_task(payload: bytes | str) -> dict[str, Any] | None:
    return message_task(payload, plain=False)


def _unavailable(broker: Any, reset: Callable[[], None]) -> None:
    """A pull failed because the broker's store is unavailable. django-q2's pusher would
    sleep 10 s and exit (its sentinel starts another): the pulls would stop for that long,
    after an outage of any length. Here the pusher is told "nothing yet" and asks again
    after a short pause, so the pulls resume within a second of the store's return."""
    if not broker._unavailable_since:
        broker._unavailable_since = time.monotonic()
        logger.warning("cannot pull messages: the %s broker is unavailable", broker.broker_name, exc_info=True)
    reset()
    time.sleep(PULL_RETRY_PAUSE)


def _available(broker: Any) -> None:
    if broker._unavailable_since:
        logger.warning(
            "pulling messages again after %.1f s",
            time.monotonic() - broker._unavailable_since,
            extra={"broker": broker.broker_name},
        )
        broker._unavailable_since = 0.0


#: The pause between two pulls while the broker's store is unavailable (seconds).
PULL_RETRY_PAUSE = 0.5


class OrmBroker(_PacedPulls, _HeartbeatMixin, ORM):
    broker_name = "orm"

    def enqueue(self, task: str) -> int:
        return self.enqueue_at(task, timezone.now())

    def enqueue_at(self, task: str, due: dt.datetime) -> int:
        pk: int = self.get_connection().create(key=self.list_key, payload=task, lock=due).pk
        return pk

    def enqueue_many_at(self, items: Sequence[tuple[str, dt.datetime]]) -> None:
        # Not through get_connection(): that closes stale connections and so costs a health
        # check query on the next use, which the pull loop needs and a sender (a web request,
        # a worker, after a commit) does not. A single message is one INSERT with no
        # transaction of its own (bulk_create always opens one); more go 1,000 per INSERT.
        queue = OrmQ.objects.using(Conf.ORM)
        if len(items) == 1:
            ((task, due),) = items
            with db.prepared_cursor(connections[Conf.ORM]) as cursor:
                cursor.execute(_INSERT_MESSAGE_SQL, [self.list_key, task, due])
            return
        rows = [OrmQ(key=self.list_key, payload=task, lock=due) for task, due in items]
        with transaction.atomic(using=Conf.ORM):
            queue.bulk_create(rows, batch_size=_INSERT_BATCH)

    # Messages pulled but not handed to the pusher yet, oldest due first, and the process
    # that pulled them (a forked copy of this broker starts with none).
    _pulled: list[tuple[int, str]] = []
    _pulled_pid = 0

    def dequeue(self) -> list[tuple[int, str]] | None:
        """The next due message, oldest due first. Up to ``pull_size()`` are pulled at a time
        with one ``UPDATE … RETURNING`` and handed out one per call (the pusher asks again at
        once), so a busy cluster costs one statement per pull. Those still held when the
        pusher stops are given back (``_release_pulled``). While the database is unavailable
        it answers "nothing yet" (``_unavailable``) rather than failing."""
        if self._pulled_pid == os.getpid() and self._pulled:
            return [self._pulled.pop(0)]
        try:
            pulled = self._pull()
        except (OperationalError, InterfaceError):
            _unavailable(self, connections[Conf.ORM].close)
            return None
        _available(self)
        return pulled

    def _pull(self) -> list[tuple[int, str]] | None:
        self._pull_paced()
        self.get_connection()  # closes a stale connection between pulls
        now = timezone.now()
        with db.prepared_cursor(connections[Conf.ORM]) as cursor:
            cursor.execute(
                """
                WITH due AS (
                    SELECT id, lock FROM django_q_ormq
                    WHERE key = %s AND lock < %s
                    ORDER BY lock, id
                    LIMIT %s
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE django_q_ormq AS q SET lock = %s FROM due WHERE q.id = due.id
                RETURNING due.lock, q.id, q.payload
                """,
                [self.list_key, now, pull_size(), now + timedelta(seconds=message_lease())],
            )
            rows = sorted(cursor.fetchall())
        if not rows:
            time.sleep(Conf.POLL)
            return None
        rows = _handed_out(rows, key=self.list_key, lock=now + timedelta(seconds=message_lease()))
        self._pull_found(handed=len(rows))
        if len(rows) > 1:
            if self._pulled_pid != os.getpid():
                self._pulled_pid = os.getpid()
                self._pulled = []
                # Runs when the pusher process ends (multiprocessing's exit finalizers).
                Finalize(None, self._release_pulled, exitpriority=10)
            self._pulled.extend((ack_id, payload) for _due, ack_id, payload in rows[1:])
        _due, ack_id, payload = rows[0]
        return [(ack_id, payload)]

    def _release_pulled(self) -> None:
        """Make the messages pulled but never handed out due again at once, so that the next
        pull (this cluster's after a restart, or another's) takes them without waiting for
        their redelivery after ``retry`` seconds."""
        pulled, self._pulled = self._pulled, []
        if not pulled or self._pulled_pid != os.getpid():
            return
        try:
            _due_now([ack_id for ack_id, _payload in pulled])
        except Exception:  # exiting anyway: redelivery after `retry` still covers them
            logger.warning("could not give back %d pulled messages", len(pulled), exc_info=True)

    def leases_end(self, task_ids: Collection[str]) -> int:
        """Make the pulled messages of these tasks (their worker died) due again at once,
        rather than when their lease ends. Returns how many."""
        now = timezone.now()
        with connections[Conf.ORM].cursor() as cursor:
            # Pulled messages are locked until a lease from now at most; delayed ones may be
            # locked for longer, and are not looked at.
            cursor.execute(
                "SELECT id, payload FROM django_q_ormq WHERE key = %s AND lock > %s AND lock <= %s",
                [self.list_key, now, now + timedelta(seconds=message_lease())],
            )
            ids = [pk for pk, payload in cursor.fetchall() if (message_task(payload) or {}).get("id") in task_ids]
        if ids:
            _due_now(ids)
        return len(ids)

    def depth(self) -> dict[str, int]:
        """Messages waiting: ``ready`` may be pulled now; ``held`` are delayed retries or
        pulled by a worker and not yet acknowledged."""
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FILTER (WHERE lock <= %s), count(*) FILTER (WHERE lock > %s) "
                "FROM django_q_ormq WHERE key = %s",
                [timezone.now(), timezone.now(), self.list_key],
            )
            ready, held = cursor.fetchone()
        return {"ready": ready, "held": held}


# One pull, in one round trip while messages are waiting (the pusher waits in BLMOVE only
# when none is): the pulled messages whose lease ended go back to the head of the list
# (their cluster died before it finished them), the due delayed ones to its tail, then up
# to ARGV[3] messages are popped and leased until ARGV[4].
_PULL = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, item in ipairs(expired) do
  redis.call('LPUSH', KEYS[2], item)
  redis.call('ZREM', KEYS[3], item)
end
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, item in ipairs(items) do
  redis.call('RPUSH', KEYS[2], item)
  redis.call('ZREM', KEYS[1], item)
end
local popped = {}
for _ = 1, tonumber(ARGV[3]) do
  local item = redis.call('LPOP', KEYS[2])
  if not item then break end
  redis.call('ZADD', KEYS[3], ARGV[4], item)
  popped[#popped + 1] = item
end
return popped
"""


# Pulled messages back to the head of the list, each only if it was still pulled.
_LEASES_END = """
local moved = 0
for _, item in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], item) == 1 then
    redis.call('LPUSH', KEYS[2], item)
    moved = moved + 1
  end
end
return moved
"""


def _loads(payload: bytes | str) -> dict[str, Any] | None:
    try:
        task = SignedPackage.loads(payload.decode() if isinstance(payload, bytes) else payload)
    except (TypeError, UnicodeDecodeError, BadSignature):  # the pusher drops what it cannot read
        return None
    return task if isinstance(task, dict) else None


class RedisBroker(_PacedPulls, _HeartbeatMixin, Redis):
    """Messages leased as the ORM broker's are: a pulled message waits in a sorted set
    (``pulled_key``, scored by the end of its lease, ``message_lease()``) until the monitor
    acknowledges it, and a pull by any cluster first puts back on the list those whose lease
    ended. So the messages a dead cluster had pulled (pre-fetched, or being run) are taken
    by another cluster within the lease, as with PostgreSQL, even while other clusters
    serve the queue (a restarting cluster alone on it sends them again at once). The
    message is its own ``ack_id``."""

    broker_name = "redis"
    connection: redis_lib.Redis  # set by django-q2's Broker.__init__ from get_connection()

    @property
    def delayed_key(self) -> str:
        return f"{self.list_key}:delayed"

    @property
    def pulled_key(self) -> str:
        return f"{self.list_key}:pulled"

    def enqueue(self, task: str) -> int:
        return self.connection.rpush(self.list_key, task)

    def enqueue_at(self, task: str, due: dt.datetime) -> int | float | None:  # as redis answers
        if due <= timezone.now():
            return self.connection.rpush(self.list_key, task)
        return self.connection.zadd(self.delayed_key, {task: due.timestamp()})

    def enqueue_many_at(self, items: Sequence[tuple[str, dt.datetime]]) -> None:
        if len(items) == 1:  # a single enqueue: one command, without a pipeline's cost
            self.enqueue_at(*items[0])
            return
        now = timezone.now()
        pipe = self.connection.pipeline(transaction=False)
        for task, due in items:
            if due <= now:
                pipe.rpush(self.list_key, task)
            else:
                pipe.zadd(self.delayed_key, {task: due.timestamp()})
        pipe.execute()

    _scripts: dict[str, Any] | None = None

    def _script(self, source: str) -> Any:
        if self._scripts is None:
            self._scripts = {}
        if source not in self._scripts:
            self._scripts[source] = self.connection.register_script(source)
        return self._scripts[source]

    def dequeue(self) -> list[tuple[bytes | str, bytes | str]] | None:
        """Up to ``pull_size()`` messages, each leased (see the class); a backlog of
        single-run messages merged as the ORM broker merges it (``_backlog_merged``). While
        Redis is unavailable it answers "nothing yet" (``_unavailable``) rather than failing."""
        try:
            pulled = self._pull_messages()
        except (redis_lib.ConnectionError, redis_lib.TimeoutError):
            _unavailable(self, self.connection.connection_pool.disconnect)
            return None
        _available(self)
        return pulled

    def _pull_messages(self) -> list[tuple[bytes | str, bytes | str]] | None:
        self._pull_paced()
        popped: list[bytes | str] = list(self.pull())
        if not popped:
            # Wait for a message without taking it: BLMOVE from the list's head back to its
            # head, in one command, so no message is ever off the list and not leased (a
            # pusher dying between a BLPOP and its lease lost the message until the re-push
            # sweep, JOBS_REPUSH_AFTER). The pull then takes and leases it atomically.
            if self.connection.blmove(self.list_key, self.list_key, Conf.POLL, "LEFT", "LEFT") is None:
                return None
            popped = list(self.pull())
            if not popped:
                return None  # another cluster's pull took it
        kept, merged = _backlog_merged(popped, read=_redis_task)
        if merged:
            # The merged messages replace their parts among the pulled ones at once
            # (MULTI): a crash leaves the parts or the whole, leased either way.
            pipe = self.connection.pipeline(transaction=True)
            pipe.zadd(
                self.pulled_key,
                dict.fromkeys((payload for payload, _parts in merged), time.time() + message_lease()),
            )
            pipe.zrem(self.pulled_key, *(popped[index] for _payload, parts in merged for index in parts))
            pipe.execute()
        order = sorted([(index, popped[index]) for index in kept] + [(parts[0], payload) for payload, parts in merged])
        handed = [message for _index, message in order]
        # More than ``bulk`` are pulled only to be merged; the rest go back at once.
        size = bulk()
        if len(handed) > size:
            back = handed[size:]
            self._script(_LEASES_END)(keys=[self.pulled_key, self.list_key], args=back[::-1])
            del handed[size:]
        self._pull_found(handed=len(handed))
        # The message is its own ack id; one that names its run is handed to the
        # pusher as django-q2's task.
        return [(message, _reference_signed(message, plain=False) or message) for message in handed]

    def pull(self, *, now: float | None = None) -> list[bytes]:
        """One pull of up to ``pull_size()`` messages (``now``: the clock, for tests)."""
        now = time.time() if now is None else now
        keys = [self.delayed_key, self.list_key, self.pulled_key]
        popped: list[bytes] = self._script(_PULL)(keys=keys, args=[now, 100, pull_size(), now + message_lease()])
        return popped

    def acknowledge(self, task_id: bytes | str) -> None:
        self.connection.zrem(self.pulled_key, task_id)

    def leases_end(self, task_ids: Collection[str]) -> int:
        """Put the pulled messages of these tasks (their worker died) back at the head of
        the list at once, rather than when their lease ends. Returns how many."""
        pulled = cast(list[bytes], self.connection.zrange(self.pulled_key, 0, -1))
        mine = [message for message in pulled if (_redis_task(message) or {}).get("id") in task_ids]
        if not mine:
            return 0
        moved: int = self._script(_LEASES_END)(keys=[self.pulled_key, self.list_key], args=mine)
        return moved

    def fail(self, task_id: bytes | str) -> None:
        self.connection.zrem(self.pulled_key, task_id)  # unreadable: dropped, as django-q2 does

    def queue_size(self) -> int:
        return self.connection.llen(self.list_key) + self.connection.zcard(self.delayed_key)

    def depth(self) -> dict[str, int]:
        """``ready`` on the list; ``held``: the delayed retries and the pulled messages, as
        the ORM broker's ``held`` counts the messages locked for either reason."""
        pipe = self.connection.pipeline(transaction=False)
        pipe.llen(self.list_key)
        pipe.zcard(self.delayed_key)
        pipe.zcard(self.pulled_key)
        ready, delayed, pulled = pipe.execute()
        return {"ready": ready, "held": delayed + pulled}

    def purge_queue(self) -> Any:  # what django-q2's returns
        self.connection.delete(self.delayed_key, self.pulled_key)
        return super().purge_queue()

    @staticmethod
    def get_connection(list_key: str | None = None) -> redis_lib.Redis:
        # settings.py refuses JOBS_BROKER=redis without REDIS_URL.
        return redis_lib.from_url(cast(str, settings.REDIS_URL))


_cache: dict[tuple[str, str], OrmBroker | RedisBroker] = {}


def get_broker(queue: str | None = None) -> OrmBroker | RedisBroker:
    """The broker for ``queue`` (a cluster name), of the kind ``JOBS_BROKER`` selects."""
    list_key = queue or Conf.CLUSTER_NAME
    kind = settings.JOBS_BROKER
    key = (kind, list_key)
    if key not in _cache:
        _cache[key] = RedisBroker(list_key=list_key) if kind == "redis" else OrmBroker(list_key=list_key)
    return _cache[key]


# --- messages ---------------------------------------------------------------------------


def cluster_name() -> str:
    """The queue this process serves and enqueues to by default."""
    name: str = Conf.CLUSTER_NAME
    return name


def package(*, run_id: int, attempt: int, name: str, group: str, timeout: int | None) -> str:
    """The signed message of one run's attempt, as ``async_task(RUNNER, run_id, attempt,
    q_options={...})`` would build it."""
    return _signed(RUNNER, (run_id, attempt), name=name, group=group, timeout=timeout)


def package_many(*, runs: Sequence[tuple[int, int]], name: str, group: str, timeout: int | None) -> str:
    """The signed message of several runs' attempts (``(run_id, attempt)`` pairs), executed
    one after another by one worker (``RUNNER_MANY``)."""
    pairs = [[run_id, attempt] for run_id, attempt in runs]
    return _signed(RUNNER_MANY, (pairs,), name=name, group=group, timeout=timeout)


def worker_count() -> int:
    """How many workers a cluster runs (``Q_CLUSTER["workers"]``)."""
    return int(Conf.WORKERS or 1)


def _signed(func: str, args: tuple[Any, ...], *, name: str, group: str, timeout: int | None) -> str:
    signed: str = SignedPackage.dumps(_task(func, args, name=name, group=group, timeout=timeout))
    return signed


def _task(
    func: str, args: tuple[Any, ...], *, name: str, group: str, timeout: int | None, task_id: str | None = None
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "id": task_id or uuid()[1],
        "name": name,
        "func": func,
        "args": args,
        "group": group,
        # Our toolkit decides retries: a failed task is acknowledged, never redelivered.
        "ack_failure": True,
        "kwargs": {},
        "started": timezone.now(),
    }
    if timeout is not None:
        task["timeout"] = timeout
    return task


def pre_execute_connect(receiver: Callable[..., None]) -> None:
    """Call ``receiver(sender, func=, task=)`` in the worker before each task."""
    pre_execute.connect(receiver, dispatch_uid=f"jobs.{receiver.__name__}")


def message_lease() -> float:
    """How long a pulled ORM message stays invisible to other pulls: a message whose
    cluster died (pre-fetched, or being executed) is pulled again after this. A message
    pulled again while its run still runs finds nothing to claim."""
    return min(float(settings.JOBS_MESSAGE_LEASE), float(Conf.RETRY))


#: Tasks taken by the workers of this cluster (a shared counter the sentinel creates
#: before it forks them; see ``project.jobs.cluster``).
_taken: Any = None


def taken_counter_set(counter: Any) -> None:
    global _taken
    _taken = counter


def count_taken(sender: Any, func: Any = None, task: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """``pre_execute`` receiver: a worker took a task."""
    counter = _taken
    if counter is not None:
        with counter.get_lock():
            counter.value += 1


def redeliver_later(task: dict[str, Any] | None, *, runs: Sequence[tuple[int, int]], delay: float = 5.0) -> None:
    """The runs of ``task`` (``(run_id, attempt)`` pairs, those not executed yet) could not
    be read or written: do not let its message be acknowledged. An ORM message stays
    locked until its lease ends and is pulled again. A Redis message for ``runs`` is sent
    again ``delay`` s from now, sooner than its lease would bring it back, and the pulled
    one is then acknowledged; if it cannot be sent, its lease does."""
    if not task or not runs:
        return
    if settings.JOBS_BROKER != "redis":
        task.pop("ack_id", None)
        return
    name = str(task.get("name", ""))
    group = str(task.get("group") or name.split("#", 1)[0])
    if len(runs) == 1:
        message = package(run_id=runs[0][0], attempt=runs[0][1], name=name, group=group, timeout=None)
    else:
        message = package_many(runs=runs, name=name, group=group, timeout=None)
    try:
        get_broker(task.get("cluster") or None).enqueue_at(message, timezone.now() + timedelta(seconds=delay))
    except Exception:
        task.pop("ack_id", None)
        logger.warning("could not send the message of run %s again", runs[0][0], exc_info=True)


# --- acknowledging in the outcome's statement -------------------------------------------
#
# With the ORM broker, django-q2's monitor acknowledges each finished message with a DELETE
# of its own (a statement, a commit and a connection health check per job, in a process
# that serves every worker). The worker already writes the run's outcome in the same
# database, so a successful run's message is deleted in that statement instead
# (``ORM_ACK_CTE``), and the task the worker hands to the monitor no longer carries its
# ``ack_id``: the monitor acknowledges only what has an ``ack_id`` (``monitor.monitor``).
# The task dict that ``pre_execute`` receives is the one the worker puts on the result
# queue (``worker.worker``). A message whose outcome was not written this way keeps its
# ``ack_id`` and is acknowledged by the monitor as before; one that is never acknowledged
# (the worker died) is redelivered after ``retry`` seconds.

ORM_ACK_CTE = f"WITH acked AS (DELETE FROM {OrmQ._meta.db_table} WHERE id = %s) "


def inline_ack_id(task: dict[str, Any] | None) -> int | None:
    """The queue row of the message ``task`` (as ``pre_execute`` gave it), when the worker may
    delete it in the statement that records the run's outcome: the ORM broker, on the
    database of the runs."""
    if not task or settings.JOBS_BROKER != "orm" or Conf.ORM != "default":
        return None
    ack_id = task.get("ack_id")
    return ack_id if isinstance(ack_id, int) else None


def acknowledged(task: dict[str, Any]) -> None:
    """The message of ``task`` was deleted with the outcome: the monitor skips its own ack."""
    task.pop("ack_id", None)


# --- schedules --------------------------------------------------------------------------


def schedules_upsert(declared: dict[str, tuple[str, int]], *, next_run: Callable[[str], dt.datetime]) -> dict[str, int]:
    """Make django-q2's schedule rows match ``{job name: (cron, timeout in seconds)}``:
    create, update (when either changed), and delete the rows of schedules no longer
    declared. The timeout goes with every task the schedule fires (``q_options``), so a
    scheduled run has its job's budget, not the cluster's default."""
    created = updated = 0
    for name, (cron, timeout) in declared.items():
        defaults = {
            "func": SCHEDULED_FUNC,
            "args": repr((name,)),
            "kwargs": repr({"q_options": {"timeout": timeout}}),
            "schedule_type": Schedule.CRON,
            "cron": cron,
            "repeats": -1,
        }
        existing = Schedule.objects.filter(name=name).first()
        if existing is None:
            Schedule.objects.create(name=name, next_run=next_run(cron), **defaults)
            created += 1
        elif any(getattr(existing, key) != value for key, value in defaults.items()):
            for key, value in defaults.items():
                setattr(existing, key, value)
            existing.next_run = next_run(cron)
            existing.save()
            updated += 1
    removed, _ = Schedule.objects.filter(func=SCHEDULED_FUNC).exclude(name__in=list(declared)).delete()
    return {"created": created, "updated": updated, "removed": removed}


def schedule_next_runs(names: Sequence[str]) -> dict[str, dt.datetime | None]:
    """When django-q2's scheduler fires each schedule next."""
    rows = Schedule.objects.filter(func=SCHEDULED_FUNC, name__in=list(names)).values_list("name", "next_run")
    return dict(rows)
