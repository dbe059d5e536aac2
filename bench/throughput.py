"""Throughput and CPU per job of empty jobs: the toolkit against stock django-q2 and procrastinate.

N no-op jobs (default 5,000) per run, on a real consumer started beforehand, one system at a
time, each with the same number of workers (``--workers``, procrastinate's concurrency):

* ``ours``: the toolkit's ``probe.noop`` (``tests/support/jobs.py``) on a real ``qcluster``
  (``tests.support.cluster.ClusterProcess``) with the production settings, with the ORM
  broker and with Redis;
* ``stock``: django-q2 alone: the same cluster settings but django-q2's own
  ``django_q.brokers.orm.ORM`` broker and a plain function enqueued with ``async_task``
  (no toolkit, no run record; django-q2 has no bulk enqueue);
* ``procrastinate``: its worker (``App.run_worker``) in a subprocess on a scratch database
  of its own, psycopg connector, a no-op sync task; its defaults otherwise (jobs are kept,
  as our runs are).

Runs: ``single`` (one enqueue per job, each committed on its own) and ``bulk``
(``enqueue_many`` / ``batch_defer``) while the consumer runs, timed from the first enqueue
until every job is done (its run ``succeeded`` and, with the ORM broker, its message
acknowledged); ``backlog``: the jobs are enqueued to a queue nobody serves, then handed to
the consumer in one statement, and the drain is timed from there.

CPU per job: every process of the cluster (worker, pusher, monitor, sentinel with the
cluster's main process) or procrastinate's worker process, plus the PostgreSQL backends
they opened (found by ``application_name`` in ``pg_stat_activity``), read from /proc with
psutil every 0.1 s by a sampling process of its own, which looks for new processes every
second (``CpuSampler``; its own CPU is reported as ``sampler_cpu_s``). The producer (this
process and its backend while it enqueues) is reported apart; so is the Redis server's
CPU (a shared server: indicative). So is where the producer's wall time went (single and
bulk runs): its thread's and its backend's time on a CPU and runnable but waiting for
one, from ``/proc/…/schedstat`` (``producer_sched_us_per_job``). The queue and record
tables are vacuumed before each run and analyzed with a backlog in them, autovacuum off
meanwhile (see ``System.pin_statistics``).

Start lateness (single and bulk runs): p50, p95 and max of the time from a job's enqueue
to its start, from our runs' ``due_at`` and ``started_at`` and from procrastinate's
``deferred`` and ``started`` events; stock django-q2 keeps no times (``Q_SAVE_LIMIT=-1``).

Ratios: each of our runs' jobs/s and CPU per job over the same kind of run of each
baseline, from the median rounds; and the jobs/s ratios round by round
(``jobs_per_s_ratios_by_round``), which a machine whose speed drifts over a run moves less.

Usage:
    DATABASE_URL=postgres://… REDIS_URL=redis://… .venv/bin/python bench/throughput.py \\
        [--jobs 5000] [--workers 10] [--rounds 1] [--only ours_orm_backlog,stock_orm_backlog,…]
    CI smoke run: --jobs 20 --warmup 0 --workers 1

Uses scratch databases on the server of DATABASE_URL (``bench_throughput_<pid>`` and
``bench_procrastinate_<pid>``), dropped afterwards. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
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

RUNS = (
    "stock_orm_single",
    "stock_orm_backlog",
    "ours_orm_single",
    "ours_orm_bulk",
    "ours_orm_backlog",
    "procrastinate_single",
    "procrastinate_bulk",
    "procrastinate_backlog",
    "ours_redis_single",
    "ours_redis_bulk",
    "ours_redis_backlog",
)
KINDS = ("worker", "pusher", "monitor", "sentinel", "postgresql")
PROCRASTINATE_TASK = "bench.noop"


def noop() -> None:
    """The stock django-q2 task: does nothing (imported by its worker as ``bench.throughput.noop``)."""


# --- environment --------------------------------------------------------------------------


def _environment(args: argparse.Namespace) -> None:
    """Production settings (``project.settings``), with the probes declared and a queue of
    this run's own; no scheduler (the work measured is draining the queue)."""
    if not os.environ.get("DATABASE_URL"):
        sys.exit("set DATABASE_URL (the benchmark creates and drops scratch databases on that server)")
    from bench._support import production_settings

    production_settings()
    os.environ["JOBS_EXTRA_MODULES"] = "tests.support.jobs"
    os.environ["Q_NAME"] = f"bench-throughput-{os.getpid()}"
    os.environ["Q_WORKERS"] = str(args.workers)
    os.environ["Q_SCHEDULER"] = "0"
    if args.log_level:
        os.environ["LOG_LEVEL"] = args.log_level
    # The cluster keeps the broker the run asks for; this process enqueues through the same.
    os.environ.setdefault("JOBS_BROKER", "orm")


def _url(base: str, *, database: str | None = None, application_name: str | None = None) -> str:
    from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

    parts = urlsplit(base)
    query = dict(parse_qsl(parts.query))
    if application_name:
        query["application_name"] = application_name
    path = f"/{database}" if database else parts.path
    return urlunsplit(parts._replace(path=path, query=urlencode(query, quote_via=quote)))


# --- processes ----------------------------------------------------------------------------


class Subprocess:
    """A command of this script in its own process group, its output kept in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="bench-throughput-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *argv],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-5000:]

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited early:\n{self.output()}")
            if ready():
                return
            time.sleep(0.1)
        output = self.output()
        self.stop()
        raise RuntimeError(f"not ready within {timeout} s:\n{output}")

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


def _cluster_kind(title: str) -> str:
    title = title.rstrip()  # setproctitle pads the title with spaces
    if title.endswith(" pusher"):
        return "pusher"
    if title.endswith(" monitor"):
        return "monitor"
    if " processing " in title or title.endswith(" idle"):
        return "worker"
    return "sentinel"  # the sentinel, and the cluster's main process


def _cluster_workers_idle(root_pid: int, workers: int) -> bool:
    import psutil

    titles = []
    for child in psutil.Process(root_pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            titles.append(_cluster_kind(" ".join(child.cmdline())))
    return titles.count("worker") >= workers and "pusher" in titles and "monitor" in titles


class CpuSampler:
    """CPU seconds by process kind over a window: the processes under ``root_pid`` and the
    PostgreSQL backends whose ``application_name`` is ``application_name``. Their CPU is
    read every ``interval`` s; the processes themselves are looked for every ``discover``
    s (the cluster's are long-lived). It samples in a process of its own: in a thread of
    the producer's (before), a scan of every process and a query for each sample took a
    fifth of the producer's turns at the interpreter. A process that ends between samples
    loses at most its last interval; one born and ended between two looks is not seen."""

    def __init__(
        self, *, root_pid: int, application_name: str, kind_of: Callable[[str], str], interval=0.1, discover=1.0
    ):
        self.root_pid = root_pid
        self.application_name = application_name
        self.kind_of = kind_of
        self.interval = interval
        self.discover = discover
        self.seen: dict[int, list] = {}  # pid -> [kind, cpu at first sight or 0.0, last cpu]
        self.found: dict[int, tuple] = {}  # pid -> (psutil.Process, kind)
        self.own_cpu = 0.0  # the sampling process's, for the record
        self.db = None
        self._first = True
        self._next_look = 0.0
        self._process: multiprocessing.Process | None = None
        self._pipe = None

    def _cpu(self, process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def _look(self) -> None:
        import psutil

        found: dict[int, tuple] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.root_pid)
            for process in (root, *root.children(recursive=True)):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                    found[process.pid] = (process, self.kind_of(" ".join(process.cmdline())))
        rows = self.db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [self.application_name]
        ).fetchall()
        for (pid,) in rows:
            with contextlib.suppress(psutil.NoSuchProcess):
                found[pid] = (psutil.Process(pid), "postgresql")
        self.found = found

    def sample(self) -> None:
        import psutil

        if time.monotonic() >= self._next_look:
            self._look()
            self._next_look = time.monotonic() + self.discover
        for process, kind in self.found.values():
            try:
                cpu = self._cpu(process)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            entry = self.seen.get(process.pid)
            if entry is None:
                # Seen at the window's start: count from here; born later: from zero.
                self.seen[process.pid] = [kind, cpu if self._first else 0.0, cpu]
            else:
                entry[0], entry[2] = kind, cpu
        self._first = False

    def _run(self, pipe) -> None:
        """In the sampling process: sample until told to stop, then send the totals."""
        import psycopg

        self.db = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
        self.sample()
        pipe.send("ready")
        while not pipe.poll(self.interval):
            self.sample()
        pipe.recv()
        self._next_look = 0.0  # a last look: the window's end counts every process there
        self.sample()
        self.db.close()
        totals = dict.fromkeys(KINDS, 0.0)
        for kind, first, last in self.seen.values():
            totals[kind] = totals.get(kind, 0.0) + max(0.0, last - first)
        pipe.send((totals, time.process_time()))

    def start(self) -> CpuSampler:
        ours, theirs = multiprocessing.get_context("fork").Pipe()
        self._pipe = ours
        self._process = multiprocessing.get_context("fork").Process(target=self._run, args=(theirs,), daemon=True)
        self._process.start()
        if not ours.poll(60) or ours.recv() != "ready":
            raise RuntimeError("the CPU sampler did not start")
        return self

    def stop(self) -> dict[str, float]:
        assert self._pipe is not None
        assert self._process is not None
        self._pipe.send("stop")
        totals, self.own_cpu = self._pipe.recv()
        self._process.join()
        return totals


def _cpu_of(pids: list[int]) -> dict[int, float]:
    import psutil

    cpu = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            cpu[pid] = times.user + times.system
    return cpu


def _schedstat(paths: list[str]) -> tuple[int, int] | None:
    """Nanoseconds on a CPU and waiting for one (the run queue), summed over these
    ``/proc/…/schedstat`` files; None where the kernel keeps no such file."""
    try:
        fields = [Path(path).read_text().split() for path in paths]
    except OSError:
        return None
    return sum(int(each[0]) for each in fields), sum(int(each[1]) for each in fields)


def _redis_server_cpu() -> float | None:
    import psutil

    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "redis-server":
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                return times.user + times.system
    return None


def _wait(done: Callable[[], bool], *, what: str, stall: float, progress: Callable[[], object]) -> float:
    """Poll ``done()`` every 50 ms; fail when ``progress()`` has not moved for ``stall`` s."""
    last, moved = progress(), time.monotonic()
    while not done():
        now = progress()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise RuntimeError(f"{what}: nothing moved for {stall} s (at {now})")
        time.sleep(0.05)
    return time.perf_counter()


def _measure(
    *,
    jobs: int,
    start: Callable[[], None],
    system: System,
    baseline: object,
) -> dict:
    """Time and CPU of one drain: ``start()`` (enqueue, or release a held backlog) from this
    thread, then wait until the system has done ``jobs`` more."""
    redis_before = _redis_server_cpu() if system.uses_redis else None
    server_before = _server_state(system.db)
    producer_pids = system.producer_backends()
    backends_before = _cpu_of(producer_pids)
    backend_stats = [f"/proc/{pid}/schedstat" for pid in producer_pids]
    sched_before = _schedstat(["/proc/thread-self/schedstat"]), _schedstat(backend_stats)
    sampler = system.sampler().start()
    thread_before = time.thread_time()
    started = time.perf_counter()
    start()
    sent = time.perf_counter()
    thread_after = time.thread_time()
    sched_after = _schedstat(["/proc/thread-self/schedstat"]), _schedstat(backend_stats)
    backends_after = _cpu_of(system.producer_backends())
    finished = _wait(
        lambda: system.done(baseline, jobs), what=system.name, stall=60, progress=lambda: system.progress(baseline)
    )
    cpu = sampler.stop()
    server_after = _server_state(system.db)
    producer = {
        "python": thread_after - thread_before,
        "postgresql": sum(after - backends_before.get(pid, 0.0) for pid, after in backends_after.items()),
    }
    seconds = finished - started
    result = {
        "enqueue_s": round(sent - started, 3),
        "drain_s": round(seconds, 3),
        "jobs_per_s": round(jobs / seconds, 1),
        "cpu_ms_per_job": {kind: round(1000 * value / jobs, 3) for kind, value in cpu.items()}
        | {"total": round(1000 * sum(cpu.values()) / jobs, 3)},
        "producer_cpu_ms_per_job": {kind: round(1000 * value / jobs, 3) for kind, value in producer.items()},
        # Where the producer's wall time per job went: on a CPU, and waiting for one.
        "producer_sched_us_per_job": {
            f"{who}_{what}": round((after[index] - before[index]) / 1000 / jobs, 1)
            for who, before, after in zip(("python", "postgresql"), sched_before, sched_after, strict=True)
            if before is not None and after is not None
            for index, what in enumerate(("on_cpu", "runnable"))
        },
        # The sampling process's own CPU, on the same cores.
        "sampler_cpu_s": round(sampler.own_cpu, 3),
        # The whole server's, so another database's writes count too (none while it runs).
        "wal_bytes_per_job": round((server_after[0] - server_before[0]) / jobs),
        "checkpoints": server_after[1] - server_before[1],
    }
    if redis_before is not None:
        after = _redis_server_cpu()
        if after is not None:
            result["redis_server_cpu_ms_per_job"] = round(1000 * (after - redis_before) / jobs, 3)
    return result


def _server_state(db) -> tuple[int, int]:
    """The server's WAL position (bytes) and how many checkpoints it has begun: a drain
    during which a checkpoint began writes whole pages to the WAL again (each page's first
    change after it), so it may cost more than one that saw none."""
    return db.execute(
        "SELECT (pg_current_wal_lsn() - '0/0')::bigint, checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
    ).fetchone()


def _count(db, sql: str, params: list | None = None) -> int:
    return db.execute(sql, params or []).fetchone()[0]


def _django_backend() -> list[int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return [cursor.fetchone()[0]]


def _lateness(db, intervals: str, params: list) -> dict:
    """p50, p95 and max in ms of the intervals (enqueue to start) the query selects."""
    row = db.execute(
        "SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY late), max(late) FROM"
        f" (SELECT 1000 * extract(epoch FROM late) AS late FROM ({intervals}) i (late)) r",
        params,
    ).fetchone()
    (p50, p95), worst = row[0] or (0.0, 0.0), row[1] or 0
    return {"start_lateness_ms": {"p50": round(p50, 1), "p95": round(p95, 1), "max": round(float(worst), 1)}}


class System:
    """A consumer under test: started on entry, stopped on exit. ``enqueue(mode, n)`` sends
    to its live queue; ``enqueue_held(n)`` to a queue nobody serves, which ``release()``
    hands to the consumer at once (a backlog)."""

    name = ""
    uses_redis = False
    application_name = ""
    modes: tuple[str, ...] = ("single", "bulk")

    def __init__(self, args: argparse.Namespace, db) -> None:
        self.args = args
        self.db = db
        self.root_pid = 0

    def kind_of(self, title: str) -> str:
        return _cluster_kind(title)

    def sampler(self) -> CpuSampler:
        return CpuSampler(root_pid=self.root_pid, application_name=self.application_name, kind_of=self.kind_of)

    def producer_backends(self) -> list[int]:
        return _django_backend()

    def mark(self) -> object:
        raise NotImplementedError

    def progress(self, baseline: object) -> object:
        raise NotImplementedError

    def done(self, baseline: object, jobs: int) -> bool:
        raise NotImplementedError

    #: The queue and record tables: vacuumed before each run, analyzed with a backlog in them.
    tables: tuple[str, ...] = ()

    def _each_table(self, statement: str) -> None:
        for table in self.tables:
            self.db.execute(statement.format(table=table))

    def pin_statistics(self) -> None:
        """No autovacuum during the runs: an ANALYZE while a queue table happens to hold no
        pending row makes PostgreSQL plan its claim as if none ever did (procrastinate's
        fetch then scanned every pending job for each one it took: 20-50 ms of PostgreSQL
        CPU per job). Each run starts from a plain VACUUM; the statistics are those of a
        backlog (``backlog`` analyzes with the held jobs in the tables)."""
        self._each_table("ALTER TABLE {table} SET (autovacuum_enabled = false)")

    def unpin_statistics(self) -> None:
        self._each_table("ALTER TABLE {table} RESET (autovacuum_enabled)")

    def vacuum(self) -> None:
        self._each_table("VACUUM {table}")

    def shape(self, baseline: object) -> dict:
        """How the drain since ``baseline`` was spread (messages, workers); {} if unknown."""
        return {}

    def lateness_since(self, baseline: object) -> object:
        """What ``lateness`` needs to tell this drain's jobs from earlier ones, taken before
        the drain (outside its timing); ``mark()``'s baseline where that does."""
        return baseline

    def lateness(self, since: object) -> dict:
        """How late the jobs of an end-to-end drain started after their enqueue (not a
        backlog's, held on purpose before the drain); {} where the system keeps no times."""
        return {}

    def end_to_end(self, mode: str, jobs: int) -> dict:
        self.vacuum()
        baseline = self.mark()
        since = self.lateness_since(baseline)
        result = _measure(jobs=jobs, start=lambda: self.enqueue(mode, jobs), system=self, baseline=baseline)
        return result | self.shape(baseline) | self.lateness(since)

    def backlog(self, jobs: int) -> dict:
        self.vacuum()
        baseline = self.mark()
        started = time.perf_counter()
        self.enqueue_held(jobs)
        enqueued = time.perf_counter() - started
        self._each_table("ANALYZE {table}")
        result = _measure(jobs=jobs, start=self.release, system=self, baseline=baseline)
        result["release_s"] = result.pop("enqueue_s")
        result["enqueue_held_s"] = round(enqueued, 3)
        result.pop("producer_cpu_ms_per_job")
        result.pop("producer_sched_us_per_job")
        return result | self.shape(baseline)


class Ours(System):
    """The toolkit: ``probe.noop`` on the shared ``ClusterProcess`` with production settings."""

    tables = ("job_runs", "django_q_ormq")

    def __init__(self, args: argparse.Namespace, db, broker: str) -> None:
        super().__init__(args, db)
        self.broker = broker
        self.name = f"ours_{broker}"
        self.uses_redis = broker == "redis"
        self.application_name = f"bench-ours-{broker}"

    def __enter__(self) -> Ours:
        from unittest import mock

        from django.conf import settings

        from tests.support.cluster import ClusterProcess

        self.metrics_dir = tempfile.mkdtemp(prefix="bench-throughput-metrics-")
        self.cluster = ClusterProcess(
            broker=self.broker,
            workers=self.args.workers,
            env={
                "DJANGO_SETTINGS_MODULE": "project.settings",
                "DATABASE_URL": _url(os.environ["DATABASE_URL"], application_name=self.application_name),
                "Q_SCHEDULER": "0",
                # As in production (make run): metrics of every worker through files.
                "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            },
        )
        self.patch = mock.patch.object(settings, "JOBS_BROKER", self.broker)
        self.patch.start()
        self.cluster.start(timeout=90)
        self.root_pid = self.cluster.process.pid
        self.hold = f"{self.cluster.name}-hold"
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()
        self.patch.stop()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def enqueue(self, mode: str, jobs: int) -> None:
        from tests.support import jobs as probes

        if mode == "bulk":
            probes.noop.enqueue_many({} for _ in range(jobs))
        else:
            for _ in range(jobs):
                probes.noop.enqueue()  # autocommit: each run committed (and sent) on its own

    def enqueue_held(self, jobs: int) -> None:
        from unittest import mock

        from django_q.conf import Conf

        with mock.patch.object(Conf, "CLUSTER_NAME", self.hold):
            self.enqueue("bulk", jobs)

    def release(self) -> None:
        if self.broker == "redis":
            from project.jobs import djangoq

            held, live = djangoq.RedisBroker(list_key=self.hold), djangoq.get_broker()
            live.connection.rename(held.list_key, live.list_key)
        else:
            self.db.execute("UPDATE django_q_ormq SET key = %s WHERE key = %s", [self.cluster.name, self.hold])

    def mark(self) -> int:
        return _count(self.db, "SELECT coalesce(max(id), 0) FROM job_runs")

    def progress(self, baseline: int) -> tuple[int, int]:
        succeeded = _count(self.db, "SELECT count(*) FROM job_runs WHERE id > %s AND status = 'succeeded'", [baseline])
        return succeeded, _count(self.db, "SELECT count(*) FROM django_q_ormq WHERE key = %s", [self.cluster.name])

    def done(self, baseline: int, jobs: int) -> bool:
        return self.progress(baseline) == (jobs, 0)

    def shape(self, baseline: int) -> dict:
        # A run records the task id of the message it came in: runs of one message share it.
        messages, workers, biggest = self.db.execute(
            "SELECT count(DISTINCT task_id), count(DISTINCT worker), max(runs) FROM"
            " (SELECT task_id, worker, count(*) OVER (PARTITION BY task_id) AS runs FROM job_runs WHERE id > %s) r",
            [baseline],
        ).fetchone()
        return {"messages": messages, "runs_per_message_max": biggest, "workers_used": workers}

    def lateness(self, since: int) -> dict:
        # What packing costs a run: from its due time (its enqueue) to its claim, which
        # includes the pusher's paced pulls and the runs before it in its message.
        return _lateness(self.db, "SELECT started_at - due_at FROM job_runs WHERE id > %s", [since])


def _serve_stock() -> None:
    """``qcluster`` with django-q2's own ORM broker (this script, run as a subprocess)."""
    import django
    from django.conf import settings

    settings.Q_CLUSTER["broker_class"] = "django_q.brokers.orm.ORM"
    django.setup()
    from django.core.management import call_command

    call_command("qcluster")


class Stock(System):
    """django-q2 alone: its ORM broker and ``async_task`` of a plain function, on the same
    cluster settings (workers, poll, bulk, queue limit, save limit); no bulk enqueue."""

    name = "stock_orm"
    application_name = "bench-stock"
    modes = ("single",)
    tables = ("django_q_ormq",)

    def __enter__(self) -> Stock:
        from django_q.brokers.orm import ORM
        from django_q.conf import Conf

        self.queue = f"{Conf.CLUSTER_NAME}-stock"
        self.hold = f"{self.queue}-hold"
        self.broker, self.held = ORM(list_key=self.queue), ORM(list_key=self.hold)
        self.cluster = Subprocess(
            ["--serve-stock"],
            env={
                "DATABASE_URL": _url(os.environ["DATABASE_URL"], application_name=self.application_name),
                "Q_CLUSTER_NAME": self.queue,
            },
        )
        self.cluster.wait_ready(lambda: _cluster_workers_idle(self.cluster.process.pid, self.args.workers), 90)
        self.root_pid = self.cluster.process.pid
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()

    def enqueue(self, mode: str, jobs: int, broker=None) -> None:
        from django_q.tasks import async_task

        for _ in range(jobs):
            async_task("bench.throughput.noop", broker=broker or self.broker)

    def enqueue_held(self, jobs: int) -> None:
        self.enqueue("single", jobs, broker=self.held)

    def release(self) -> None:
        self.db.execute("UPDATE django_q_ormq SET key = %s WHERE key = %s", [self.queue, self.hold])

    def mark(self) -> None:
        return None

    def progress(self, baseline: None) -> int:
        return _count(self.db, "SELECT count(*) FROM django_q_ormq WHERE key = %s", [self.queue])

    def done(self, baseline: None, jobs: int) -> bool:
        return self.progress(baseline) == 0  # every message acknowledged (no result is kept)


def _procrastinate_app(conninfo: str):
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name=PROCRASTINATE_TASK)
    def bench_noop() -> None:
        return None

    return app, bench_noop


def _serve_procrastinate(conninfo: str, concurrency: int) -> None:
    """procrastinate's worker (this script, run as a subprocess) on the default queue."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    app, _ = _procrastinate_app(conninfo)
    app.run_worker(concurrency=concurrency, queues=["default"], wait=True)


class Procrastinate(System):
    """procrastinate's worker (concurrency = our worker count) on a database of its own,
    its defaults otherwise (jobs are kept, as our runs are)."""

    name = "procrastinate"
    application_name = "bench-procrastinate"
    producer_name = "bench-procrastinate-producer"
    tables = ("procrastinate_jobs", "procrastinate_events")

    def kind_of(self, title: str) -> str:
        return "worker"

    def __enter__(self) -> Procrastinate:
        import psycopg

        from bench._support import scratch_server_database

        self.scratch = scratch_server_database("bench_procrastinate")
        url = self.scratch.__enter__()
        self.app, self.task = _procrastinate_app(_url(url, application_name=self.producer_name))
        with self.app.open():
            self.app.schema_manager.apply_schema()
        self.db = psycopg.connect(url, autocommit=True)
        self.worker = Subprocess(
            [
                "--serve-procrastinate",
                _url(url, application_name=self.application_name),
                "--concurrency",
                str(self.args.workers),
            ],
            env={},
        )
        self.worker.wait_ready(lambda: _count(self.db, "SELECT count(*) FROM procrastinate_workers") > 0, 60)
        self.root_pid = self.worker.process.pid
        self.app.open()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.app.close()
            self.worker.stop()
            self.db.close()
        finally:
            self.scratch.__exit__(*exc)

    def producer_backends(self) -> list[int]:
        rows = self.db.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [self.producer_name])
        return [pid for (pid,) in rows.fetchall()]

    def enqueue(self, mode: str, jobs: int, queue: str | None = None) -> None:
        task = self.task.configure(queue=queue) if queue else self.task
        if mode == "bulk":
            task.batch_defer(*({} for _ in range(jobs)))
        else:
            for _ in range(jobs):
                task.defer()

    def enqueue_held(self, jobs: int) -> None:
        self.enqueue("bulk", jobs, queue="bench_hold")

    def release(self) -> None:
        # Moved rows fire no trigger: wake the worker as an insert would (procrastinate's
        # channel and payload), or it would find them at its next poll (5 s).
        with self.db.transaction():
            first = _count(self.db, "SELECT min(id) FROM procrastinate_jobs WHERE queue_name = 'bench_hold'")
            self.db.execute("UPDATE procrastinate_jobs SET queue_name = 'default' WHERE queue_name = 'bench_hold'")
            payload = json.dumps({"type": "job_inserted", "job_id": first})
            self.db.execute("SELECT pg_notify('procrastinate_queue_v1#default', %s)", [payload])

    def mark(self) -> int:
        return _count(self.db, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")

    def lateness_since(self, baseline: int) -> int:
        # mark() counts succeeded jobs; the drain's jobs are those after the newest id.
        return _count(self.db, "SELECT coalesce(max(id), 0) FROM procrastinate_jobs")

    def lateness(self, since: int) -> dict:
        # Its events table records when each job was deferred and when a worker started it.
        return _lateness(
            self.db,
            "SELECT s.at - d.at FROM procrastinate_events d"
            " JOIN procrastinate_events s ON s.job_id = d.job_id AND s.type = 'started'"
            " WHERE d.type = 'deferred' AND d.job_id > %s",
            [since],
        )

    def progress(self, baseline: int) -> int:
        return self.mark() - baseline

    def done(self, baseline: int, jobs: int) -> bool:
        return self.progress(baseline) == jobs


def _run_system(system: System, selected: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Warm up, then the backlog (which leaves backlog statistics), then each enqueue mode.
    Without a measured backlog, an unmeasured one leaves the statistics: planned on an
    empty table, procrastinate's fetch scans every pending job (about 50 jobs/s)."""
    results = {}
    with system:
        system.pin_statistics()
        try:
            if args.warmup:
                system.end_to_end(system.modes[-1], args.warmup)
            if f"{system.name}_backlog" in selected:
                results[f"{system.name}_backlog"] = system.backlog(args.jobs)
            elif args.warmup:
                system.backlog(min(args.jobs, 1000))
            for mode in system.modes:
                if f"{system.name}_{mode}" in selected:
                    results[f"{system.name}_{mode}"] = system.end_to_end(mode, args.jobs)
        finally:
            system.unpin_statistics()
    return results


# --- report -------------------------------------------------------------------------------


def _baselines(ours: str) -> tuple[str, str]:
    """What one of our runs is set against. django-q2 has no bulk enqueue: our bulk runs are
    set against its single one."""
    mode = ours.rsplit("_", 1)[1]
    return f"stock_orm_{'single' if mode == 'bulk' else mode}", f"procrastinate_{mode}"


def _ratios_by_round(samples: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """Jobs/s of each of our runs over its baselines' in the same round, round by round: the
    systems run one after another within minutes, so a machine whose speed drifts over a
    run moves these less than the ratio of the medians."""
    ratios: dict[str, dict[str, list[float]]] = {}
    for ours, mine in samples.items():
        if ours.startswith("ours_"):
            ratios[ours] = {
                base: [round(a["jobs_per_s"] / b["jobs_per_s"], 2) for a, b in zip(mine, samples[base], strict=False)]
                for base in _baselines(ours)
                if samples.get(base)
            }
    return ratios


def _ratios(runs: dict[str, dict]) -> dict[str, dict]:
    """Each of our runs against the same kind of run of each baseline: jobs/s ratio (higher
    is better) and CPU per job ratio (lower is better)."""
    ratios = {}
    for ours, mine in runs.items():
        if not ours.startswith("ours_"):
            continue
        against = {}
        for base in _baselines(ours):
            theirs = runs.get(base)
            if theirs is not None:
                against[base] = {
                    "jobs_per_s": round(mine["jobs_per_s"] / theirs["jobs_per_s"], 2),
                    "cpu_per_job": round(mine["cpu_ms_per_job"]["total"] / theirs["cpu_ms_per_job"]["total"], 2),
                }
        ratios[ours] = against
    return ratios


def _goals(runs: dict[str, dict], ratios: dict[str, dict]) -> dict:
    orm = [name for name in runs if name.startswith("ours_orm")]
    return {
        "cpu_ms_per_job_at_most_3": {name: runs[name]["cpu_ms_per_job"]["total"] <= 3 for name in orm},
        "jobs_per_s_at_least_2x_stock_and_procrastinate": {
            name: all(ratio["jobs_per_s"] >= 2 for ratio in ratios[name].values()) for name in orm if ratios.get(name)
        },
    }


def _median_run(samples: list[dict]) -> dict:
    """The round with the median jobs/s (every round's jobs/s and CPU kept beside it)."""
    ordered = sorted(samples, key=lambda run: run["jobs_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(samples) > 1:
        chosen["jobs_per_s_all_rounds"] = [run["jobs_per_s"] for run in samples]
        chosen["cpu_ms_per_job_total_all_rounds"] = [run["cpu_ms_per_job"]["total"] for run in samples]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per drain")
    parser.add_argument("--workers", type=int, default=10, help="cluster workers and procrastinate's concurrency")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (each system in turn); the median is reported")
    parser.add_argument("--warmup", type=int, default=100, help="jobs drained (not measured) after each start")
    parser.add_argument("--only", default=",".join(RUNS), help=f"comma-separated, of: {', '.join(RUNS)}")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="LOG_LEVEL of the clusters")
    parser.add_argument("--serve-stock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-procrastinate", metavar="CONNINFO", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stock:
        return _serve_stock()
    if args.serve_procrastinate:
        return _serve_procrastinate(args.serve_procrastinate, args.concurrency)
    selected = [name for name in args.only.split(",") if name]
    unknown = set(selected) - set(RUNS)
    if unknown:
        parser.error(f"unknown runs: {', '.join(sorted(unknown))}")
    if any("redis" in name for name in selected) and not os.environ.get("REDIS_URL"):
        print("REDIS_URL is not set: the Redis runs are skipped", file=sys.stderr)
        selected = [name for name in selected if "redis" not in name]
    _environment(args)

    import psutil

    from bench._support import scratch_database

    samples: dict[str, list[dict]] = {name: [] for name in selected}
    load_start = os.getloadavg()
    # Django's set-up and migrations may print; stdout carries the JSON only.
    with contextlib.redirect_stdout(sys.stderr), scratch_database("bench_throughput"):
        import psycopg
        from django.conf import settings

        db = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
        try:
            for _round in range(args.rounds):
                for make in (
                    lambda: Stock(args, db),
                    lambda: Ours(args, db, "orm"),
                    lambda: Procrastinate(args, db),
                    lambda: Ours(args, db, "redis"),
                ):
                    system = make()
                    if not any(name.startswith(f"{system.name}_") for name in selected):
                        continue
                    for name, result in _run_system(system, selected, args).items():
                        samples[name].append(result)
                        shape = f", messages {result['messages']}" if "messages" in result else ""
                        if "start_lateness_ms" in result:
                            shape += f", start lateness ms {result['start_lateness_ms']}"
                        cpu = result["cpu_ms_per_job"]
                        print(f"{name}: {result['jobs_per_s']} jobs/s, {cpu}{shape}", file=sys.stderr)
        finally:
            db.close()
        cluster = {key: settings.Q_CLUSTER.get(key) for key in ("workers", "poll", "bulk", "queue_limit", "save_limit")}
    runs = {name: _median_run(results) for name, results in samples.items() if results}
    ratios = _ratios(runs)
    print(
        json.dumps(
            {
                "benchmark": "throughput",
                "jobs": args.jobs,
                "workers": args.workers,
                "rounds": args.rounds,
                "q_cluster": cluster,
                "log_level": os.environ.get("LOG_LEVEL", "info"),
                "machine": {
                    "cpus": psutil.cpu_count(),
                    "python": platform.python_version(),
                    "load_avg_1m_start": round(load_start[0], 2),
                    "load_avg_1m_end": round(os.getloadavg()[0], 2),
                },
                "runs": runs,
                "ratios": ratios,
                "jobs_per_s_ratios_by_round": _ratios_by_round(samples),
                "goals": _goals(runs, ratios),
            },
            indent=2,
        )
    )
    return None


if __name__ == "__main__":
    main()
