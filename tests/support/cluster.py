"""A real django-q2 cluster (``manage.py qcluster``) in a subprocess, on the test database."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import psutil
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone
from django_q.conf import Conf

ROOT = Path(__file__).resolve().parents[2]


def leftovers_stop() -> list[str]:
    """Stop every command a test started and did not stop (a helper that failed between
    its start and its stop left one behind, which then held the test database for the
    next run on the machine); their commands and pids, for the report."""
    left = leftovers_running()
    for each in list(_started):
        each.stop()
    return left


def leftovers_running() -> list[str]:
    """The commands started through these helpers and not stopped yet, with their pids."""
    return [
        f"{each.command} (pid {each.process.pid})" for each in _started if each.process and each.process.poll() is None
    ]


def database_url() -> str:
    """The URL of the database this test process uses (the test database)."""
    from urllib.parse import quote, urlencode

    db = connection.settings_dict
    host = db["HOST"] or ""
    query = {key: value for key, value in db["OPTIONS"].items() if isinstance(value, str)}
    netloc = quote(db["USER"] or "")
    if db["PASSWORD"]:
        netloc += ":" + quote(db["PASSWORD"])
    if host.startswith("/"):
        query["host"] = host
        host = ""
    netloc += "@" + host + (f":{db['PORT']}" if db["PORT"] else "")
    # quote, not quote_plus: libpq reads "+" literally (the options parameter has spaces).
    return f"postgresql://{netloc}/{db['NAME']}" + (f"?{urlencode(query, quote_via=quote)}" if query else "")


def _partners_unreachable() -> dict[str, str]:
    """A closed local port for every partner API the environment does not name: a test
    that routes a token to a partner without a stand-in gets a network error, and no
    test ever sends a value to a real partner."""
    names = [name for name in dir(settings) if name.startswith("PARTNER_") and name.endswith("_URL")]
    return {name: "https://127.0.0.1:9/" for name in names if name not in os.environ}


class _Stoppable(Protocol):
    command: str
    process: subprocess.Popen | None

    def stop(self) -> object: ...


#: Every command a test started, until it is stopped (``leftovers_stop``).
_started: set[_Stoppable] = set()


def started_track(command: _Stoppable) -> None:
    """Stop ``command`` at the end of the session if a test leaves it running; its
    ``stop`` must call ``started_forget``."""
    _started.add(command)


def started_forget(command: _Stoppable) -> None:
    _started.discard(command)


class ManagePyProcess:
    """A ``manage.py`` command in a subprocess (its own process group) on the test
    database, with its output kept in a log file for failure messages."""

    command = ""
    stop_timeout = 20.0

    def __init__(self, *, broker: str, queue: str, env: dict[str, str] | None = None) -> None:
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url(),
            "Q_CLUSTER_NAME": queue,  # django-q2's own: the queue served or enqueued to
            "JOBS_BROKER": broker,
            "PYTHONUNBUFFERED": "1",
            **_partners_unreachable(),
            **(env or {}),
        }
        if settings.REDIS_URL:
            self.env["REDIS_URL"] = settings.REDIS_URL
        self.log = tempfile.NamedTemporaryFile(prefix=f"{self.command}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen | None = None

    def _launch(self, *, ready: Callable[[], bool], timeout: float, interval: float) -> None:
        """Start the command; return once ``ready()`` (see ``_await``)."""
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", self.command],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._await(ready, timeout=timeout, interval=interval)

    def _await(self, ready: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> None:
        """Return once ``ready()``; stop the process and raise with its output when it exits
        or nothing moved for ``timeout`` s (``activity()``: a loaded machine that starts it
        slowly gets more time)."""
        process = self.process
        assert process is not None
        started_track(self)

        def started() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{self.command} exited early:\n{self.output()}")
            return ready()

        try:
            wait_until(started, progress=self.activity, stall=timeout, interval=interval)
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(f"{self.command} was not ready: {exc}\n{self.output()}") from None

    def activity(self) -> object:
        """What moves while the command starts or works: its processes' CPU time and its
        output (``process_activity``)."""
        return process_activity(self.process, files=[self.log.name])()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-20000:]

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL to the whole group if it does not stop in time.
        The exit code, or None when it had to be killed (or never ran)."""
        started_forget(self)
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout or self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return None


class ClusterProcess(ManagePyProcess):
    command = "qcluster"

    def __init__(
        self, *, broker: str = "orm", workers: int = 2, env: dict[str, str] | None = None, name: str | None = None
    ) -> None:
        self.broker = broker
        self.name = name or Conf.CLUSTER_NAME
        super().__init__(broker=broker, queue=self.name, env={"Q_WORKERS": str(workers), **(env or {})})

    def start(self, timeout: float = 30) -> ClusterProcess:
        from project.jobs.models import ClusterHeartbeat

        started = timezone.now()
        heartbeats = ClusterHeartbeat.objects.filter(cluster_name=self.name, last_seen__gte=started)
        self._launch(ready=heartbeats.exists, timeout=timeout, interval=0.1)
        return self

    def work(self) -> object:
        """What moves while the cluster takes and runs work: the job runs
        (``job_activity``) and its output. Not its CPU time, which an idle cluster's polls
        spend too."""
        return job_activity(), os.path.getsize(self.log.name)

    def workers(self) -> list[psutil.Process]:
        """Worker processes (not the sentinel, monitor or pusher)."""
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                title = " ".join(child.cmdline())
                if "processing" in title or title.rstrip().endswith("idle"):
                    found.append(child)
        return found


def job_activity() -> object:
    """A snapshot of the job runs that changes whenever a cluster does something (a run
    created, claimed, finished, or a heartbeat)."""
    from django.db.models import Count, Max

    from project.jobs.models import JobRun

    return tuple(JobRun.objects.aggregate(Count("id"), Max("updated_at"), Max("heartbeat_at")).values())


def wait_for(
    predicate: Callable[[], object],
    *,
    timeout: float = 20,
    interval: float = 0.05,
    message: str | Callable[[], str] = "",
    progress: Callable[[], object] | None = job_activity,
) -> object:
    """``wait_until`` with the job runs as its progress by default (a loaded machine gets
    more time while the cluster works, a stuck one fails as soon): fail when nothing has
    moved for ``timeout`` seconds. ``progress()`` is asked at most every 0.5 s, as the
    predicate is polled every ``interval``; ``progress=None``, or no database access here,
    makes ``timeout`` a plain deadline."""
    if progress is None:
        return wait_until(predicate, stall=timeout, interval=interval, message=message)
    try:
        first = progress()
    except (RuntimeError, DatabaseError):  # no database access here: a plain deadline
        return wait_until(predicate, stall=timeout, interval=interval, message=message)
    throttled = _at_most_every(0.5, progress, first=first)
    return wait_until(predicate, progress=throttled, stall=timeout, interval=interval, message=message)


def _at_most_every(seconds: float, snapshot: Callable[[], object], *, first: object) -> Callable[[], object]:
    """``snapshot``, asked again only once ``seconds`` have passed since it last was
    (``first``: what it answered just now)."""
    last = [first, time.monotonic()]

    def throttled() -> object:
        now = time.monotonic()
        if now - last[1] >= seconds:
            last[0], last[1] = snapshot(), now
        return last[0]

    return throttled


@contextlib.contextmanager
def running_cluster(*, broker: str, **kwargs) -> Iterator[ClusterProcess]:
    """A cluster of its own (its own queue name), with this process enqueueing to it.

    Runs enqueued inside the block go to this cluster only, never to the session cluster.
    """
    from unittest import mock

    name = f"{Conf.CLUSTER_NAME}-{uuid.uuid4().hex[:8]}"
    with (
        mock.patch.object(Conf, "CLUSTER_NAME", name),
        mock.patch.object(settings, "JOBS_BROKER", broker),
    ):
        cluster = ClusterProcess(broker=broker, name=name, **kwargs).start()
        try:
            yield cluster
        finally:
            cluster.stop()


def wait_until(
    predicate: Callable[[], object],
    *,
    progress: Callable[[], object] | None = None,
    stall: float = 30,
    interval: float = 0.1,
    message: str | Callable[[], str] = "",
) -> object:
    """Poll until ``predicate()`` is truthy. Fail only when nothing has moved for ``stall``
    seconds: ``progress()`` returns a snapshot of what should keep changing while the work
    goes on (a run's status and heartbeat, a page's text, a process's CPU time:
    ``process_activity``), so a slow, loaded machine waits longer and a stuck one fails
    fast; never more than ten times ``stall`` in all, so a process that keeps busy without
    getting anywhere still fails. Without ``progress``, ``stall`` is a plain deadline: only
    for a wait on a clock (a heartbeat going stale, a server's timer), which no machine's
    speed shortens. ``message`` may be a function, called at the failure (a cluster's
    output then, not when the wait began)."""
    last = progress() if progress else None
    started = moved = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        if progress is not None:
            now = progress()
            if now != last:
                last, moved = now, time.monotonic()
        clock = time.monotonic()
        stalled, endless = clock - moved > stall, clock - started > 10 * stall
        if stalled or endless:
            text = message() if callable(message) else message
            why = f"nothing moved for {stall} s" if stalled else f"still moving, but not done after {10 * stall} s"
            raise AssertionError(f"{text or 'not done'} ({why}; last: {repr(last)[:3000]})")
        time.sleep(interval)


def process_activity(
    *processes: subprocess.Popen | psutil.Process | int | None, files: Sequence[str | Path] = (), cpu_step: float = 0.5
) -> Callable[[], object]:
    """A ``progress`` for a wait on processes a test started: their CPU time, with their
    children's, in steps of ``cpu_step`` seconds, and the sizes of ``files`` (their logs).
    It moves while they start up or work (a Django process spends a few seconds of CPU on
    its start) and stands still while they wait for something that does not come: the
    steps are coarse enough that an idle cluster's polls (about 1 % of a core) take a step
    every 40 s or so."""
    pids = [getattr(process, "pid", process) for process in processes if process is not None]

    def snapshot() -> object:
        seconds = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for each in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        times = each.cpu_times()
                        seconds += times.user + times.system
        sizes = []
        for name in files:
            try:
                sizes.append(os.path.getsize(name))
            except OSError:
                sizes.append(-1)
        return int(seconds / cpu_step), tuple(sizes)

    return snapshot
