"""How late do delayed retries start? The toolkit against django-q2's own scheduler.

Enqueues jobs that fail their first attempt and ask to be retried after 1-4 s, on a real
cluster, and measures lateness = actual start of the retry minus its due time (both
recorded by the toolkit on the run). Baseline, same run, same cluster: django-q2 one-off
``Schedule`` rows with the same delays; their lateness is the task's start minus the
schedule's ``next_run``.

Usage: .venv/bin/python bench/retry_timing.py [--jobs 40] [--broker orm|redis]
Uses a scratch database on the server of DATABASE_URL (or the embedded one), dropped after.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("Q_POLL", "0.2")  # the production default, not the test suite's faster poll

from bench._support import scratch_database  # noqa: E402


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
    args = parser.parse_args()
    os.environ["JOBS_BROKER"] = args.broker  # this process enqueues where the cluster pulls

    with scratch_database("bench_retry"):
        from django.utils import timezone
        from django_q.models import Schedule, Success

        from project.jobs.models import JobRun
        from tests.support import jobs as probes
        from tests.support.cluster import ClusterProcess, wait_for

        logging.getLogger("django-q").setLevel(logging.WARNING)  # one line per enqueue otherwise
        cluster = ClusterProcess(broker=args.broker, workers=4).start()
        try:
            rng = random.Random(7)
            delays = [rng.choice([1, 2, 3, 4]) for _ in range(args.jobs)]
            now = timezone.now()
            for index, delay in enumerate(delays):
                Schedule.objects.create(
                    name=f"baseline-{index}",
                    func="time.time",
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
            wait_for(
                lambda: Success.objects.filter(group__startswith="baseline-").count() == len(delays),
                timeout=120,
                interval=0.5,
                message="baseline schedules did not all run",
            )
            toolkit = []
            for run in JobRun.objects.filter(pk__in=ids):
                retry = run.history[-1]
                started = datetime.fromisoformat(retry["started_at"])
                toolkit.append((started - datetime.fromisoformat(retry["due_at"])).total_seconds())
            baseline = []
            for task in Success.objects.filter(group__startswith="baseline-"):
                intended = now + timedelta(seconds=delays[int(task.group.split("-")[1])])
                baseline.append((task.stopped - intended).total_seconds())
        finally:
            cluster.stop()

    print(
        json.dumps(
            {
                "benchmark": "retry_timing",
                "broker": args.broker,
                "jobs": args.jobs,
                "delays_s": "1-4",
                "q_poll_s": float(os.environ["Q_POLL"]),
                "toolkit_retry_lateness_s": _percentiles(toolkit),
                "baseline_django_q2_schedule_lateness_s": _percentiles(baseline),
                "goal": "retry starts within 1 s after its due time",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
