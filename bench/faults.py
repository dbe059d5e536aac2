"""How long until work moves on after a fault? Our supervised cluster against stock django-q2's.

Each scenario runs on a real cluster with the production settings (``project.settings``,
ORM broker unless ``--broker redis``, 2 workers) on a scratch database, and measures the recovery time: from the
fault (or the restart after it) until every affected run has moved on again. The
baseline, in the same run, is django-q2's own sentinel (``django_q.cluster.Cluster``, as
``manage.py qcluster`` ran before), with everything else equal. A scenario that has not
recovered after ``--cap`` seconds is reported as ``null`` with ``"recovered": false``.

* ``killed_worker``: SIGKILL the worker running a job; until its next attempt starts.
* ``killed_lock_holder``: SIGKILL the idle worker that waits on the task queue (it holds
  the queue's read lock), then enqueue 4 jobs; until all have run.
* ``killed_cluster``: SIGKILL the whole cluster while two jobs run and 3 wait pulled,
  restart it at once; from the restart command until all 5 have run.
* ``killed_beside_another``: two clusters on the queue; SIGKILL one whole while two jobs
  run on it and 3 wait pulled; from the kill until the other has run the 3 (no baseline:
  stock django-q2's sentinel uses the same brokers; ``--broker redis`` for Redis).
* ``killed_in_shared_message``: six runs enqueued together go out as two messages of
  three (``JOBS_BATCH_MAX``); SIGKILL the worker running the first run of one of them, a
  60 s one; from the kill until the two runs after it in its message have run.
* ``group_sigterm``: SIGTERM to the whole process group while a 2 s job runs; until the
  cluster exits (and whether the job finished).
* ``database_outage``: new connections refused and open ones dropped for ``--outage`` s
  while 8 one-second jobs run; the extra time the batch took against the same batch
  without an outage, and the attempts charged.

Usage: DATABASE_URL=postgres://… .venv/bin/python bench/faults.py [--cap 120] [--only killed_worker,…]
    [--broker orm|redis]
CI smoke run: --no-baseline --fast (our cluster only, with a short stall limit and lease).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STOCK = "import django; django.setup(); from django_q.cluster import Cluster; Cluster().start()"
SCENARIOS = (
    "killed_worker",
    "killed_lock_holder",
    "killed_cluster",
    "killed_beside_another",
    "killed_in_shared_message",
    "group_sigterm",
    "database_outage",
)
#: Scenarios with no stock baseline: stock django-q2's sentinel uses the same brokers.
NO_BASELINE = ("killed_beside_another",)


def _environment() -> None:
    from bench._support import production_settings

    production_settings()
    os.environ.setdefault("LOG_LEVEL", "warning")
    os.environ["JOBS_EXTRA_MODULES"] = "bench._fault_jobs"
    os.environ["JOBS_BROKER"] = "orm"
    os.environ["Q_WORKERS"] = "2"
    os.environ["WEB_PROBE_PORT"] = "0"


class Cluster:
    """A cluster subprocess in its own process group: ours (``manage.py qcluster``) or
    stock django-q2's sentinel."""

    def __init__(self, kind: str, log: Path) -> None:
        command = [sys.executable, "manage.py", "qcluster"] if kind == "ours" else [sys.executable, "-c", STOCK]
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=os.environ.copy(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _wait(lambda: len(self.workers()) >= 2 and self.process.poll() is None, cap=60, what="cluster start")

    def workers(self) -> list:
        import psutil

        found = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    title = " ".join(child.cmdline())
                    if "processing" in title or title.rstrip().endswith("idle"):
                        found.append(child)
        return found

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _wait(predicate: Callable[[], object], *, cap: float, what: str = "") -> float | None:
    """Seconds until ``predicate()`` holds, or None after ``cap`` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < cap:
        if predicate():
            return round(time.monotonic() - started, 2)
        time.sleep(0.05)
    if what:
        raise RuntimeError(f"{what} took longer than {cap} s")
    return None


def _runs(ids: list[int]):
    from project.jobs.models import JobRun

    return JobRun.objects.filter(pk__in=ids)


def _all(ids: list[int], **conditions) -> bool:
    return _runs(ids).filter(**conditions).count() == len(ids)


def _reset() -> None:
    from django.db import connection
    from django_q.models import OrmQ

    from project.jobs.models import JobRun

    JobRun.objects.all().delete()
    OrmQ.objects.all().delete()
    connection.close()


def _result(seconds: float | None, **extra) -> dict:
    return {"seconds": seconds, "recovered": seconds is not None, **extra}


def killed_worker(kind: str, cap: float, log: Path) -> dict:
    from bench import _fault_jobs as fault_jobs

    cluster = Cluster(kind, log)
    try:
        run = fault_jobs.sleep.enqueue(seconds=60)
        _wait(lambda: _all([run.pk], status="running"), cap=60, what="job start")
        (worker,) = [w for w in cluster.workers() if "processing" in " ".join(w.cmdline())]
        worker.kill()
        seconds = _wait(lambda: _all([run.pk], attempt=2, status__in=["running", "succeeded"]), cap=cap)
        return _result(seconds)
    finally:
        cluster.stop()
        _reset()


def killed_lock_holder(kind: str, cap: float, log: Path) -> dict:
    from bench import _fault_jobs as fault_jobs

    cluster = Cluster(kind, log)
    try:

        def holder():
            for process in cluster.workers():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{process.pid}/wchan").read_text().strip() == "anon_pipe_read":
                        return process
            return None

        _wait(holder, cap=30, what="a worker waiting on the queue")
        holder().kill()
        time.sleep(1)
        started = time.monotonic()
        ids = [fault_jobs.sleep.enqueue(seconds=0).pk for _ in range(4)]
        done = _wait(lambda: _all(ids, status="succeeded"), cap=cap)
        return _result(None if done is None else round(time.monotonic() - started, 2))
    finally:
        cluster.stop()
        _reset()


def _busy_with_pulled() -> tuple[list[int], list[int]]:
    """Two 60 s runs on the cluster's two workers, then three more that its pusher pulls
    while they are busy: (running, waiting)."""
    from bench import _fault_jobs as fault_jobs

    running = [fault_jobs.sleep.enqueue(seconds=60).pk for _ in range(2)]
    _wait(lambda: _all(running, status="running"), cap=60, what="jobs start")
    waiting = [fault_jobs.sleep.enqueue(seconds=0).pk for _ in range(3)]
    time.sleep(1)
    return running, waiting


def killed_cluster(kind: str, cap: float, log: Path) -> dict:
    cluster = Cluster(kind, log)
    try:
        running, waiting = _busy_with_pulled()
    finally:
        cluster.kill()
    started = time.monotonic()
    restarted = Cluster(kind, log)
    try:
        ids = [*running, *waiting]
        done = _wait(lambda: _all(ids, status="succeeded"), cap=cap)
        return _result(None if done is None else round(time.monotonic() - started, 2))
    finally:
        restarted.stop()
        _reset()


def killed_beside_another(kind: str, cap: float, log: Path) -> dict:
    """Two clusters on the queue; one is killed whole holding messages it had pulled (its
    workers busy). Seconds from the kill until the other has run them."""
    survivor = None
    cluster = Cluster(kind, log)
    try:
        _, waiting = _busy_with_pulled()
        survivor = Cluster(kind, log)
    finally:
        cluster.kill()
    started = time.monotonic()
    try:
        done = _wait(lambda: _all(waiting, status="succeeded"), cap=cap)
        return _result(None if done is None else round(time.monotonic() - started, 2))
    finally:
        if survivor is not None:
            survivor.stop()
        _reset()


def killed_in_shared_message(kind: str, cap: float, log: Path) -> dict:
    from bench import _fault_jobs as fault_jobs

    cluster = Cluster(kind, log)
    try:
        runs = fault_jobs.sleep.enqueue_many([{"seconds": 60}, *({"seconds": 0} for _ in range(5))])
        ids = [run.pk for run in runs]
        # The other message's three runs done, the 60 s run started: its worker is the busy one.
        _wait(lambda: _all(ids[:1], status="running") and _all(ids[3:], status="succeeded"), cap=60, what="start")
        (worker,) = [w for w in cluster.workers() if "processing" in " ".join(w.cmdline())]
        worker.kill()
        started = time.monotonic()
        done = _wait(lambda: _all(ids[1:3], status="succeeded"), cap=cap)
        return _result(None if done is None else round(time.monotonic() - started, 2))
    finally:
        cluster.stop()
        _reset()


def group_sigterm(kind: str, cap: float, log: Path) -> dict:
    from bench import _fault_jobs as fault_jobs

    cluster = Cluster(kind, log)
    try:
        run = fault_jobs.sleep.enqueue(seconds=2)
        _wait(lambda: _all([run.pk], status="running"), cap=60, what="job start")
        os.killpg(cluster.process.pid, signal.SIGTERM)
        seconds = _wait(lambda: cluster.process.poll() is not None, cap=cap)
        finished = _all([run.pk], status="succeeded")
        return _result(seconds, exit_code=cluster.process.returncode, job_finished=finished)
    finally:
        cluster.kill()
        _reset()


def _blocked(blocked: bool) -> None:
    import psycopg
    from django.conf import settings

    name = settings.DATABASES["default"]["NAME"]
    server = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if blocked else "true"}')
        if blocked:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )


def database_outage(kind: str, cap: float, log: Path, outage: float) -> dict:
    from django.db import connection

    from bench import _fault_jobs as fault_jobs

    def batch(fault: bool) -> tuple[float | None, int]:
        ids = [fault_jobs.sleep.enqueue(seconds=1, every_attempt=True).pk for _ in range(8)]
        started = time.monotonic()
        if fault:
            _wait(lambda: _runs(ids).filter(status="running").exists(), cap=60, what="job start")
            connection.close()
            _blocked(True)
            try:
                time.sleep(outage)
            finally:
                _blocked(False)
        done = _wait(lambda: _all(ids, status="succeeded"), cap=cap)
        charged = sum(len([h for h in run.history if h["outcome"] != "succeeded"]) for run in _runs(ids))
        return (None if done is None else round(time.monotonic() - started, 2)), charged

    cluster = Cluster(kind, log)
    try:
        calm, _ = batch(False)
        faulted, charged = batch(True)
        delay = None if faulted is None or calm is None else round(faulted - calm, 2)
        return _result(delay, calm_batch_s=calm, faulted_batch_s=faulted, attempts_charged=charged)
    finally:
        cluster.stop()
        _reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap", type=float, default=120, help="seconds after which a scenario counts as stuck")
    parser.add_argument("--outage", type=float, default=5, help="seconds the database refuses connections")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--no-baseline", action="store_true", help="skip stock django-q2 (smoke runs)")
    parser.add_argument("--fast", action="store_true", help="short stall and lease (smoke runs; not the defaults)")
    parser.add_argument("--broker", choices=("orm", "redis"), default="orm", help="redis needs REDIS_URL")
    args = parser.parse_args()
    _environment()
    os.environ["JOBS_BROKER"] = args.broker
    if args.fast:
        os.environ.update({"JOBS_STALL_AFTER": "3", "JOBS_MESSAGE_LEASE": "5"})
    from bench._support import scratch_database

    log = Path(tempfile.gettempdir()) / f"bench-faults-{os.getpid()}.log"
    results: dict[str, dict] = {}
    with scratch_database("bench_faults"):
        from django.conf import settings

        for name in args.only.split(","):
            results[name] = {}
            for kind in ("ours",) if args.no_baseline or name in NO_BASELINE else ("ours", "stock"):
                function = globals()[name]
                extra = {"outage": args.outage} if name == "database_outage" else {}
                results[name][kind] = function(kind, args.cap, log, **extra)
        config = {
            "workers": 2,
            "broker": args.broker,
            "cap_s": args.cap,
            "JOBS_LOST_AFTER": settings.JOBS_LOST_AFTER,
            "JOBS_MESSAGE_LEASE": settings.JOBS_MESSAGE_LEASE,
            "JOBS_STALL_AFTER": settings.JOBS_STALL_AFTER,
            "Q_RETRY": settings.Q_CLUSTER["retry"],
            "JOBS_REPUSH_AFTER": settings.JOBS_REPUSH_AFTER,
        }
    print(json.dumps({"benchmark": "faults", "config": config, "log": str(log), "results": results}, indent=2))


if __name__ == "__main__":
    main()
