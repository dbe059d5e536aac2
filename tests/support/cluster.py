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
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_q.conf import Conf

ROOT = Path(__file__).resolve().parents[2]


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
    return f"postgresql://{netloc}/{db['NAME']}" + (f"?{urlencode(query)}" if query else "")


class ClusterProcess:
    def __init__(
        self, *, broker: str = "orm", workers: int = 2, env: dict[str, str] | None = None, name: str | None = None
    ) -> None:
        self.broker = broker
        self.name = name or Conf.CLUSTER_NAME
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url(),
            "Q_CLUSTER_NAME": self.name,  # django-q2's own: the queue this cluster serves
            "JOBS_BROKER": broker,
            "Q_WORKERS": str(workers),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if settings.REDIS_URL:
            self.env["REDIS_URL"] = settings.REDIS_URL
        self.log = tempfile.NamedTemporaryFile(prefix="qcluster-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> ClusterProcess:
        from project.jobs.models import ClusterHeartbeat

        started = timezone.now()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"qcluster exited early:\n{self.output()}")
            if ClusterHeartbeat.objects.filter(cluster_name=self.name, last_seen__gte=started).exists():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"qcluster did not start within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-20000:]

    def workers(self) -> list[psutil.Process]:
        """Worker processes (not the sentinel, monitor or pusher)."""
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                title = " ".join(child.cmdline())
                if "processing" in title or title.rstrip().endswith("idle"):
                    found.append(child)
        return found

    def stop(self, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def wait_for(
    predicate: Callable[[], object], *, timeout: float = 20, interval: float = 0.05, message: str = ""
) -> object:
    """Poll until ``predicate()`` is truthy; fail with ``message`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout} s")


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
