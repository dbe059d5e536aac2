"""The ``catalog_listen`` command in a subprocess, on the test database (like ClusterProcess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.db import connection
from django_q.conf import Conf

from catalog.listener import APPLICATION_NAME
from tests.support.cluster import ROOT, database_url


def listening_backends() -> list[int]:
    """Pids of listener sessions on the test database that have run LISTEN."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"
            " AND query LIKE 'LISTEN%%'",
            [APPLICATION_NAME],
        )
        return [row[0] for row in cursor.fetchall()]


class ListenerProcess:
    def __init__(self, *, env: dict[str, str] | None = None) -> None:
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url(),
            # Enqueue to the queue the cluster of this test serves.
            "Q_CLUSTER_NAME": Conf.CLUSTER_NAME,
            "JOBS_BROKER": settings.JOBS_BROKER,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if settings.REDIS_URL:
            self.env["REDIS_URL"] = settings.REDIS_URL
        self.log = tempfile.NamedTemporaryFile(prefix="catalog-listen-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> ListenerProcess:
        before = set(listening_backends())
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "catalog_listen"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"catalog_listen exited early:\n{self.output()}")
            if set(listening_backends()) - before:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"catalog_listen did not start listening within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-20000:]

    def stop(self, timeout: float = 10) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return None
