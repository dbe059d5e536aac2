"""CI catalog sync: trigger overhead, backlog drain and staleness, each against a baseline.

1. Trigger overhead: ``UPDATE projects SET name = ...`` of 100,000 projects, 10% of them
   catalog resources, with the sync-event trigger against the same UPDATE with the trigger
   disabled (median of interleaved rounds; VACUUM and CHECKPOINT before each). Also the
   added latency of a single-row update (autocommit, median of interleaved blocks).
2. Backlog drain: 100,000 pending events over 10,000 resources drained by the real
   processor through a real cluster (enqueue → no pending event left), against one
   set-based statement that marks every event processed and syncs the resources with
   UPDATE … FROM. The sync-only UPDATE (events left untouched) is reported too.
3. Staleness: with the cluster and ``catalog_listen`` running, raw SQL updates of project
   names at a steady rate (default 200/s for 20 s, each on a different resource), and the
   time from each update's commit until its resource shows the new name (a poller reads
   the resources every few ms). Baselines, same run: the measuring floor (the writer
   renames the resources directly) and the reference's path (no listener: only the
   every-minute schedule), unless ``--skip-cron-baseline``.

Usage: .venv/bin/python bench/catalog.py [--rounds 5] [--broker orm|redis] [--skip-cron-baseline]
Uses a scratch database on the server of DATABASE_URL (or the embedded one), dropped after.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from bench._support import scratch_database  # noqa: E402

# The production defaults, not the test suite's short thresholds (the clusters inherit them).
for _name, _value in {
    "Q_POLL": "0.2",
    "Q_TIMEOUT": "300",
    "Q_RETRY": "3900",
    "JOBS_HEARTBEAT_INTERVAL": "5",
    "JOBS_LOST_AFTER": "60",
    "LOG_LEVEL": "warning",
}.items():
    os.environ.setdefault(_name, _value)

TRIGGER = "trigger_catalog_resource_sync_event_on_project_update"

BASELINE_DRAIN = """
    WITH marked AS (
        UPDATE catalog_resource_sync_events SET status = 2, processed_at = statement_timestamp()
        WHERE status = 1
        RETURNING catalog_resource_id
    )
    UPDATE catalog_resources AS r
    SET name = p.name, description = p.description, visibility_level = p.visibility_level,
        synced_at = statement_timestamp(), updated_at = statement_timestamp()
    FROM projects AS p
    WHERE p.id = r.project_id AND r.id IN (SELECT catalog_resource_id FROM marked)
"""

SYNC_ONLY = """
    UPDATE catalog_resources AS r
    SET name = p.name, description = p.description, visibility_level = p.visibility_level,
        synced_at = statement_timestamp(), updated_at = statement_timestamp()
    FROM projects AS p
    WHERE p.id = r.project_id
      AND r.id IN (SELECT catalog_resource_id FROM catalog_resource_sync_events WHERE status = 1)
"""


def _connect():
    import psycopg

    return psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)


def _percentiles(values: list[float], scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def rank(q: float) -> float:  # nearest rank
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * scale, digits)

    return {
        "p50": round(statistics.median(ordered) * scale, digits),
        "p99": rank(0.99),
        "max": round(ordered[-1] * scale, digits),
    }


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _timed(conn, statement: str, params: object = None) -> float:
    started = time.perf_counter()
    conn.execute(statement, params)
    return time.perf_counter() - started


def _settle(conn, *tables: str) -> None:
    for table in tables:
        conn.execute(f"VACUUM ANALYZE {table}")
    conn.execute("CHECKPOINT")


# --- data -------------------------------------------------------------------------------


def _seed(conn, *, projects: int, every: int) -> None:
    conn.execute(
        """
        INSERT INTO projects (name, path, namespace_path, description, visibility_level, created_at, updated_at)
        SELECT 'Project ' || g, 'p' || g, 'bench', 'Description of project ' || g || repeat(' lorem ipsum', 5),
               (g %% 3) * 10, now(), now()
        FROM generate_series(1, %s) AS g
        """,
        [projects],
    )
    conn.execute(
        """
        INSERT INTO catalog_resources (project_id, state, name, description, visibility_level, created_at, updated_at)
        SELECT id, 1, name, description, visibility_level, now(), now() FROM projects WHERE id %% %s = 0
        """,
        [every],
    )
    _settle(conn, "projects", "catalog_resources")


# --- 1. trigger overhead ------------------------------------------------------------------


#: GitLab's shape, for reference: a row trigger that looks up the resource once per changed row.
NAIVE_ROW_TRIGGER = [
    """
    CREATE FUNCTION bench_naive_row_sync_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO catalog_resource_sync_events (catalog_resource_id, project_id, status, created_at)
      SELECT id, OLD.id, 1, now() FROM catalog_resources WHERE project_id = OLD.id;
      RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER bench_naive_row_sync_event AFTER UPDATE ON projects FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.description IS DISTINCT FROM NEW.description
          OR OLD.visibility_level IS DISTINCT FROM NEW.visibility_level)
    EXECUTE FUNCTION bench_naive_row_sync_event()
    """,
    "ALTER TABLE projects DISABLE TRIGGER bench_naive_row_sync_event",
]
#: Which triggers each mode disables.
TRIGGER_MODES = {
    "with_trigger": [],
    "without_trigger": [TRIGGER],
    "naive_row_trigger": [TRIGGER],
}


@contextlib.contextmanager
def _trigger_mode(conn, mode: str) -> Iterator[None]:
    for name in TRIGGER_MODES[mode]:
        conn.execute(f"ALTER TABLE projects DISABLE TRIGGER {name}")
    if mode == "naive_row_trigger":
        conn.execute("ALTER TABLE projects ENABLE TRIGGER bench_naive_row_sync_event")
    try:
        yield
    finally:
        conn.execute("ALTER TABLE projects DISABLE TRIGGER bench_naive_row_sync_event")
        conn.execute(f"ALTER TABLE projects ENABLE TRIGGER {TRIGGER}")


def bench_trigger(conn, *, rounds: int, single_rows: int) -> dict:
    resources = conn.execute("SELECT count(*) FROM catalog_resources").fetchone()[0]
    projects = conn.execute("SELECT count(*) FROM projects").fetchone()[0]
    for statement in NAIVE_ROW_TRIGGER:
        conn.execute(statement)
    samples: dict[str, list[float]] = {mode: [] for mode in TRIGGER_MODES}
    for round_ in range(rounds):
        modes = list(TRIGGER_MODES)
        random.Random(round_).shuffle(modes)
        for mode in modes:
            conn.execute("TRUNCATE catalog_resource_sync_events")
            _settle(conn, "projects")
            with _trigger_mode(conn, mode):
                elapsed = _timed(
                    conn, "UPDATE projects SET name = left(name, 40) || %s", [f" r{round_}{mode[:5]}{mode[-3:]}"]
                )
            events = conn.execute("SELECT count(*) FROM catalog_resource_sync_events").fetchone()[0]
            expected = 0 if mode == "without_trigger" else resources
            if events != expected:
                raise RuntimeError(f"{mode}: {events} events recorded, expected {expected}")
            samples[mode].append(elapsed)
            _log(f"trigger round {round_ + 1}/{rounds} {mode}: {elapsed:.3f} s")

    # The same UPDATE of a column the trigger ignores: the statement trigger still captures
    # the transition tables and runs its join (a row trigger's WHEN clause would not).
    unrelated: dict[str, list[float]] = {"with_trigger": [], "without_trigger": []}
    conn.execute("TRUNCATE catalog_resource_sync_events")
    for round_ in range(max(1, rounds // 2 + 1)):
        for mode in ("without_trigger", "with_trigger") if round_ % 2 else ("with_trigger", "without_trigger"):
            _settle(conn, "projects")
            if mode == "without_trigger":
                conn.execute(f"ALTER TABLE projects DISABLE TRIGGER {TRIGGER}")
            try:
                unrelated[mode].append(_timed(conn, "UPDATE projects SET updated_at = now()"))
            finally:
                conn.execute(f"ALTER TABLE projects ENABLE TRIGGER {TRIGGER}")
    if conn.execute("SELECT count(*) FROM catalog_resource_sync_events").fetchone()[0]:
        raise RuntimeError("an update of an unsynced column recorded events")
    _log(f"unsynced column: {unrelated}")

    ids = [
        row[0] for row in conn.execute("SELECT project_id FROM catalog_resources ORDER BY id LIMIT %s", [single_rows])
    ]
    latency: dict[str, list[float]] = {"with_trigger": [], "without_trigger": []}
    blocks = 6
    for block in range(blocks):
        mode = "with_trigger" if block % 2 == 0 else "without_trigger"
        if mode == "without_trigger":
            conn.execute(f"ALTER TABLE projects DISABLE TRIGGER {TRIGGER}")
        try:
            for number, project_id in enumerate(ids):
                latency[mode].append(
                    _timed(
                        conn, "UPDATE projects SET name = %s WHERE id = %s", [f"single {block} {number}", project_id]
                    )
                )
        finally:
            conn.execute(f"ALTER TABLE projects ENABLE TRIGGER {TRIGGER}")
    conn.execute("TRUNCATE catalog_resource_sync_events")
    with_t, without_t = (statistics.median(samples[m]) for m in ("with_trigger", "without_trigger"))
    single_with, single_without = (statistics.median(latency[m]) for m in ("with_trigger", "without_trigger"))
    return {
        "projects_updated": projects,
        "catalog_resources": resources,
        "rounds": rounds,
        "with_trigger_s": round(with_t, 3),
        "baseline_without_trigger_s": round(without_t, 3),
        "ratio": round(with_t / without_t, 3),
        "goal_ratio_at_most": 2.0,
        "reference_naive_row_trigger_s": round(statistics.median(samples["naive_row_trigger"]), 3),
        "reference_naive_row_trigger_ratio": round(statistics.median(samples["naive_row_trigger"]) / without_t, 3),
        "samples_s": {mode: [round(v, 3) for v in values] for mode, values in samples.items()},
        "unsynced_column_update": {
            "with_trigger_s": round(statistics.median(unrelated["with_trigger"]), 3),
            "baseline_without_trigger_s": round(statistics.median(unrelated["without_trigger"]), 3),
            "ratio": round(
                statistics.median(unrelated["with_trigger"]) / statistics.median(unrelated["without_trigger"]), 3
            ),
        },
        "single_row_update": {
            "updates_per_mode": len(latency["with_trigger"]),
            "with_trigger_ms": _percentiles(latency["with_trigger"], 1000),
            "baseline_without_trigger_ms": _percentiles(latency["without_trigger"], 1000),
            "added_latency_ms_p50": round((single_with - single_without) * 1000, 3),
        },
    }


# --- 2. backlog drain ---------------------------------------------------------------------


def _backlog(conn, *, per_resource: int) -> int:
    """Stale resources and ``per_resource`` pending events each, in bursts like real updates."""
    conn.execute("TRUNCATE catalog_resource_sync_events")
    conn.execute("UPDATE catalog_resources SET name = 'stale'")
    conn.execute(
        """
        INSERT INTO catalog_resource_sync_events (catalog_resource_id, project_id, status, created_at)
        SELECT r.id, r.project_id, 1, now()
        FROM generate_series(1, %s) AS k CROSS JOIN catalog_resources AS r
        ORDER BY k, r.id
        """,
        [per_resource],
    )
    _settle(conn, "catalog_resource_sync_events", "catalog_resources")
    return conn.execute("SELECT count(*) FROM catalog_resource_sync_events").fetchone()[0]


def _check_drained(conn) -> None:
    stale = conn.execute(
        "SELECT count(*) FROM catalog_resources r JOIN projects p ON p.id = r.project_id"
        " WHERE (r.name, r.description, r.visibility_level)"
        " IS DISTINCT FROM (p.name, p.description, p.visibility_level)"
    ).fetchone()[0]
    pending = conn.execute("SELECT count(*) FROM catalog_resource_sync_events WHERE status = 1").fetchone()[0]
    if stale or pending:
        raise RuntimeError(f"not drained: {stale} stale resources, {pending} pending events")


def _drain_with_processor(conn) -> tuple[float, dict]:
    from django.utils import timezone

    from catalog import tasks
    from project.jobs.models import JobRun

    since = timezone.now()
    started = time.perf_counter()
    tasks.process_sync_events.enqueue()
    while conn.execute("SELECT EXISTS (SELECT 1 FROM catalog_resource_sync_events WHERE status = 1)").fetchone()[0]:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    # The runs record their results when they return; wait for them (not timed).
    runs = JobRun.objects.filter(name="catalog.process_sync_events", created_at__gte=since)
    deadline = time.monotonic() + 30
    while runs.filter(status__in=["queued", "running"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    results = [run.result or {} for run in runs]
    return elapsed, {
        "runs": len(results),
        "processed_events": sum(r.get("processed_events", 0) for r in results),
    }


@contextlib.contextmanager
def _schedule_paused() -> Iterator[None]:
    """The every-minute processor run would race the baseline statement: pause it."""
    from django_q.models import Schedule

    from project.jobs.schedules import schedules_sync

    Schedule.objects.filter(name="catalog.process_sync_events").delete()
    try:
        yield
    finally:
        schedules_sync()


def bench_drain(conn, *, rounds: int, per_resource: int) -> dict:
    samples: dict[str, list[float]] = {"processor": [], "baseline": [], "sync_only": []}
    events = 0
    details = []
    for round_ in range(rounds):
        order = ["baseline", "processor", "sync_only"] if round_ % 2 == 0 else ["processor", "baseline", "sync_only"]
        for mode in order:
            events = _backlog(conn, per_resource=per_resource)
            if mode == "processor":
                elapsed, detail = _drain_with_processor(conn)
                details.append(detail)
            else:
                elapsed = _timed(conn, BASELINE_DRAIN if mode == "baseline" else SYNC_ONLY)
            if mode != "sync_only":
                _check_drained(conn)
            samples[mode].append(elapsed)
            _log(f"drain round {round_ + 1}/{rounds} {mode}: {elapsed:.3f} s")
    conn.execute("TRUNCATE catalog_resource_sync_events")
    processor, baseline, sync_only = (statistics.median(samples[m]) for m in ("processor", "baseline", "sync_only"))
    return {
        "pending_events": events,
        "catalog_resources": conn.execute("SELECT count(*) FROM catalog_resources").fetchone()[0],
        "batch_size": int(os.environ.get("CATALOG_SYNC_BATCH_SIZE", "1000")),
        "rounds": rounds,
        "processor_through_cluster_s": round(processor, 3),
        "baseline_one_statement_s": round(baseline, 3),
        "ratio": round(processor / baseline, 3),
        "goal_ratio_at_most": 2.0,
        "sync_only_update_s": round(sync_only, 3),
        "ratio_to_sync_only": round(processor / sync_only, 3),
        "samples_s": {mode: [round(v, 3) for v in values] for mode, values in samples.items()},
        "processor_runs": details,
    }


# --- 3. staleness -------------------------------------------------------------------------


def _staleness(*, label: str, rate: float, seconds: float, direct: bool, wait: float) -> dict:
    """Rename ``rate * seconds`` distinct projects at a steady rate; time commit → visible."""
    with _connect() as conn:
        pairs = conn.execute("SELECT id, project_id FROM catalog_resources").fetchall()
    count = int(rate * seconds)
    targets = random.Random(7).sample(pairs, count)
    outstanding: dict[int, tuple[str, float]] = {}
    lock = threading.Lock()
    staleness: list[float] = []
    writer_done = threading.Event()
    behind: list[float] = []

    def write() -> None:
        with _connect() as conn:
            start = time.perf_counter()
            for number, (resource_id, project_id) in enumerate(targets):
                due = start + number / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                else:
                    behind.append(-pause)
                name = f"staleness {label} {number}"
                if direct:
                    conn.execute("UPDATE catalog_resources SET name = %s WHERE id = %s", [name, resource_id])
                else:
                    conn.execute("UPDATE projects SET name = %s WHERE id = %s", [name, project_id])
                committed = time.perf_counter()
                with lock:
                    outstanding[resource_id] = (name, committed)
        writer_done.set()

    def poll() -> None:
        with _connect() as conn:
            deadline = None
            while True:
                with lock:
                    wanted = dict(outstanding)
                if wanted:
                    rows = conn.execute(
                        "SELECT id, name FROM catalog_resources WHERE id = ANY(%s)", [list(wanted)]
                    ).fetchall()
                    seen = time.perf_counter()
                    with lock:
                        for resource_id, name in rows:
                            if name == wanted[resource_id][0]:
                                staleness.append(seen - wanted[resource_id][1])
                                outstanding.pop(resource_id, None)
                elif writer_done.is_set():
                    return
                if writer_done.is_set():
                    deadline = deadline or time.perf_counter() + wait
                    if time.perf_counter() > deadline:
                        return
                time.sleep(0.005)

    threads = [threading.Thread(target=write), threading.Thread(target=poll)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "updates": count,
        "observed": len(staleness),
        "never_seen": len(outstanding),
        "writer_behind_schedule_max_s": round(max(behind, default=0.0), 3),
        **_percentiles(staleness),
    }


def bench_staleness(conn, *, rate: float, seconds: float, cron_baseline: bool) -> dict:
    from tests.support.catalog import ListenerProcess

    conn.execute("TRUNCATE catalog_resource_sync_events")
    result: dict = {"rate_per_s": rate, "seconds": seconds}
    _log("staleness: measuring floor (the writer renames resources directly)")
    result["baseline_measuring_floor_s"] = _staleness(label="floor", rate=rate, seconds=seconds, direct=True, wait=5)
    listener = ListenerProcess().start()
    try:
        _log("staleness: cluster + listener")
        result["with_listener_s"] = _staleness(label="listener", rate=rate, seconds=seconds, direct=False, wait=30)
    finally:
        listener.stop()
    result["goal_p99_at_most_s"] = 2.0
    if cron_baseline:
        _log("staleness: cluster without listener (the every-minute schedule only); up to ~2 min")
        result["baseline_schedule_only_s"] = _staleness(
            label="schedule", rate=rate, seconds=seconds, direct=False, wait=150
        )
    return result


# --- main ---------------------------------------------------------------------------------


def _section(name: str, run: Callable[[], dict]) -> dict:
    started = time.perf_counter()
    figures = run()
    figures["bench_seconds"] = round(time.perf_counter() - started, 1)
    _log(f"{name} done in {figures['bench_seconds']} s")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", type=int, default=100_000)
    parser.add_argument("--resource-every", type=int, default=10, help="every Nth project is a catalog resource")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the trigger figure")
    parser.add_argument("--drain-rounds", type=int, default=3)
    parser.add_argument("--events-per-resource", type=int, default=10)
    parser.add_argument("--single-rows", type=int, default=200, help="single-row updates per block (6 blocks)")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--broker", choices=["orm", "redis"], default=None)
    parser.add_argument("--skip-cron-baseline", action="store_true")
    args = parser.parse_args()
    if args.broker:
        os.environ["JOBS_BROKER"] = args.broker

    with scratch_database("catalog_bench"):
        import logging

        from django.conf import settings
        from django.db import connection

        from tests.support.cluster import ClusterProcess

        logging.getLogger("django-q").setLevel(logging.WARNING)
        with _connect() as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
            _log(f"seeding {args.projects} projects, every {args.resource_every}th a catalog resource")
            _seed(conn, projects=args.projects, every=args.resource_every)
            output: dict = {
                "benchmark": "catalog",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "postgresql": server},
                "broker": settings.JOBS_BROKER,
            }
            output["trigger_overhead"] = _section(
                "trigger overhead", lambda: bench_trigger(conn, rounds=args.rounds, single_rows=args.single_rows)
            )
            connection.close()
            cluster = ClusterProcess(broker=settings.JOBS_BROKER, workers=settings.Q_WORKERS).start()
            try:
                with _schedule_paused():
                    output["backlog_drain"] = _section(
                        "backlog drain",
                        lambda: bench_drain(conn, rounds=args.drain_rounds, per_resource=args.events_per_resource),
                    )
                output["staleness"] = _section(
                    "staleness",
                    lambda: bench_staleness(
                        conn, rate=args.rate, seconds=args.seconds, cron_baseline=not args.skip_cron_baseline
                    ),
                )
            finally:
                cluster.stop()
    print(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()
