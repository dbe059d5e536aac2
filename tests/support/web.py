"""The real web server (gunicorn with ``project/gunicorn_conf.py``, as ``make run`` starts
it) in a subprocess, on the test database."""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

from tests.support.cluster import ROOT, ManagePyProcess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_start(*, port: int, workers: int, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen:
    """``gunicorn project.wsgi`` with the production configuration on 127.0.0.1:``port``,
    in its own process group, its output in ``log``."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "project.wsgi:application",
            "--config",
            str(ROOT / "project" / "gunicorn_conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class WebServerProcess(ManagePyProcess):
    """gunicorn serving ``project.wsgi``: ``workers`` processes of ``threads`` threads. The
    runs it enqueues go to ``queue`` (a cluster's name) through ``broker``."""

    command = "gunicorn"

    def __init__(
        self, *, broker: str, queue: str, workers: int = 2, threads: int = 4, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(broker=broker, queue=queue, env={"WEB_THREADS": str(threads), **(env or {})})
        self.workers = workers
        self.port = free_port()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def start(self, timeout: float = 60) -> WebServerProcess:
        logged = Path(self.log.name).stat().st_size  # a restart logs after what is there
        self.process = gunicorn_start(port=self.port, workers=self.workers, env=self.env, log=self.log)

        def ready() -> bool:
            # Every worker up: a keep-alive connection made before one is never reaches it.
            if Path(self.log.name).read_bytes()[logged:].count(b"Worker serving (pid:") < self.workers:
                return False
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection(*self.address, timeout=5)
                connection.request("GET", "/-/liveness")
                return connection.getresponse().status == 200
            return False

        self._await(ready, timeout=timeout)
        return self
