"""CPU a worker spends on one empty run, by message size, against bare round trips.

A worker executes a message of runs with ``project.jobs.runner.execute_many``: it claims
the first run, then records each success in the statement that claims the next run, and
the last one's on its own; so a message of n runs costs n + 1 statements, each committed.
This script times that in this process, with no cluster around it: the toolkit's
``probe.noop`` runs (``tests/support/jobs.py``) on the production settings (JSON log lines
at INFO, their stream ``os.devnull``; metrics through ``PROMETHEUS_MULTIPROC_DIR``), in
messages of 1, 5 and 20 runs, in CPU (``time.process_time``) and wall time per run.

The baselines, in alternating rounds of the same run, on the same server: psycopg alone
making one round trip per call, prepared, in autocommit as the worker does:

* ``select``: ``SELECT %s`` (nothing to do on the server, nothing to commit);
* ``committed_update``: an ``UPDATE`` of one row of a table of its own, committed (what
  every statement of the worker pays at least: a WAL flush, which the process waits for);
* ``select_sleeping``: ``SELECT pg_sleep(0.0005)``, so the process waits as long as it does
  for a commit, with nothing to commit: what waiting (sleeping, then being woken) costs in
  CPU, apart from the statement.

The drains of ``bench/throughput.py`` put ten such workers on the machine's cores, where a
run costs more CPU than it does here (docs/benchmarks.md).

Usage:
    DATABASE_URL=postgres://… .venv/bin/python bench/worker_run.py [--runs 4000] [--rounds 3] [--sizes 1,5,20]
    CI smoke run: --runs 40 --rounds 1

Works in a scratch database on the server ``DATABASE_URL`` names (created and dropped).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASELINES = {
    "select": "SELECT %s::int",
    "committed_update": "UPDATE bench_worker_run_row SET n = n + %s WHERE id = 1",
    "select_sleeping": "SELECT pg_sleep(0.0005), %s::int",
}


def _setup(metrics_dir: str) -> None:
    from bench._support import production_settings

    production_settings()
    os.environ["JOBS_EXTRA_MODULES"] = "tests.support.jobs"
    os.environ["JOBS_BROKER"] = "orm"
    os.environ["Q_SCHEDULER"] = "0"
    os.environ["Q_NAME"] = f"bench-worker-run-{os.getpid()}"  # a queue nobody serves
    os.environ["LOG_FORMAT"] = "json"
    os.environ["LOG_LEVEL"] = "info"
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir


def _silence_logs() -> None:
    """The configured handler, its stream ``os.devnull``: the lines are formatted and
    written as in production, only not kept."""
    sink = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)


def _messages(size: int, runs: int) -> list[list[tuple[int, int]]]:
    """``runs`` new queued runs of ``probe.noop``, as messages of ``size`` runs."""
    from project.jobs.models import JobRun
    from tests.support import jobs as probes

    before = JobRun.objects.order_by("-id").values_list("id", flat=True).first() or 0
    probes.noop.enqueue_many({} for _ in range(runs))
    pairs = list(JobRun.objects.filter(id__gt=before, status="queued").order_by("id").values_list("id", "attempt"))
    assert len(pairs) == runs, f"{len(pairs)} queued runs, expected {runs}"
    return [pairs[start : start + size] for start in range(0, runs, size)]


def _toolkit(size: int, runs: int) -> dict[str, float]:
    from project.jobs import runner
    from project.jobs.models import JobRun

    messages = _messages(size, runs)
    task = {"id": "bench-worker-run", "group": "probe.noop", "cluster": os.environ["Q_NAME"]}
    cpu, wall = time.process_time(), time.perf_counter()
    for message in messages:
        runner.remember_task_id(None, task=task)  # as django-q2's pre_execute signal does
        runner.execute_many(message)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = JobRun.objects.filter(id__in=[run_id for message in messages for run_id, _ in message], status="succeeded")
    assert done.count() == runs, "not every run succeeded"
    return {"cpu_us_per_run": 1e6 * cpu / runs, "wall_us_per_run": 1e6 * wall / runs}


def _baseline(connection, statement: str, calls: int) -> dict[str, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for number in range(calls):
        connection.execute(statement, [number % 2], prepare=True)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_us_per_call": 1e6 * cpu / calls, "wall_us_per_call": 1e6 * wall / calls}


def _medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(sample[key] for sample in samples), 1) for key in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=4000, help="runs per message size and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--sizes", default="1,5,20", help="runs per message, comma-separated")
    parser.add_argument("--warmup", type=int, default=200, help="runs executed (not measured) first")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL"):
        sys.exit("set DATABASE_URL (the benchmark creates and drops a scratch database on that server)")
    sizes = [int(size) for size in args.sizes.split(",")]
    metrics_dir = tempfile.mkdtemp(prefix="bench-worker-run-metrics-")
    _setup(metrics_dir)
    from bench._support import scratch_database

    try:
        with scratch_database("bench_worker_run") as url:
            import psycopg

            _silence_logs()
            _toolkit(max(sizes), args.warmup)
            bare = psycopg.connect(url, autocommit=True)
            bare.execute("CREATE TABLE bench_worker_run_row (id int PRIMARY KEY, n bigint NOT NULL)")
            bare.execute("INSERT INTO bench_worker_run_row VALUES (1, 0)")
            toolkit: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
            baselines: dict[str, list[dict[str, float]]] = {name: [] for name in BASELINES}
            for _ in range(args.rounds):
                for size in sizes:
                    toolkit[size].append(_toolkit(size, args.runs))
                for name, statement in BASELINES.items():
                    baselines[name].append(_baseline(bare, statement, args.runs))
            bare.close()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    result = {
        "benchmark": "worker_run",
        "runs": args.runs,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "toolkit_by_message_size": {
            str(size): {**_medians(samples), "statements_per_run": round((size + 1) / size, 2)}
            for size, samples in toolkit.items()
        },
        "baseline_round_trips": {name: _medians(samples) for name, samples in baselines.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
