"""What the job console shows, read in a handful of queries: one row per job, the clusters,
the broker, the schedules, the switches and the features' backlogs.

The console page, its refresh, ``manage.py jobs_status`` and the console benchmark all
read through ``overview()``. Apps add their own backlog figures and switches with
``register_backlogs`` and ``register_switches``, so the toolkit knows nothing of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from project.jobs import declared, djangoq
from project.jobs.models import ClusterHeartbeat, JobPause
from project.jobs.redact import redact


@dataclass
class JobRow:
    name: str
    description: str
    scheduled: bool
    queued: int = 0
    retry_waiting: int = 0
    next_retry_at: dt.datetime | None = None
    oldest_due_at: dt.datetime | None = None
    running: int = 0
    running_silent: int = 0
    paused: bool = False
    paused_by: str = ""
    paused_at: dt.datetime | None = None
    succeeded_1h: int = 0
    failed_1h: int = 0
    cancelled_1h: int = 0
    succeeded_24h: int = 0
    failed_24h: int = 0
    cancelled_24h: int = 0
    p50_seconds: float | None = None
    p95_seconds: float | None = None
    last_error: str = ""
    last_error_code: str = ""
    last_error_at: dt.datetime | None = None
    last_error_run_id: int | None = None

    @property
    def idle(self) -> bool:
        return not (self.queued or self.retry_waiting or self.running or self.paused) and not (
            self.succeeded_24h or self.failed_24h or self.cancelled_24h
        )

    @property
    def attention(self) -> bool:
        return bool(self.running_silent or self.failed_1h)


@dataclass
class ClusterRow:
    key: str
    cluster_name: str
    host: str
    pid: int
    broker: str
    workers: int
    last_seen: dt.datetime
    age_seconds: float
    alive: bool


@dataclass
class ScheduleRow:
    name: str
    cron: str
    next_run: dt.datetime | None
    last_run_id: int | None
    last_run_status: str
    last_run_at: dt.datetime | None
    paused: bool


@dataclass(frozen=True)
class Backlog:
    """A feature's figure for the console, such as "pending sync events"."""

    label: str
    count: int
    oldest_age_seconds: float | None = None
    url: str = ""
    #: Worth a look: shown highlighted.
    warn: bool = False


@dataclass(frozen=True)
class Switch:
    """A runtime switch an operator flips from the console."""

    key: str
    label: str
    on: bool
    group: str
    #: The permission (``app_label.codename``) needed to flip it.
    permission: str
    changed_by: str = ""
    changed_at: dt.datetime | None = None
    #: What "on" means, for the button: "on"/"off", or "paused"/"running".
    on_label: str = "on"
    off_label: str = "off"
    #: The buttons: what turning it on or off is called.
    turn_on: str = "Turn on"
    turn_off: str = "Turn off"


@dataclass(frozen=True)
class SwitchSource:
    """Lists a feature's switches, and flips one: ``flip(key, on, by)`` returns a message."""

    list: Callable[[], list[Switch]]
    flip: Callable[[str, bool, str], str]


_backlog_sources: list[Callable[[], list[Backlog]]] = []
_switch_sources: list[SwitchSource] = []


def register_backlogs(source: Callable[[], list[Backlog]]) -> None:
    if source not in _backlog_sources:
        _backlog_sources.append(source)


def register_switches(source: SwitchSource) -> None:
    if source not in _switch_sources:
        _switch_sources.append(source)


@dataclass
class Overview:
    now: dt.datetime
    jobs: list[JobRow]
    clusters: list[ClusterRow]
    broker: dict[str, Any]
    oldest_due_age_seconds: float | None
    schedules: list[ScheduleRow]
    backlogs: list[Backlog]
    switches: list[Switch]
    chart: list[tuple[dt.datetime, int, int]] = field(default_factory=list)

    @property
    def clusters_alive(self) -> int:
        return sum(1 for cluster in self.clusters if cluster.alive)

    @property
    def totals(self) -> dict[str, int]:
        keys = ("queued", "retry_waiting", "running", "running_silent", "failed_1h", "failed_24h", "cancelled_24h")
        return {key: sum(getattr(row, key) for row in self.jobs) for key in keys} | {
            "paused": sum(1 for row in self.jobs if row.paused)
        }

    @property
    def problems(self) -> list[str]:
        """What needs an operator now, in words; empty when all is well."""
        totals = self.totals
        found = []
        if not self.clusters_alive:
            found.append("no job cluster is alive")
        if totals["running_silent"]:
            found.append(f"{totals['running_silent']} running without heartbeat")
        if totals["failed_1h"]:
            found.append(f"{totals['failed_1h']} failed in the last hour")
        if self.oldest_due_age_seconds and self.oldest_due_age_seconds > 60:
            found.append(f"a due run has waited {round(self.oldest_due_age_seconds)} s")
        if totals["paused"]:
            found.append(f"{totals['paused']} job(s) paused")
        return found

    def as_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, dt.datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {key: plain(item) for key, item in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(item) for item in value]
            return value

        plain_dict: dict[str, Any] = plain(
            {
                "now": self.now,
                "problems": self.problems,
                "totals": self.totals,
                "jobs": [asdict(row) for row in self.jobs],
                "clusters": [asdict(row) for row in self.clusters],
                "broker": self.broker,
                "oldest_due_age_seconds": self.oldest_due_age_seconds,
                "schedules": [asdict(row) for row in self.schedules],
                "backlogs": [asdict(row) for row in self.backlogs],
                "switches": [asdict(row) for row in self.switches],
            }
        )
        return plain_dict


_ACTIVE_SQL = """
SELECT r.name,
       count(*) FILTER (WHERE r.status = 'queued' AND NOT (r.attempt > 1 AND r.due_at > %(now)s)),
       count(*) FILTER (WHERE r.status = 'queued' AND r.attempt > 1 AND r.due_at > %(now)s),
       min(r.due_at) FILTER (WHERE r.status = 'queued' AND r.attempt > 1 AND r.due_at > %(now)s),
       min(r.due_at) FILTER (WHERE r.status = 'queued' AND r.due_at <= %(now)s),
       count(*) FILTER (WHERE r.status = 'running'),
       count(*) FILTER (
           WHERE r.status = 'running' AND (
               r.heartbeat_at IS NULL
               OR r.heartbeat_at < %(now)s - make_interval(secs => coalesce(l.secs, %(default_lost)s))
           )
       )
FROM job_runs r
LEFT JOIN unnest(%(names)s::text[], %(lost)s::float8[]) AS l(name, secs) ON l.name = r.name
WHERE r.status IN ('queued', 'running')
GROUP BY r.name
"""

# The last 24 h of every job, read from job_runs_name_finished alone (index-only): the
# recursive CTE lists the distinct names (one index descent each, so names that are no
# longer declared still count), and "name = ANY(those)" makes PostgreSQL read each name's
# range in index order, so rows arrive grouped by job without a sort of the whole day.
# The hour's cheap time test comes before the status test. Durations: date_part() gives the
# same float8 as extract()::float8 (what percentile_cont sorts) when the interval has no
# day part, and needs no numeric arithmetic; longer ones keep extract().
_DURATION = """CASE WHEN date_part('day', finished_at - started_at) = 0
                THEN date_part('epoch', finished_at - started_at)
                ELSE extract(epoch FROM finished_at - started_at)::float8 END"""

_FINISHED_SQL = f"""
WITH RECURSIVE names(name) AS (
    (SELECT name FROM job_runs ORDER BY name LIMIT 1)
    UNION ALL
    SELECT (SELECT r.name FROM job_runs r WHERE r.name > n.name ORDER BY r.name LIMIT 1)
    FROM names n
    WHERE n.name IS NOT NULL
)
SELECT name,
       count(*) FILTER (WHERE finished_at >= %(hour)s AND status = 'succeeded'),
       count(*) FILTER (WHERE finished_at >= %(hour)s AND status = 'failed'),
       count(*) FILTER (WHERE finished_at >= %(hour)s AND status = 'cancelled'),
       count(*) FILTER (WHERE status = 'succeeded'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'cancelled'),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY {_DURATION}),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY {_DURATION})
FROM job_runs
WHERE name = ANY(ARRAY(SELECT name FROM names WHERE name IS NOT NULL))
  AND finished_at >= %(day)s
GROUP BY name
"""

# From job_runs_finished alone (index-only). date_bin() to the minute gives the same
# instants as date_trunc('minute', ...) (time zone offsets are whole minutes) without
# converting every row to the session's time zone. Grouped directly, PostgreSQL has no
# statistics for the minute, assumes one group per row and sorts the whole day; from the
# subquery (OFFSET 0 keeps it one) it assumes a few hundred groups, closer to the day's
# 1,440 at most, and hashes them instead.
_CHART_SQL = """
SELECT minute,
       count(*) FILTER (WHERE status = 'succeeded'),
       count(*) FILTER (WHERE status = 'failed')
FROM (
    SELECT date_bin('1 minute', finished_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS minute, status
    FROM job_runs
    WHERE finished_at >= %(day)s
    OFFSET 0
) AS ended
GROUP BY minute
ORDER BY minute
"""

_LAST_ERROR_SQL = """
SELECT n.name, r.id, r.error_code, r.error, r.finished_at
FROM unnest(%(names)s::text[]) AS n(name)
JOIN LATERAL (
    SELECT id, error_code, error, finished_at FROM job_runs
    WHERE name = n.name AND status = 'failed'
    ORDER BY id DESC LIMIT 1
) r ON true
"""

_LAST_SCHEDULED_SQL = """
SELECT n.name, r.id, r.status, r.created_at
FROM unnest(%(names)s::text[]) AS n(name)
JOIN LATERAL (
    SELECT id, status, created_at FROM job_runs
    WHERE name = n.name AND scheduled
    ORDER BY created_at DESC LIMIT 1
) r ON true
"""


def _rows(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def job_rows(*, now: dt.datetime | None = None) -> list[JobRow]:
    """One row per declared job (and per unknown name that still has runs)."""
    now = now or timezone.now()
    jobs = declared.REGISTRY
    names = sorted(jobs)
    rows = {
        name: JobRow(name=name, description=job.description, scheduled=bool(job.cron)) for name, job in jobs.items()
    }

    def row(name: str) -> JobRow:
        return rows.setdefault(name, JobRow(name=name, description="(not a declared job)", scheduled=False))

    params = {
        "now": now,
        "names": names,
        "lost": [jobs[name].lost_after_seconds for name in names],
        "default_lost": float(settings.JOBS_LOST_AFTER),
        "hour": now - timedelta(hours=1),
        "day": now - timedelta(hours=24),
    }
    for name, queued, retry_waiting, next_retry, oldest_due, running, silent in _rows(_ACTIVE_SQL, params):
        target = row(name)
        target.queued, target.retry_waiting, target.next_retry_at = queued, retry_waiting, next_retry
        target.oldest_due_at, target.running, target.running_silent = oldest_due, running, silent
    for name, s1, f1, c1, s24, f24, c24, p50, p95 in _rows(_FINISHED_SQL, params):
        target = row(name)
        target.succeeded_1h, target.failed_1h, target.cancelled_1h = s1, f1, c1
        target.succeeded_24h, target.failed_24h, target.cancelled_24h = s24, f24, c24
        target.p50_seconds = round(p50, 3) if p50 is not None else None
        target.p95_seconds = round(p95, 3) if p95 is not None else None
    for name, run_id, code, error, finished_at in _rows(_LAST_ERROR_SQL, params):
        target = row(name)
        target.last_error_run_id, target.last_error_code, target.last_error_at = run_id, code, finished_at
        target.last_error = redact(error)[:300]
    for pause in JobPause.objects.all():
        target = row(pause.name)
        target.paused, target.paused_by, target.paused_at = True, pause.paused_by, pause.paused_at
    return sorted(rows.values(), key=lambda r: (r.scheduled, r.name))


def chart_rows(*, now: dt.datetime | None = None) -> list[tuple[dt.datetime, int, int]]:
    """(minute, succeeded, failed) for each minute of the last 24 h that saw a run end."""
    now = now or timezone.now()
    return [tuple(row) for row in _rows(_CHART_SQL, {"day": now - timedelta(hours=24)})]


def cluster_rows(*, now: dt.datetime | None = None) -> list[ClusterRow]:
    now = now or timezone.now()
    stale = settings.JOBS_CLUSTER_STALE_AFTER
    rows = []
    for beat in ClusterHeartbeat.objects.order_by("-last_seen"):
        age = max(0.0, (now - beat.last_seen).total_seconds())
        rows.append(
            ClusterRow(
                key=beat.key,
                cluster_name=beat.cluster_name,
                host=beat.host,
                pid=beat.pid,
                broker=beat.broker,
                workers=beat.workers,
                last_seen=beat.last_seen,
                age_seconds=round(age, 1),
                alive=age < stale,
            )
        )
    return rows


def clusters_on_other_brokers(*, broker: str) -> dict[str, list[str]]:
    """The live clusters' keys, by broker, of those on this database that do not use
    ``broker``: runs are sent through the broker of whoever enqueues them, so such clusters
    never see each other's work (nor that of a web server configured like the other kind)."""
    others: dict[str, list[str]] = {}
    for row in cluster_rows():
        if row.alive and row.broker != broker:
            others.setdefault(row.broker, []).append(row.key)
    return others


def schedule_rows() -> list[ScheduleRow]:
    scheduled = {job.name: job for job in declared.REGISTRY.values() if job.cron}
    next_runs = djangoq.schedule_next_runs(sorted(scheduled))
    last = {row[0]: row[1:] for row in _rows(_LAST_SCHEDULED_SQL, {"names": sorted(scheduled)})}
    paused = set(JobPause.objects.values_list("name", flat=True))
    rows = []
    for name in sorted(scheduled):
        run_id, status, at = last.get(name, (None, "", None))
        rows.append(
            ScheduleRow(
                name=name,
                cron=scheduled[name].cron or "",
                next_run=next_runs.get(name),
                last_run_id=run_id,
                last_run_status=status,
                last_run_at=at,
                paused=name in paused,
            )
        )
    return rows


def broker_depth() -> dict[str, Any]:
    broker = djangoq.get_broker()
    return {"kind": settings.JOBS_BROKER, "queue": broker.list_key, **broker.depth()}


def backlogs() -> list[Backlog]:
    return [backlog for source in _backlog_sources for backlog in source()]


def switches() -> list[Switch]:
    return [switch for source in _switch_sources for switch in source.list()]


def switch_source(key: str) -> tuple[SwitchSource, Switch] | None:
    for source in _switch_sources:
        for switch in source.list():
            if switch.key == key:
                return source, switch
    return None


def overview(*, now: dt.datetime | None = None, chart: bool = True) -> Overview:
    now = now or timezone.now()
    jobs = job_rows(now=now)
    due = [row.oldest_due_at for row in jobs if row.oldest_due_at is not None and not row.paused]
    return Overview(
        now=now,
        jobs=jobs,
        clusters=cluster_rows(now=now),
        broker=broker_depth(),
        oldest_due_age_seconds=round((now - min(due)).total_seconds(), 1) if due else None,
        schedules=schedule_rows(),
        backlogs=backlogs(),
        switches=switches(),
        chart=chart_rows(now=now) if chart else [],
    )
