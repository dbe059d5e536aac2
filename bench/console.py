"""Job console: server time of the overview and of the run list, at 10k, 100k and 1M runs.

    DATABASE_URL=postgres://… .venv/bin/python bench/console.py [--sizes 10000,100000,1000000] [--repeat 15]

For each size it fills ``job_runs`` of a scratch database (``bench_console_<pid>``,
dropped afterwards) with set-based SQL: the declared job names in a realistic mix (three
quarters scheduled housekeeping, mostly succeeded, a few percent failed or cancelled, a
handful queued, running or waiting for a retry), ages spread over the 7-day retention,
durations from milliseconds to minutes, and ``history``, ``kwargs``, ``progress`` and
tracebacks of realistic size. Then VACUUM ANALYZE, as autovacuum would. With
``--unvacuumed-hours N`` the runs of the last N hours are written after the VACUUM instead
(autovacuum has not come by since), so index-only scans must visit the heap for them.

Figures, each the whole call on the server side (median and p95 of ``--repeat`` rounds
after ``--warmup`` rounds, interleaved so that load on the machine hits all alike):

* ``overview``: ``project.jobs.overview.overview()``, everything the console page shows,
  chart included;
* ``list``: GET ``/admin/jobs/jobrun/`` through Django's test client as a superuser (the
  default filter: scheduled runs hidden), the whole request;
* ``list_job_failed``: the same list filtered ``?job=exports.run&status=failed&kind=all``;
* ``list_succeeded``: ``?status=succeeded&kind=all``;
* baseline, same rounds: ``SELECT count(*) FROM job_runs``.

At the smallest size the script first checks the overview's figures against plain ORM
counts (a fast wrong query must not pass). ``--explain`` logs EXPLAIN (ANALYZE, BUFFERS)
of every ``job_runs`` statement of each figure to stderr. Goal (issue): every figure under
150 ms at 1,000,000 runs. Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
# The product's own jobs only (the test settings add probe jobs), and production thresholds.
for _name, _value in {
    "JOBS_EXTRA_MODULES": "",
    "JOBS_HEARTBEAT_INTERVAL": "5",
    "JOBS_LOST_AFTER": "60",
    "EXPORT_STUCK_AFTER": "600",
    "Q_RETRY": "3900",
    "Q_TIMEOUT": "300",
    "LOG_LEVEL": "warning",
}.items():
    os.environ.setdefault(_name, _value)

from bench._support import scratch_database  # noqa: E402

GOAL_MS = 150.0
LISTS = {
    "list": "/admin/jobs/jobrun/",
    "list_job_failed": "/admin/jobs/jobrun/?job=exports.run&status=failed&kind=all",
    "list_succeeded": "/admin/jobs/jobrun/?status=succeeded&kind=all",
}

#: name, scheduled, share of runs (per 10,000), failed and cancelled rates, duration range
#: in seconds (log-uniform), attempts allowed. Every-minute schedules make ~3/4 of the runs.
JOBS = [
    ("jobs.recover", True, 1860, 0.01, 0.002, 0.005, 0.5, 1),
    ("catalog.process_sync_events", True, 1860, 0.03, 0.002, 0.01, 5.0, 3),
    ("secret_detection.expire_pending", True, 1860, 0.01, 0.002, 0.005, 0.3, 1),
    ("secret_detection.refresh_token_statuses", True, 1860, 0.04, 0.005, 0.05, 30.0, 1),
    ("exports.cleanup_archives", True, 31, 0.02, 0.0, 0.05, 60.0, 1),
    ("exports.fail_stuck", True, 31, 0.02, 0.0, 0.01, 2.0, 1),
    ("catalog.prune_sync_events", True, 1, 0.02, 0.0, 1.0, 300.0, 1),
    ("exports.prune_jobs", True, 1, 0.02, 0.0, 0.5, 60.0, 1),
    ("jobs.prune_runs", True, 1, 0.02, 0.0, 1.0, 120.0, 1),
    ("secret_detection.verify_partner_token", False, 1400, 0.08, 0.01, 0.08, 3.0, 4),
    ("catalog.process_sync_events", False, 600, 0.03, 0.002, 0.01, 5.0, 3),
    ("exports.run", False, 300, 0.05, 0.03, 0.5, 600.0, 4),
    ("secret_detection.update_token_status", False, 195, 0.02, 0.005, 0.05, 20.0, 1),
]

TRACEBACK = (
    "Traceback (most recent call last):\n"
    + '  File "/app/project/jobs/runner.py", line 142, in execute\n    result = job(**run.kwargs)\n'
    + '  File "/app/project/jobs/registry.py", line 89, in __call__\n    return self.func(**kwargs)\n' * 3
    + '  File "/app/project/clients/http.py", line 77, in post\n    response = self.session.post(url, timeout=t)\n' * 4
)

FILL = """
WITH jobs(name, scheduled, weight, fail, cancel, dur_lo, dur_hi, max_attempts) AS (
    SELECT * FROM unnest(%(names)s::text[], %(scheduled)s::bool[], %(weights)s::int[], %(fail)s::float8[],
                         %(cancel)s::float8[], %(dur_lo)s::float8[], %(dur_hi)s::float8[], %(attempts)s::int[])
), ranges AS (
    SELECT *, sum(weight) OVER (ORDER BY name, scheduled) - weight AS lo,
              sum(weight) OVER (ORDER BY name, scheduled) AS hi
    FROM jobs
), drawn AS (
    SELECT g, j.name, j.scheduled, j.max_attempts, j.fail, j.cancel, j.dur_lo, j.dur_hi,
           b.r_status, b.r_attempt, b.r_duration, b.r_lag,
           %(start)s::timestamptz + make_interval(secs => (g - b.r_jitter) * %(span)s / %(n)s) AS created_at
    FROM (
        SELECT g, floor(random() * 10000)::int AS pick, random() AS r_status, random() AS r_attempt,
               random() AS r_duration, random() AS r_lag, random() AS r_jitter
        FROM generate_series(1, %(n)s) AS g
    ) AS b
    JOIN ranges AS j ON b.pick >= j.lo AND b.pick < j.hi
), shaped AS (
    SELECT *,
           CASE WHEN r_status < fail THEN 'failed' WHEN r_status < fail + cancel THEN 'cancelled'
                ELSE 'succeeded' END AS status,
           CASE WHEN r_status < fail THEN max_attempts
                WHEN max_attempts > 1 AND r_attempt < 0.05 THEN 2 ELSE 1 END AS attempt,
           dur_lo * power(dur_hi / dur_lo, r_duration) AS seconds,
           0.02 + r_lag * 0.3 AS lag
    FROM drawn
), timed AS (
    SELECT *, created_at + make_interval(secs => 20 * (attempt - 1)) AS due_natural
    FROM shaped
), clamped AS (
    -- A run whose end would lie in the future ended a little earlier instead.
    SELECT *, greatest(
               0, extract(epoch FROM due_natural - %(now)s::timestamptz) + lag + seconds + 1 + r_lag * 30
           ) AS back
    FROM timed
), placed AS (
    SELECT g, name, scheduled, max_attempts, status, attempt, seconds, r_attempt,
           created_at - make_interval(secs => back) AS created_at,
           due_natural - make_interval(secs => back) AS due_at,
           due_natural - make_interval(secs => back - lag) AS started_at,
           due_natural - make_interval(secs => back - lag - seconds) AS finished_at
    FROM clamped
    ORDER BY created_at - make_interval(secs => back)
)
INSERT INTO job_runs (
    name, kwargs, status, attempt, max_attempts, deferrals, due_at, pushed_at, started_at, heartbeat_at,
    finished_at, worker, task_id, request_id, dedupe_key, scheduled, error_code, error, traceback, result,
    target_id, progress, cancel_requested_at, cancel_requested_by, history, created_at, updated_at
)
SELECT name,
       CASE name
           WHEN 'exports.run' THEN jsonb_build_object('export_job_id', g)
           WHEN 'secret_detection.verify_partner_token'
               THEN jsonb_build_object('finding_id', 1 + g * 7 %% 500000, 'user_id', 1 + g %% 40, 'force', false)
           WHEN 'secret_detection.update_token_status' THEN jsonb_build_object('project_id', 1 + g %% 2000)
           ELSE '{}'::jsonb
       END,
       status, attempt, max_attempts, 0, due_at, due_at, started_at,
       finished_at - make_interval(secs => least(seconds, 5 * r_attempt)), finished_at,
       'bench-' || (g %% 4) || '@worker-' || (g %% 3) || ':' || (4000 + g %% 17),
       md5(g::text), CASE WHEN scheduled THEN '' ELSE md5('request' || g) END,
       CASE WHEN NOT scheduled AND name = 'catalog.process_sync_events' THEN 'catalog-sync'
            WHEN name = 'secret_detection.update_token_status' THEN 'project:' || (1 + g %% 2000) END,
       scheduled,
       CASE status WHEN 'failed' THEN CASE WHEN name LIKE 'secret_detection.%%' THEN 'sdrs_timeout'
                                           ELSE 'unexpected' END
                   WHEN 'cancelled' THEN 'cancelled' ELSE '' END,
       CASE status
           WHEN 'failed' THEN 'POST https://sdrs.example.com/api/v1/token/verify: read timed out after 60 s '
                              || '(request ' || md5('request' || g) || ')'
           WHEN 'cancelled' THEN 'Cancelled by admin from the job console.'
           ELSE ''
       END,
       CASE status WHEN 'failed' THEN %(traceback)s || 'TimeoutError: run ' || g ELSE '' END,
       CASE WHEN status <> 'succeeded' THEN NULL
            WHEN name = 'exports.run' THEN jsonb_build_object('archive_bytes', g * 37 %% 90000000, 'rows', g %% 250000)
            ELSE jsonb_build_object('processed', g %% 1000, 'batches', 1 + g %% 3) END,
       CASE name WHEN 'exports.run' THEN g
                 WHEN 'secret_detection.verify_partner_token' THEN 1 + g * 7 %% 500000 END,
       CASE
           WHEN name = 'exports.run' THEN jsonb_build_object(
               'done', 14, 'total', 14, 'note', 'exporting notes: ' || (g %% 250000) || ' rows',
               'phase', 'exporting', 'relations_done', 14, 'relations_total', 14, 'rows_written', g %% 250000)
           WHEN name = 'secret_detection.refresh_token_statuses' THEN jsonb_build_object(
               'done', g %% 500, 'total', g %% 500, 'note', 'verified ' || (g %% 500) || ' tokens')
       END,
       CASE WHEN status = 'cancelled' THEN finished_at - interval '1 second' END,
       CASE WHEN status = 'cancelled' THEN 'admin' ELSE '' END,
       (
           SELECT jsonb_agg(jsonb_build_object(
               'attempt', a,
               'due_at', due_at - make_interval(secs => 20 * (attempt - a)),
               'started_at', started_at - make_interval(secs => 20 * (attempt - a)),
               'finished_at', CASE WHEN a = attempt THEN finished_at
                                   ELSE started_at - make_interval(secs => 20 * (attempt - a) - 1) END,
               'outcome', CASE WHEN a < attempt THEN 'retried' ELSE status END,
               'error_code', CASE WHEN a < attempt THEN 'sdrs_timeout' WHEN status = 'failed' THEN 'sdrs_timeout'
                                  ELSE '' END,
               'error', CASE WHEN a < attempt OR status = 'failed'
                             THEN 'POST https://sdrs.example.com/api/v1/token/verify: read timed out after 60 s'
                             ELSE '' END
           ) ORDER BY a)
           FROM generate_series(1, attempt) AS a
       ),
       created_at, finished_at
FROM placed
WHERE created_at >= %(since)s AND created_at < %(until)s
"""

#: Rare shapes the console must count too: runs of a job no longer declared (its runs
#: outlive it until pruned), and runs that ended more than a day after they started (a
#: worker lost while the cluster was down, failed by the sweep).
ODD = [
    """
    UPDATE job_runs SET name = 'exports.retired_job', kwargs = '{}', target_id = NULL
    WHERE id IN (SELECT id FROM job_runs WHERE NOT scheduled AND finished_at > %(now)s - interval '20 hours'
                 ORDER BY id LIMIT 5)
    """,
    """
    UPDATE job_runs SET status = 'failed', error_code = 'worker_lost', error = 'The worker stopped reporting.',
           started_at = finished_at - interval '26 hours 3.123457 seconds'
    WHERE id IN (SELECT id FROM job_runs WHERE NOT scheduled AND status = 'succeeded'
                   AND finished_at BETWEEN %(now)s - interval '20 hours' AND %(now)s - interval '2 hours'
                 ORDER BY id DESC LIMIT 3)
    """,
]

#: A handful of live runs among the newest: waiting for a retry, queued, running, and
#: running without a heartbeat (its worker is gone).
LIVE = [
    """
    UPDATE job_runs SET status = 'queued', attempt = 2, due_at = %(now)s + make_interval(mins => (10 + id %% 7)::int),
           pushed_at = %(now)s, finished_at = NULL, result = NULL, dedupe_key = NULL,
           error_code = 'sdrs_timeout', error = 'POST https://sdrs.example.com/api/v1/token/verify: read timed out',
           history = jsonb_build_array(history -> 0 || jsonb_build_object('outcome', 'retried'))
    WHERE id IN (SELECT id FROM job_runs WHERE name = 'secret_detection.verify_partner_token'
                 ORDER BY id DESC LIMIT 8)
    """,
    """
    UPDATE job_runs SET status = 'queued', attempt = 1, due_at = %(now)s - make_interval(secs => id %% 5),
           started_at = NULL, heartbeat_at = NULL, finished_at = NULL, result = NULL, progress = NULL,
           dedupe_key = NULL, error_code = '', error = '', traceback = '', history = '[]', worker = ''
    WHERE id IN (SELECT id FROM job_runs WHERE status <> 'queued' ORDER BY id DESC LIMIT 20)
    """,
    """
    UPDATE job_runs SET status = 'running', started_at = %(now)s - interval '30 seconds',
           heartbeat_at = %(now)s - interval '2 seconds', finished_at = NULL, result = NULL,
           error_code = '', error = '', traceback = '', history = '[]', dedupe_key = NULL
    WHERE id IN (SELECT id FROM job_runs WHERE status <> 'queued' ORDER BY id DESC LIMIT 6)
    """,
    """
    UPDATE job_runs SET status = 'running', started_at = %(now)s - interval '15 minutes',
           heartbeat_at = %(now)s - interval '10 minutes', finished_at = NULL, result = NULL,
           error_code = '', error = '', traceback = '', history = '[]', dedupe_key = NULL
    WHERE id IN (SELECT id FROM job_runs WHERE status NOT IN ('queued', 'running') ORDER BY id DESC LIMIT 2)
    """,
]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _connect():
    import psycopg

    return psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)


# --- data -------------------------------------------------------------------------------


def fill(conn, size: int, *, unvacuumed_hours: float = 0) -> dict:
    """Replace the runs with ``size`` new ones; returns the table's shape.

    With ``unvacuumed_hours``, the runs created in those last hours are written after the
    VACUUM (as if autovacuum had not come by since): their pages are not all-visible, so
    index-only scans fetch those rows from the heap."""
    from django.utils import timezone

    now = timezone.now()
    retention = 7 * 86400
    cut = now - dt.timedelta(hours=unvacuumed_hours)
    started = time.perf_counter()
    conn.execute("TRUNCATE job_runs RESTART IDENTITY CASCADE")  # export jobs point at runs
    columns = list(zip(*JOBS, strict=True))
    params = {
        "names": list(columns[0]),
        "scheduled": list(columns[1]),
        "weights": list(columns[2]),
        "fail": list(columns[3]),
        "cancel": list(columns[4]),
        "dur_lo": list(columns[5]),
        "dur_hi": list(columns[6]),
        "attempts": list(columns[7]),
        "n": size,
        "now": now,
        "start": now - dt.timedelta(seconds=retention),
        "span": float(retention),
        "traceback": TRACEBACK,
    }
    # The same seed draws the same runs in both passes; each pass keeps its own period.
    later = now + dt.timedelta(days=1)
    conn.execute("SELECT setseed(0.42)")
    conn.execute(FILL, {**params, "since": now - dt.timedelta(days=30), "until": cut if unvacuumed_hours else later})
    if unvacuumed_hours:
        conn.execute("VACUUM (ANALYZE) job_runs")
        conn.execute("SELECT setseed(0.42)")
        conn.execute(FILL, {**params, "since": cut, "until": later})
    for statement in LIVE + ODD:
        conn.execute(statement, {"now": now})
    conn.execute("ANALYZE job_runs" if unvacuumed_hours else "VACUUM (ANALYZE) job_runs")
    fill_seconds = time.perf_counter() - started
    shape = conn.execute(
        """
        SELECT count(*), count(*) FILTER (WHERE scheduled),
               count(*) FILTER (WHERE finished_at >= now() - interval '24 hours'),
               pg_table_size('job_runs'), pg_indexes_size('job_runs')
        FROM job_runs
        """
    ).fetchone()
    statuses = dict(conn.execute("SELECT status, count(*) FROM job_runs GROUP BY 1 ORDER BY 1").fetchall())
    odd = conn.execute(
        "SELECT count(*) FILTER (WHERE name = 'exports.retired_job'),"
        " count(*) FILTER (WHERE finished_at - started_at > interval '1 day') FROM job_runs"
    ).fetchone()
    indexes = dict(
        conn.execute(
            "SELECT indexrelid::regclass::text, round(pg_relation_size(indexrelid) / 2.0 ^ 20, 1)::float8"
            " FROM pg_index WHERE indrelid = 'job_runs'::regclass ORDER BY 1"
        ).fetchall()
    )
    _log(f"filled {size:,} runs in {fill_seconds:.1f} s: {statuses}")
    return {
        "rows": shape[0],
        "scheduled_share": round(shape[1] / shape[0], 3),
        "finished_last_24h": shape[2],
        "statuses": statuses,
        "undeclared_name_runs": odd[0],
        "runs_over_a_day": odd[1],
        "table_mb": round(shape[3] / 2**20, 1),
        "indexes_mb": round(shape[4] / 2**20, 1),
        "index_mb": indexes,
        "fill_seconds": round(fill_seconds, 1),
    }


# --- correctness --------------------------------------------------------------------------


def _percentile_cont(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def check_overview() -> dict:
    """The overview's figures against straightforward ORM reads of the same runs."""
    from django.conf import settings
    from django.utils import timezone

    from project.jobs import overview, registry
    from project.jobs.models import JobRun

    now = timezone.now()
    data = overview.overview(now=now)
    hour, day = now - dt.timedelta(hours=1), now - dt.timedelta(hours=24)
    runs = list(
        JobRun.objects.values(
            "id", "name", "status", "attempt", "due_at", "heartbeat_at", "started_at", "finished_at",
            "error_code", "scheduled", "created_at",
        )
    )  # fmt: skip
    expected: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    durations: dict[str, list[float]] = defaultdict(list)
    chart: dict[dt.datetime, list[int]] = defaultdict(lambda: [0, 0])
    for run in runs:
        row, status = expected[run["name"]], run["status"]
        job = registry.get(run["name"])
        lost = job.lost_after_seconds if job else float(settings.JOBS_LOST_AFTER)
        if status == "queued":
            waiting = run["attempt"] > 1 and run["due_at"] > now
            row["retry_waiting" if waiting else "queued"] += 1
            if waiting:
                row["next_retry_at"] = min(filter(None, [row.get("next_retry_at"), run["due_at"]]))
            if run["due_at"] <= now:
                row["oldest_due_at"] = min(filter(None, [row.get("oldest_due_at"), run["due_at"]]))
        if status == "running":
            row["running"] += 1
            if run["heartbeat_at"] is None or run["heartbeat_at"] < now - dt.timedelta(seconds=lost):
                row["running_silent"] += 1
        finished = run["finished_at"]
        if finished is not None and finished >= day:
            if status in ("succeeded", "failed", "cancelled"):
                row[f"{status}_24h"] += 1
                if finished >= hour:
                    row[f"{status}_1h"] += 1
            if run["started_at"] is not None:
                durations[run["name"]].append((finished - run["started_at"]).total_seconds())
            if status in ("succeeded", "failed"):
                chart[finished.replace(second=0, microsecond=0)][status == "failed"] += 1
            else:
                chart[finished.replace(second=0, microsecond=0)]
        # The last error is looked up for declared jobs only.
        if status == "failed" and job is not None and run["id"] > row.get("last_error_run_id", 0):
            row["last_error_run_id"] = run["id"]
    for name, values in durations.items():
        expected[name]["p50_seconds"] = _percentile_cont(values, 0.5)
        expected[name]["p95_seconds"] = _percentile_cont(values, 0.95)

    keys = (
        "queued", "retry_waiting", "next_retry_at", "oldest_due_at", "running", "running_silent",
        "succeeded_1h", "failed_1h", "cancelled_1h", "succeeded_24h", "failed_24h", "cancelled_24h",
        "p50_seconds", "p95_seconds", "last_error_run_id",
    )  # fmt: skip
    problems = []
    seen = {row.name: row for row in data.jobs}
    for name in set(expected) | set(seen):
        if name not in seen:
            problems.append(f"{name}: missing from the overview")
            continue
        for key in keys:
            got = getattr(seen[name], key)
            want = expected[name].get(key, None if key.endswith(("_at", "_seconds", "_id")) else 0)
            if key.endswith("_seconds") and got is not None and want is not None:
                same = abs(got - want) <= 0.0011
            else:
                same = got == want
            if not same:
                problems.append(f"{name}.{key}: overview {got!r}, ORM {want!r}")
    want_chart = [(minute, counts[0], counts[1]) for minute, counts in sorted(chart.items())]
    if [tuple(row) for row in data.chart] != want_chart:
        problems.append(f"chart: {len(data.chart)} minutes in the overview, {len(want_chart)} from the ORM")
    last_scheduled: dict[str, dict] = {}
    for run in runs:
        if run["scheduled"] and (
            run["name"] not in last_scheduled or run["created_at"] > last_scheduled[run["name"]]["created_at"]
        ):
            last_scheduled[run["name"]] = run
    for schedule in data.schedules:
        want = last_scheduled.get(schedule.name)
        if (schedule.last_run_id, schedule.last_run_status) != ((want["id"], want["status"]) if want else (None, "")):
            problems.append(f"schedule {schedule.name}: overview #{schedule.last_run_id}, ORM {want and want['id']}")
    if problems:
        raise AssertionError("the overview disagrees with the ORM:\n  " + "\n  ".join(problems))
    totals = Counter({key: sum(row.get(key, 0) for row in expected.values()) for key in ("failed_24h", "queued")})
    _log(f"overview agrees with the ORM on {len(runs):,} runs ({dict(totals)})")
    return {"runs": len(runs), "jobs": len(seen), "chart_minutes": len(want_chart), "agrees": True}


# --- timing -------------------------------------------------------------------------------


def _figures(client) -> dict[str, Callable[[], None]]:
    from django.db import connection

    from project.jobs import overview

    def baseline() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM job_runs")
            cursor.fetchone()

    def page(url: str) -> Callable[[], None]:
        def get() -> None:
            response = client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"GET {url}: {response.status_code}")

        return get

    return {
        "baseline_count": baseline,
        "overview": lambda: overview.overview(),
        **{name: page(url) for name, url in LISTS.items()},
    }


def _stats(samples: list[float]) -> dict:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "samples_ms": [round(value * 1000, 1) for value in samples],
    }


def _queries(run: Callable[[], None], *, explain: bool) -> dict:
    """One more call with its queries captured: how many, their SQL time, and the slowest."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        run()
    timed = sorted(captured.captured_queries, key=lambda query: -float(query["time"]))
    result = {
        "queries": len(timed),
        "sql_ms": round(sum(float(query["time"]) for query in timed) * 1000, 1),
        "slowest": [{"ms": round(float(q["time"]) * 1000, 1), "sql": q["sql"][:160]} for q in timed[:3]],
    }
    if explain:
        with connection.cursor() as cursor:
            for query in timed:
                if "job_runs" in query["sql"] and query["sql"].lstrip().upper().startswith(("SELECT", "WITH")):
                    cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + query["sql"])
                    plan = "\n".join(row[0] for row in cursor.fetchall())
                    _log(f"{query['sql']}\n{plan}\n")
    return result


def measure(size: int, *, repeat: int, warmup: int, explain: bool) -> dict:
    from django.test import Client

    from project.models import User

    user = User.objects.filter(username="bench-admin").first() or User.objects.create_superuser(
        "bench-admin", "bench-admin@example.com", "pw"
    )
    client = Client()
    client.force_login(user)
    figures = _figures(client)
    samples: dict[str, list[float]] = {name: [] for name in figures}
    for round_ in range(warmup + repeat):
        for name, run in figures.items():
            started = time.perf_counter()
            run()
            elapsed = time.perf_counter() - started
            if round_ >= warmup:
                samples[name].append(elapsed)
    baseline = statistics.median(samples["baseline_count"])
    result = {}
    for name, values in samples.items():
        result[name] = _stats(values)
        if name != "baseline_count":
            result[name]["ratio_to_baseline"] = round(statistics.median(values) / baseline, 2)
            result[name]["goal_met"] = statistics.median(values) * 1000 < GOAL_MS
        if explain:
            _log(f"--- {name} at {size:,} runs")
        result[name].update(_queries(figures[name], explain=explain))
    summary = ", ".join(f"{name} {figures['median_ms']} ms" for name, figures in result.items())
    _log(f"{size:,} runs: {summary}")
    return result


# --- main -----------------------------------------------------------------------------------


def _machine(conn) -> dict:
    settings = dict(
        conn.execute(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
            "('shared_buffers', 'work_mem', 'jit', 'max_parallel_workers_per_gather', 'random_page_cost')"
        ).fetchall()
    )
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "postgresql": conn.execute("SHOW server_version").fetchone()[0],
        "postgresql_settings": settings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated numbers of runs")
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds per size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--explain", action="store_true", help="log EXPLAIN (ANALYZE, BUFFERS) to stderr")
    parser.add_argument(
        "--unvacuumed-hours",
        type=float,
        default=0,
        help="write the runs of the last N hours after the VACUUM (autovacuum has not come by yet)",
    )
    args = parser.parse_args()
    sizes = [int(size.replace("_", "")) for size in args.sizes.split(",") if size.strip()]

    with scratch_database("bench_console"):
        from project.jobs.models import ClusterHeartbeat

        ClusterHeartbeat.objects.create(key="bench@host-1:100", cluster_name="bench", host="host-1", pid=100,
                                        broker="orm", workers=4)  # fmt: skip
        with _connect() as conn:
            output: dict = {
                "benchmark": "console",
                "goal_ms": GOAL_MS,
                "repeat": args.repeat,
                "warmup": args.warmup,
                "unvacuumed_hours": args.unvacuumed_hours,
                "machine": _machine(conn),
                "sizes": [],
            }
            for size in sizes:
                entry: dict = {"size": size, "data": fill(conn, size, unvacuumed_hours=args.unvacuumed_hours)}
                if size == min(sizes):
                    entry["check"] = check_overview()
                entry["figures"] = measure(size, repeat=args.repeat, warmup=args.warmup, explain=args.explain)
                output["sizes"].append(entry)
            output["machine"]["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    print(json.dumps(output, indent=2, default=str))


if __name__ == "__main__":
    main()
