"""The toolkit's one seam to django-q2: its brokers, its message format, its signals, its
schedules and its configuration. No other module of the product imports django_q
(the admin's transport views excepted), so a django-q2 upgrade is checked here and in
tests/jobs/test_djangoq_adapter.py, which fails loudly when one of these changes.

Written against django-q2 1.11.x. The internals relied on:

* ``django_q.brokers.orm.ORM`` and ``django_q.brokers.redis_broker.Redis`` are subclassed:
  we replace ``enqueue``, ``dequeue``, ``queue_size``, ``purge_queue`` and use
  ``get_connection()``, ``connection`` and ``list_key``. The cluster instantiates
  ``Q_CLUSTER["broker_class"]`` with ``list_key=``.
* ``Broker.set_stat(key, value, timeout)`` is called by the sentinel's guard loop about
  every half second (``Sentinel.guard`` → ``Stat(self).save()``): our cluster heartbeat.
* The message format: ``SignedPackage.dumps(task)`` of a dict with ``id`` (a humanhash
  uuid), ``name``, ``func`` (a dotted path), ``args``, ``kwargs``, ``started``, and the
  options ``group``, ``ack_failure`` and ``timeout`` that ``async_task(q_options=...)``
  would set. We build it here rather than through ``async_task`` because a message must
  go to the broker with a due time, which ``async_task`` cannot pass.
* ``django_q.signals.pre_execute(sender, func, task)`` in the worker: the task id.
* ``django_q.exceptions.TimeoutException`` (a ``SystemExit``) raised in a worker whose
  task ran past its timeout.
* ``django_q.models.OrmQ`` (``key``, ``payload``, ``lock``) and ``Schedule`` (``name``,
  ``func``, ``args``, ``schedule_type``, ``cron``, ``repeats``, ``next_run``).
* ``django_q.conf.Conf``: ``CLUSTER_NAME``, ``RETRY``, ``BULK``, ``POLL``, ``ORM``,
  ``WORKERS``.

Delayed messages: django-q2's scheduler ticks only every 30 s, too coarse for retry delays
of a few seconds, so a delayed message is handed to the broker with its due time:

* PostgreSQL (ORM broker): the ``lock`` column already means "nobody may pull this before",
  so a delayed message is inserted with ``lock`` set to its due time. Pulling is one
  ``UPDATE … RETURNING`` over ``FOR UPDATE SKIP LOCKED`` rows in due order, so several
  clusters can pull from one table without handing out the same message twice.
* Redis: delayed messages wait in a sorted set scored by due time and are moved onto the
  list by a Lua script (atomic) just before each pull.

Both record a heartbeat for their cluster in PostgreSQL (readiness uses it), written from
the sentinel's guard loop, not from the pusher, which blocks while the workers are busy.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import redis as redis_lib
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf
from django_q.exceptions import TimeoutException
from django_q.humanhash import uuid
from django_q.models import OrmQ, Schedule
from django_q.signals import pre_execute
from django_q.signing import SignedPackage

__all__ = [
    "RUNNER",
    "SCHEDULED_FUNC",
    "OrmBroker",
    "RedisBroker",
    "TimeoutException",
    "cluster_name",
    "get_broker",
    "package",
    "pre_execute_connect",
    "schedule_next_runs",
    "schedules_upsert",
]

#: What every message runs, and what every schedule runs.
RUNNER = "project.jobs.runner.execute"
SCHEDULED_FUNC = "project.jobs.runner.run_scheduled"

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 5.0


class _HeartbeatMixin:
    broker_name = ""
    _last_beat = 0.0

    def set_stat(self, key: str, value: str, timeout: int):
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


class OrmBroker(_HeartbeatMixin, ORM):
    broker_name = "orm"

    def enqueue(self, task: str) -> int:
        return self.enqueue_at(task, timezone.now())

    def enqueue_at(self, task: str, due: dt.datetime) -> int:
        return self.get_connection().create(key=self.list_key, payload=task, lock=due).pk

    def enqueue_many_at(self, items: Sequence[tuple[str, dt.datetime]]) -> None:
        rows = [OrmQ(key=self.list_key, payload=task, lock=due) for task, due in items]
        with transaction.atomic(using=Conf.ORM):
            self.get_connection().bulk_create(rows, batch_size=1000)

    def dequeue(self):
        self.get_connection()  # closes a stale connection between pulls
        now = timezone.now()
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute(
                """
                UPDATE django_q_ormq SET lock = %s
                WHERE id IN (
                    SELECT id FROM django_q_ormq
                    WHERE key = %s AND lock < %s
                    ORDER BY lock, id
                    LIMIT %s
                    FOR UPDATE SKIP LOCKED
                )
                RETURNING id, payload
                """,
                [now + timedelta(seconds=Conf.RETRY), self.list_key, now, Conf.BULK],
            )
            rows = cursor.fetchall()
        if rows:
            return sorted(rows)
        time.sleep(Conf.POLL)
        return None

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


_MOVE_DUE = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, item in ipairs(items) do
  redis.call('RPUSH', KEYS[2], item)
  redis.call('ZREM', KEYS[1], item)
end
return #items
"""


class RedisBroker(_HeartbeatMixin, Redis):
    """Redis has no acknowledgements: a message taken by a worker that dies is gone, and
    the toolkit's recovery sweep (heartbeats on our own rows) moves the run on."""

    broker_name = "redis"

    @property
    def delayed_key(self) -> str:
        return f"{self.list_key}:delayed"

    def enqueue(self, task: str):
        return self.connection.rpush(self.list_key, task)

    def enqueue_at(self, task: str, due: dt.datetime):
        if due <= timezone.now():
            return self.connection.rpush(self.list_key, task)
        return self.connection.zadd(self.delayed_key, {task: due.timestamp()})

    def enqueue_many_at(self, items: Sequence[tuple[str, dt.datetime]]) -> None:
        now = timezone.now()
        pipe = self.connection.pipeline(transaction=False)
        for task, due in items:
            if due <= now:
                pipe.rpush(self.list_key, task)
            else:
                pipe.zadd(self.delayed_key, {task: due.timestamp()})
        pipe.execute()

    def move_due(self, limit: int = 100) -> int:
        script = self.connection.register_script(_MOVE_DUE)
        return int(script(keys=[self.delayed_key, self.list_key], args=[time.time(), limit]))

    def dequeue(self):
        self.move_due()
        task = self.connection.blpop(self.list_key, Conf.POLL)
        if task:
            return [(None, task[1])]
        return None

    def queue_size(self) -> int:
        return self.connection.llen(self.list_key) + self.connection.zcard(self.delayed_key)

    def depth(self) -> dict[str, int]:
        """``ready`` on the list; ``held`` in the sorted set of delayed retries."""
        return {"ready": self.connection.llen(self.list_key), "held": self.connection.zcard(self.delayed_key)}

    def purge_queue(self):
        self.connection.delete(self.delayed_key)
        return super().purge_queue()

    @staticmethod
    def get_connection(list_key: str | None = None) -> redis_lib.Redis:
        return redis_lib.from_url(settings.REDIS_URL)


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
    return Conf.CLUSTER_NAME


def package(*, run_id: int, attempt: int, name: str, group: str, timeout: int | None) -> str:
    """The signed message of one run's attempt, as ``async_task(RUNNER, run_id, attempt,
    q_options={...})`` would build it."""
    tag = uuid()
    task: dict[str, Any] = {
        "id": tag[1],
        "name": name,
        "func": RUNNER,
        "args": (run_id, attempt),
        "group": group,
        # Our toolkit decides retries: a failed task is acknowledged, never redelivered.
        "ack_failure": True,
        "kwargs": {},
        "started": timezone.now(),
    }
    if timeout is not None:
        task["timeout"] = timeout
    return SignedPackage.dumps(task)


def pre_execute_connect(receiver: Callable[..., None]) -> None:
    """Call ``receiver(sender, func=, task=)`` in the worker before each task."""
    pre_execute.connect(receiver, dispatch_uid=f"jobs.{receiver.__name__}")


# --- schedules --------------------------------------------------------------------------


def schedules_upsert(declared: dict[str, str], *, next_run: Callable[[str], dt.datetime]) -> dict[str, int]:
    """Make django-q2's schedule rows match ``{job name: cron}``: create, update (when the
    cron changed), and delete the rows of schedules no longer declared."""
    created = updated = 0
    for name, cron in declared.items():
        defaults = {
            "func": SCHEDULED_FUNC,
            "args": repr((name,)),
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
