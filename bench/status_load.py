"""Export status under load: what GitLab clients poll, against the real gunicorn server.

The production web server (``gunicorn project.wsgi`` with ``project/gunicorn_conf.py``, as
``make run`` starts it: ``--workers`` processes of ``WEB_THREADS`` threads, access log on)
on a scratch database seeded with ``--users`` maintainers, each with a token and a project
of their own, a third each with no export, a queued export, or a finished archive.

A bounded asyncio client (one keep-alive connection per client, a request as soon as the
previous answer arrived) measures, side by side and alternating (``--rounds``):

* ``liveness``: ``GET /-/liveness`` with ``--clients`` clients: the floor, a Django view
  through the same middleware that reads nothing;
* ``status``: ``GET /api/v4/projects/:id/export`` with the same number of clients, each
  polling its own project with its own token.

Requests per second (of the median round, and the mean), p50 / p90 / p99 / max latency (of
the worst round), the ratio of the medians status / liveness, each web worker's CPU during
a run (a round whose keep-alive connections landed mostly on one worker runs at that worker's
rate alone), and the queries one status request runs (counted in this process with Django's test client on the
same settings and database, after one warm-up request; ``CONN_HEALTH_CHECKS``'s ``SELECT 1``
bypasses Django's cursor wrapper, so it is reported apart).

Then, unless ``--skip-cluster``: a real ``qcluster`` (``--cluster-workers``, production
settings, ORM broker) drains ``--jobs`` no-op jobs (``probe.noop``) alone, then again while
``--pollers`` clients poll the status once a second each (GitLab clients' polling), round
after round, each drain on freshly vacuumed queue and run tables; the throughput drop is
the goal's "clusters' throughput with 200 pollers".

Usage:
    DATABASE_URL=postgres://… .venv/bin/python bench/status_load.py \\
        [--clients 50] [--seconds 10] [--rounds 3] [--workers 2] [--pollers 200] [--jobs 2000]
    CI smoke run: --users 6 --clients 3 --seconds 0.5 --warmup 0.2 --rounds 1 --pollers 5 --jobs 20

Uses a scratch database ``bench_status_<pid>`` on the server of DATABASE_URL, dropped
afterwards. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._support import scratch_database  # noqa: E402

# --- environment --------------------------------------------------------------------------


def _environment(args: argparse.Namespace) -> None:
    """Production settings, with the no-op probe declared and a queue of this run's own."""
    if not os.environ.get("DATABASE_URL"):
        sys.exit("set DATABASE_URL (the benchmark creates and drops a scratch database on that server)")
    from bench._support import production_settings

    production_settings()
    os.environ["JOBS_EXTRA_MODULES"] = "tests.support.jobs"
    os.environ["Q_NAME"] = f"bench-status-{os.getpid()}"
    os.environ["Q_SCHEDULER"] = "0"
    os.environ["JOBS_BROKER"] = "orm"
    os.environ["LOG_LEVEL"] = args.log_level
    os.environ["EXTERNAL_URL"] = "http://127.0.0.1"
    os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")


# --- data ---------------------------------------------------------------------------------


def _seed(users: int) -> list[tuple[int, str, str]]:
    """One maintainer per client with a token and a project of their own: a third with no
    export, a third with a queued one, a third with a finished archive. Returns
    (project id, token, expected status) per client."""
    from datetime import timedelta

    from django.utils import timezone

    from exports.models import ProjectExportArchive, ProjectExportJob
    from project import services
    from project.models import AccessLevel, ProjectMember, User

    now = timezone.now()
    owner = User.objects.create_user(username="bench-owner", password=None)
    seeded = []
    for index in range(users):
        user = User.objects.create_user(username=f"bench-{index}", password=None)
        project = services.project_create(
            namespace_path="bench", path=f"p{index}", name=f"Project {index}", owner=owner, description="bench"
        )
        ProjectMember.objects.create(project=project, user=user, access_level=AccessLevel.MAINTAINER)
        _, token = services.access_token_create(user=user, name="bench", scopes=["api"])
        kind = index % 3
        if kind == 1:
            ProjectExportJob.objects.create(project=project, user=user, relations_total=4)
            expected = "queued"
        elif kind == 2:
            job = ProjectExportJob.objects.create(
                project=project, user=user, status="finished", relations_total=4, relations_done=4, finished_at=now
            )
            ProjectExportArchive.objects.create(
                project=project,
                user=user,
                job=job,
                file=f"exports/{project.pk}/{user.pk}/bench.tar.gz",
                filename="bench_export.tar.gz",
                size=1234,
                sha256="0" * 64,
                created_at=now,
                expires_at=now + timedelta(hours=24),
            )
            expected = "finished"
        else:
            expected = "none"
        seeded.append((project.pk, token, expected))
    return seeded


def _queries_per_status_request(project_id: int, token: str) -> dict:
    """The statements one authenticated status request sends through Django's cursor, after
    a warm-up request (the token's ``last_used_at`` is written at most once a minute)."""
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_PRIVATE_TOKEN=token, HTTP_HOST="127.0.0.1", REMOTE_ADDR="127.0.0.1")
    path = f"/api/v4/projects/{project_id}/export"
    assert client.get(path).status_code == 200
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content
    return {
        "statements": len(captured.captured_queries),
        "sql": [query["sql"][:160] for query in captured.captured_queries],
        "conn_health_checks": settings.DATABASES["default"].get("CONN_HEALTH_CHECKS", False),
    }


# --- the web server -----------------------------------------------------------------------


class WebServer:
    """gunicorn as ``make run`` starts it (``tests.support.web``), on the scratch database
    with the production settings; its access log (on, as in production) goes to a file."""

    def __init__(self, *, workers: int, threads: int) -> None:
        from tests.support.web import WebServerProcess

        self.metrics_dir = tempfile.mkdtemp(prefix="bench-status-metrics-")
        self.server = WebServerProcess(
            broker="orm",
            queue=os.environ["Q_NAME"],
            workers=workers,
            threads=threads,
            env={
                "DJANGO_SETTINGS_MODULE": "project.settings",
                "DATABASE_URL": os.environ["DATABASE_URL"],
                "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            },
        )
        self.port = self.server.port

    def start(self) -> WebServer:
        self.server.start()
        return self

    def stop(self) -> None:
        import shutil

        self.server.stop(timeout=30)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(self.server.log.name)


# --- the HTTP client ----------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        """Send ``raw``, read the whole answer; its status code."""
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.writer.write(raw)
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed by the server")
                status = int(status_line.split(b" ", 2)[1])
                length, close = 0, False
                while True:
                    line = await self.reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if length:
                    await self.reader.readexactly(length)
                if close:
                    self.close()
                return status
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _request(path: str, token: str | None) -> bytes:
    headers = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        headers.append(f"PRIVATE-TOKEN: {token}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def _summary(latencies: list[float], errors: int, seconds: float) -> dict:
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * _percentile(latencies, 0.50), 1),
        "p90_ms": round(1000 * _percentile(latencies, 0.90), 1),
        "p99_ms": round(1000 * _percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies, default=float("nan")), 1),
    }


async def _closed_loop(port: int, requests: list[bytes], *, seconds: float, warmup: float) -> dict:
    """``len(requests)`` clients, each sending its request again as soon as the answer came,
    for ``warmup`` + ``seconds``; only the last ``seconds`` count."""
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(raw: bytes) -> None:
        nonlocal errors
        connection = Connection(port)
        try:
            while True:
                sent = loop.time()
                if sent >= stop_at:
                    return
                try:
                    status = await connection.request(raw)
                except OSError:
                    status = 0
                done = loop.time()
                if sent >= measure_from:
                    if status == 200:
                        latencies.append(done - sent)
                    else:
                        errors += 1
        finally:
            connection.close()

    await asyncio.gather(*(client(raw) for raw in requests))
    return _summary(latencies, errors, seconds)


class Pollers:
    """``len(requests)`` clients polling once a second each (open loop: a client whose answer
    takes longer than a second sends its next request at once), in a thread of its own."""

    def __init__(self, port: int, requests: list[bytes]) -> None:
        import threading

        self.port, self.requests = port, requests
        self.latencies: list[float] = []
        self.errors = 0
        self.started = self.stopped = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import random

        loop = asyncio.get_running_loop()

        async def client(raw: bytes) -> None:
            connection = Connection(self.port)
            await asyncio.sleep(random.random())
            next_at = loop.time()
            try:
                while not self._stop.is_set():
                    sent = loop.time()
                    try:
                        status = await connection.request(raw)
                    except OSError:
                        status = 0
                    if status == 200:
                        self.latencies.append(loop.time() - sent)
                    else:
                        self.errors += 1
                    next_at += 1.0
                    await asyncio.sleep(max(0.0, next_at - loop.time()))
            finally:
                connection.close()

        await asyncio.gather(*(client(raw) for raw in self.requests))

    def __enter__(self) -> Pollers:
        self.started = time.monotonic()
        self._thread.start()
        time.sleep(1.5)  # every client has sent its first request
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.stopped = time.monotonic()

    def summary(self) -> dict:
        return _summary(self.latencies, self.errors, self.stopped - self.started)


# --- the cluster --------------------------------------------------------------------------


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core), from /proc/stat."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(n) for n in stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(root_pid: int) -> float:
    """CPU seconds of a process and its children (the cluster: sentinel, workers, pusher,
    monitor; not its PostgreSQL backends)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _drain(jobs: int, stall: float = 60, cluster_pid: int | None = None) -> dict:
    """Enqueue ``jobs`` no-op runs in bulk on freshly vacuumed queue and run tables; the
    seconds until all succeeded, and where the machine's CPU went meanwhile: the cluster's
    processes (per job, and in cores) and the whole machine (in cores)."""
    from django.db import connection

    from project.jobs import JobRun
    from tests.support import jobs as probes

    with connection.cursor() as cursor:
        cursor.execute("VACUUM django_q_ormq, job_runs")
    baseline = JobRun.objects.order_by("-id").values_list("id", flat=True).first() or 0
    cluster_before = _tree_cpu_s(cluster_pid) if cluster_pid else 0.0
    machine_before = _machine_busy_s()
    started = time.perf_counter()
    probes.noop.enqueue_many({} for _ in range(jobs))
    done = JobRun.objects.filter(id__gt=baseline, status=JobRun.Status.SUCCEEDED)
    last, moved = -1, time.monotonic()
    while True:
        count = done.count()
        if count >= jobs:
            break
        if count != last:
            last, moved = count, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise RuntimeError(f"the cluster stopped: {count} of {jobs} runs done")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    result = {"jobs": jobs, "seconds": round(seconds, 3), "jobs_per_s": round(jobs / seconds, 1)}
    result["machine_cores"] = round((_machine_busy_s() - machine_before) / seconds, 2)
    if cluster_pid:
        cluster = _tree_cpu_s(cluster_pid) - cluster_before
        result["cluster_cores"] = round(cluster / seconds, 2)
        result["cluster_cpu_ms_per_job"] = round(1000 * cluster / jobs, 3)
    return result


def _cluster_under_pollers(args: argparse.Namespace, port: int, status_requests: list[bytes]) -> dict:
    from unittest import mock

    from django.conf import settings

    from tests.support.cluster import ClusterProcess

    metrics_dir = tempfile.mkdtemp(prefix="bench-status-cluster-metrics-")
    cluster = ClusterProcess(
        broker="orm",
        workers=args.cluster_workers,
        env={
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": os.environ["DATABASE_URL"],
            "Q_SCHEDULER": "0",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        },
    )
    pollers = [status_requests[index % len(status_requests)] for index in range(args.pollers)]
    with mock.patch.object(settings, "JOBS_BROKER", "orm"):
        cluster.start(timeout=90)
        try:
            try:
                _drain(max(1, args.jobs // 10))  # warm-up: every worker has run a job
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{cluster.output()}") from None
            # Alternating, each drain on freshly vacuumed tables: a drain leaves thousands of
            # dead queue rows for the next one's pulls to step over, and the rounds with
            # pollers, run after all the others, paid for every one of them.
            alone, loaded, polled = [], [], []
            pid = cluster.process.pid
            for _ in range(args.rounds):
                alone.append(_drain(args.jobs, cluster_pid=pid))
                with Pollers(port, pollers) as polling:
                    loaded.append(_drain(args.jobs, cluster_pid=pid))
                polled.append(polling)
            alone_rate = sum(each["jobs_per_s"] for each in alone) / len(alone)
            loaded_rate = sum(each["jobs_per_s"] for each in loaded) / len(loaded)
        finally:
            cluster.stop()
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)
    return {
        "workers": args.cluster_workers,
        "alone": alone,
        "with_pollers": loaded,
        "pollers": {
            "clients": args.pollers,
            **_summary(
                [latency for each in polled for latency in each.latencies],
                sum(each.errors for each in polled),
                sum(each.stopped - each.started for each in polled),
            ),
        },
        "throughput_drop_pct": round(100 * (1 - loaded_rate / alone_rate), 1),
        "goal_drop_pct_at_most": 30,
    }


# --- main ---------------------------------------------------------------------------------


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=60, help="maintainers, each with a token and a project")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients of the closed-loop runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time of each closed-loop run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time before each run")
    parser.add_argument("--rounds", type=int, default=3, help="liveness/status pairs (and cluster drains)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("WEB_THREADS", "4")))
    parser.add_argument("--pollers", type=int, default=200, help="clients polling once a second")
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs per cluster drain")
    parser.add_argument("--cluster-workers", type=int, default=2)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--log-level", default="warning", help="LOG_LEVEL of the server and the cluster")
    return parser.parse_args()


def _merge(runs: list[dict], seconds: float) -> dict:
    """Several runs as one: the median run's rate (a run whose clients' keep-alive
    connections landed mostly on one worker serves at that worker's rate alone: its
    ``worker_cpu_s`` shows it), the mean beside it; latencies of the worst run
    (percentiles do not add up)."""
    total = sum(run["requests"] for run in runs)
    return {
        "requests": total,
        "errors": sum(run["errors"] for run in runs),
        "requests_per_s": round(statistics.median(run["requests_per_s"] for run in runs), 1),
        "mean_requests_per_s": round(total / (seconds * len(runs)), 1),
        "p50_ms": max(run["p50_ms"] for run in runs),
        "p90_ms": max(run["p90_ms"] for run in runs),
        "p99_ms": max(run["p99_ms"] for run in runs),
        "max_ms": max(run["max_ms"] for run in runs),
        "runs": runs,
    }


def _workers_cpu(server: WebServer) -> list[float]:
    """CPU seconds used so far by each of the server's worker processes."""
    import psutil

    children = psutil.Process(server.server.process.pid).children()
    return [sum(child.cpu_times()[:2]) for child in sorted(children, key=lambda child: child.pid)]


def _measured(server: WebServer, requests: list[bytes], args: argparse.Namespace) -> dict:
    """One closed-loop run, with the CPU each worker used during it (warm-up included)."""
    before = _workers_cpu(server)
    run = asyncio.run(_closed_loop(server.port, requests, seconds=args.seconds, warmup=args.warmup))
    after = _workers_cpu(server)
    run["worker_cpu_s"] = [round(end - start, 2) for start, end in zip(before, after, strict=False)]
    return run


def main() -> None:
    args = _arguments()
    _environment(args)
    with scratch_database("bench_status"):
        seeded = _seed(max(args.users, 1))
        queries = _queries_per_status_request(*seeded[0][:2])
        from django.db import connections

        connections.close_all()
        server = WebServer(workers=args.workers, threads=args.threads)
        try:
            server.start()
            status_requests = [
                _request(f"/api/v4/projects/{project_id}/export", token) for project_id, token, _ in seeded
            ]
            clients = [status_requests[index % len(status_requests)] for index in range(args.clients)]
            liveness_requests = [_request("/-/liveness", None)] * args.clients
            liveness, status = [], []
            for _ in range(args.rounds):
                liveness.append(_measured(server, liveness_requests, args))
                status.append(_measured(server, clients, args))
            liveness_all, status_all = _merge(liveness, args.seconds), _merge(status, args.seconds)
            result = {
                "benchmark": "status_load",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
                "server": {"workers": args.workers, "threads": args.threads, "clients": args.clients},
                "queries_per_status_request": queries,
                "liveness": liveness_all,
                "status": status_all,
                "status_to_liveness_ratio": round(status_all["requests_per_s"] / liveness_all["requests_per_s"], 3),
                "goals": {
                    "ratio_at_least": 0.5,
                    "queries_at_most": 3,
                    "status_p99_ms_under": 250,
                    "cluster_drop_pct_at_most": 30,
                },
            }
            if not args.skip_cluster:
                result["cluster"] = _cluster_under_pollers(args, server.port, status_requests)
        finally:
            server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
