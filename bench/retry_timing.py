"""How late do delayed retries start? The toolkit against django-q2's own scheduler.

Enqueues jobs that fail their first attempt and ask to be retried after 1-4 s, on a real
cluster with the production settings (``project.settings``: poll interval, scheduler, no
success rows kept), and measures lateness = actual start of the retry minus its due time
(both recorded by the toolkit on the run). Baseline, same run, same cluster: django-q2
one-off ``Schedule`` rows with the same delays, whose task records when it started
(``baseline_fired``: django-q2 keeps no success row); lateness is that start minus the
schedule's ``next_run``.

Usage: DATABASE_URL=postgres://… .venv/bin/python bench/retry_timing.py [--jobs 40] [--broker orm|redis]
CI smoke run: --jobs 4 --tick-baseline (django-q2's scheduler is called by the benchmark as
soon as the schedules are due, instead of waiting up to 30 s for the cluster's own tick: the
baseline's figures then mean nothing, but its whole path runs).
Uses a scratch database on the server of DATABASE_URL (or the embedded one), dropped after.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASELINE_TABLE = "bench_retry_baseline"


def baseline_fired(index: int) -> None:
    """The baseline's task, run by the cluster from a one-off ``Schedule``: records when it
    started (the cluster imports it as ``bench.retry_timing.baseline_fired``)."""
    from django.db import connection
    from django.utils import timezone

    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {BASELINE_TABLE} (index, fired_at) VALUES (%s, %s)", [index, timezone.now()])


def _environment(broker: str) -> None:
    """The production settings, plus the probe jobs and a queue of this run's own."""
    from bench._support import production_settings

    production_settings()
    os.environ.setdefault("LOG_LEVEL", "warning")
    os.environ["JOBS_EXTRA_MODULES"] = "tests.support.jobs"
    os.environ["Q_NAME"] = f"bench-retry-{os.getpid()}"
    os.environ["JOBS_BROKER"] = broker  # this process enqueues where the cluster pulls


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": round(statistics.median(ordered), 3), "p95": pick(0.95), "max": round(ordered[-1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--broker", choices=["orm", "redis"], default="orm")
    parser.add_argument(
        "--tick-baseline",
        action="store_true",
        help="call django-q2's scheduler once the baseline schedules are due (CI smoke runs)",
    )
    args = parser.parse_args()
    if args.broker == "redis" and not os.environ.get("REDIS_URL"):
        sys.exit("--broker redis needs REDIS_URL")
    _environment(args.broker)

    from bench._support import scratch_database

    # Django's set-up and migrations may print; stdout carries the JSON only.
    with contextlib.redirect_stdout(sys.stderr), scratch_database("bench_retry"):
        from django.db import connection
        from django.utils import timezone
        from django_q.models import Schedule

        from project.jobs.models import JobRun
        from tests.support import jobs as probes
        from tests.support.cluster import ClusterProcess, wait_for

        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {BASELINE_TABLE} (index integer PRIMARY KEY, fired_at timestamptz NOT NULL)")
        cluster = ClusterProcess(broker=args.broker, workers=4, env={"DJANGO_SETTINGS_MODULE": "project.settings"})
        cluster.start(timeout=60)
        try:
            rng = random.Random(7)
            delays = [rng.choice([1, 2, 3, 4]) for _ in range(args.jobs)]
            now = timezone.now()
            for index, delay in enumerate(delays):
                Schedule.objects.create(
                    name=f"baseline-{index}",
                    func="bench.retry_timing.baseline_fired",
                    args=repr((index,)),
                    schedule_type=Schedule.ONCE,
                    repeats=1,
                    next_run=now + timedelta(seconds=delay),
                )
            runs = []
            for delay in delays:
                runs.append(probes.fail_once.enqueue(delay=delay))
                time.sleep(0.05)  # spread the load as real failures would be
            ids = [run.pk for run in runs]
            try:
                wait_for(
                    lambda: JobRun.objects.filter(pk__in=ids, status="succeeded").count() == len(ids),
                    timeout=120,
                    message="retries did not all run",
                )
            except AssertionError:
                for run in JobRun.objects.filter(pk__in=ids).exclude(status="succeeded"):
                    print(run.pk, run.status, run.attempt, run.due_at, run.error_code, run.history, file=sys.stderr)
                print(cluster.output()[-3000:], file=sys.stderr)
                raise

            def fired() -> int:
                with connection.cursor() as cursor:
                    cursor.execute(f"SELECT count(*) FROM {BASELINE_TABLE}")
                    return cursor.fetchone()[0]

            if args.tick_baseline:
                from django_q.scheduler import scheduler

                wait_for(lambda: timezone.now() > now + timedelta(seconds=max(delays)), timeout=10)
                scheduler()
            try:
                # django-q2's scheduler runs about every 30 s in the cluster's sentinel.
                wait_for(lambda: fired() == len(delays), timeout=120, interval=0.5)
            except AssertionError:
                print(cluster.output()[-3000:], file=sys.stderr)
                raise AssertionError(f"baseline schedules did not all run ({fired()} of {len(delays)})") from None
            toolkit = []
            for run in JobRun.objects.filter(pk__in=ids):
                retry = run.history[-1]
                started = datetime.fromisoformat(retry["started_at"])
                toolkit.append((started - datetime.fromisoformat(retry["due_at"])).total_seconds())
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT index, fired_at FROM {BASELINE_TABLE}")
                baseline = [
                    (fired_at - (now + timedelta(seconds=delays[index]))).total_seconds()
                    for index, fired_at in cursor.fetchall()
                ]
        finally:
            cluster.stop()

    from django.conf import settings

    print(
        json.dumps(
            {
                "benchmark": "retry_timing",
                "broker": args.broker,
                "jobs": args.jobs,
                "delays_s": "1-4",
                "q_poll_s": settings.Q_POLL,
                "toolkit_retry_lateness_s": _percentiles(toolkit),
                "baseline_django_q2_schedule_lateness_s": _percentiles(baseline),
                "baseline_ticked_by": "the benchmark (smoke run)" if args.tick_baseline else "the cluster's scheduler",
                "goal": "retry starts within 1 s after its due time",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
