"""The real web server (gunicorn with ``project/gunicorn_conf.py``) in a subprocess, on the
test database, with its health probe port (``WEB_PROBE_PORT``) on a free port. Started
once a worker has loaded the application and checked readiness."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import requests

from tests.support.cluster import database_url, started_forget, started_track, wait_until
from tests.support.web import free_port, gunicorn_start


class ProbedWebServer:
    """``gunicorn project.wsgi`` as production starts it; ``url`` is the web port,
    ``probe_url`` the probe port."""

    command = "gunicorn"

    def __init__(self, *, workers: int = 1, threads: int = 1, env: dict[str, str] | None = None) -> None:
        self.port, self.probe_port = free_port(), free_port()
        self.url, self.probe_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.probe_port}"
        self.workers, self.threads = workers, threads
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url(),
            "WEB_THREADS": str(threads),
            "WEB_PROBE_PORT": str(self.probe_port),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen | None = None

    def start(self) -> ProbedWebServer:
        self.process = gunicorn_start(port=self.port, workers=self.workers, env=self.env, log=self.log)
        started_track(self)

        def serving() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, self.output()
            try:
                # A worker that has loaded the application publishes its first readiness check.
                readiness = requests.get(f"{self.probe_url}/-/readiness", timeout=10)
            except requests.RequestException:
                return False
            return "db_check" in readiness.json()

        wait_until(serving, progress=self.output, stall=60, message=lambda: f"gunicorn did not start:\n{self.output()}")
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-20000:]

    def stop(self) -> None:
        started_forget(self)
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> ProbedWebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
