"""The real web server (gunicorn with ``project/gunicorn_conf.py``) in a subprocess, on the
test database, with its health probe port (``WEB_PROBE_PORT``) on a free port. Started
once a worker has loaded the application and checked readiness."""

from __future__ import annotations

import requests
from django.conf import settings
from django_q.conf import Conf

from tests.support.cluster import ManagePyProcess
from tests.support.web import free_port, gunicorn_start


class ProbedWebServer(ManagePyProcess):
    """``gunicorn project.wsgi`` as production starts it; ``url`` is the web port,
    ``probe_url`` the probe port. Stopped, tracked and reported as every command is
    (``ManagePyProcess``)."""

    command = "gunicorn"
    stop_timeout = 30.0

    def __init__(self, *, workers: int = 1, threads: int = 1, env: dict[str, str] | None = None) -> None:
        self.port, self.probe_port = free_port(), free_port()
        self.url, self.probe_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.probe_port}"
        self.workers = workers
        super().__init__(
            broker=settings.JOBS_BROKER,
            queue=Conf.CLUSTER_NAME,
            env={"WEB_THREADS": str(threads), "WEB_PROBE_PORT": str(self.probe_port), **(env or {})},
        )

    def start(self, timeout: float = 60) -> ProbedWebServer:
        self.process = gunicorn_start(port=self.port, workers=self.workers, env=self.env, log=self.log)

        def serving() -> bool:
            try:
                # A worker that has loaded the application publishes its first readiness check.
                readiness = requests.get(f"{self.probe_url}/-/readiness", timeout=10)
            except requests.RequestException:
                return False
            return "db_check" in readiness.json()

        self._await(serving, timeout=timeout)
        return self

    def __enter__(self) -> ProbedWebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
