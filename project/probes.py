"""Health probes on a port of their own, answered by the gunicorn master.

On the web port, ``/-/liveness`` and ``/-/readiness`` wait in the same queue as every
other request: with 200 clients polling the export status they took 2.9-5.3 s, so a 1 s
probe would restart a healthy server. A thread in each worker answering them on another
port still competed for the worker's GIL with its busy request threads (p99 over 300 ms
under that load). So the probes are answered by a small HTTP server thread in the gunicorn
*master* (``project/gunicorn_conf.py``), a process that otherwise only supervises: nothing
there is ever busy with a request.

* ``GET /-/liveness``: 200 ``{"status": "ok", "workers": N}`` while the master runs and
  has at least one worker (gunicorn itself restarts a worker whose main loop stops for
  ``WEB_TIMEOUT`` seconds); 503 before the first worker is up.
* ``GET /-/readiness``: the master does not load Django. Every worker checks readiness
  (``project.health.readiness_report``) every ``READINESS_INTERVAL`` seconds on a thread
  (and database connection) of its own, and publishes the report in a file of the
  master's directory; the probe answers the freshest report (200 or 503 as it says), or
  503 when none is younger than ``READINESS_MAX_AGE`` (no worker could check: stuck,
  or its database check hangs).

Probes are not written to the access log.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any

logger = logging.getLogger(__name__)

#: How often each web worker checks readiness (seconds).
READINESS_INTERVAL = 1.0
#: A published report older than this (seconds) no longer counts: readiness answers 503.
READINESS_MAX_AGE = 5.0
#: A probe connection that sends nothing is dropped after this long.
CONNECTION_TIMEOUT = 5.0


# --- in each worker: check readiness, publish it ---------------------------------------------


def _check() -> dict[str, Any]:
    from django.db import close_old_connections

    from project import health

    close_old_connections()  # drops a connection broken since the last check (server restart)
    try:
        return health.readiness_report()
    except Exception as exc:  # the report says it failed; the reason is in the log
        logger.exception("readiness check failed")
        return {"status": "failed", "message": type(exc).__name__}


class ReadinessPublisher:
    """A daemon thread of a web worker: the readiness report every ``interval`` seconds,
    written atomically to ``<directory>/<pid>.json`` with the time it was checked."""

    def __init__(
        self, directory: str | Path, *, interval: float = READINESS_INTERVAL, check: Callable[[], dict] = _check
    ) -> None:
        self.path = Path(directory) / f"{os.getpid()}.json"
        self.interval, self.check = interval, check
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="readiness-publisher", daemon=True)

    def start(self) -> ReadinessPublisher:
        self.thread.start()
        return self

    def publish_once(self) -> None:
        report = self.check()
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps({"checked_at": time.time(), "report": report}))
        scratch.replace(self.path)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.publish_once()
            except OSError:  # the directory went away: the master is stopping
                logger.warning("could not publish the readiness report", exc_info=True)
            self.stop.wait(self.interval)


def published_readiness(directory: str | Path, *, max_age: float = READINESS_MAX_AGE) -> dict[str, Any]:
    """The freshest report the workers published, or a failed one when none is recent."""
    freshest: dict[str, Any] | None = None
    for path in Path(directory).glob("*.json"):
        try:
            published = json.loads(path.read_text())
        except (OSError, ValueError):  # removed meanwhile (a worker exited)
            continue
        if freshest is None or published["checked_at"] > freshest["checked_at"]:
            freshest = published
    if freshest is None or time.time() - freshest["checked_at"] > max_age:
        return {"status": "failed", "message": f"no web worker has checked readiness in the last {max_age:g} s"}
    return freshest["report"]


def forget_worker(directory: str | Path, pid: int) -> None:
    """Drop an exited worker's report (gunicorn's ``child_exit``)."""
    for suffix in (".json", ".tmp"):
        (Path(directory) / f"{pid}{suffix}").unlink(missing_ok=True)


# --- in the master: answer the probes --------------------------------------------------------


class _ProbeHandler(BaseHTTPRequestHandler):
    server: ProbeServer
    timeout = CONNECTION_TIMEOUT
    server_version = "probes"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/-/liveness":
            workers = self.server.workers()
            self._answer(200 if workers else 503, {"status": "ok" if workers else "failed", "workers": workers})
        elif path == "/-/readiness":
            report = self.server.readiness()
            self._answer(200 if report.get("status") == "ok" else 503, report)
        else:
            self._answer(404, {"message": "404 Not Found"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ProbeServer(ThreadingMixIn, HTTPServer):
    """The probe endpoints on a listening socket, in a daemon thread; one short-lived thread
    per probe connection. ``workers()``: how many web workers run; ``readiness()``: the
    report to answer."""

    daemon_threads = True

    def __init__(
        self, listener: socket.socket, *, workers: Callable[[], int], readiness: Callable[[], dict[str, Any]]
    ) -> None:
        super().__init__(listener.getsockname()[:2], _ProbeHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.workers, self.readiness = workers, readiness
        self.thread: threading.Thread | None = None

    def start(self) -> ProbeServer:
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.5}, name="health-probes", daemon=True
        )
        self.thread.start()
        return self


def listen(host: str, port: int) -> socket.socket:
    """The probe port's listening socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


# --- gunicorn's hooks (project/gunicorn_conf.py) ---------------------------------------------
# The state lives here, not in the config file: gunicorn executes that file again on a
# reload (SIGHUP), and the workers forked afterwards must still find the master's directory.

#: The master's probe listener and the directory its workers publish readiness in.
_listener: socket.socket | None = None
directory: str | None = None


def master_start(*, host: str, port: int, workers: Callable[[], int]) -> None:
    """In the gunicorn master, before it forks: listen on the probe port and answer from a
    thread. Raises ``OSError`` when the port cannot be bound."""
    global _listener, directory
    import tempfile

    _listener = listen(host, port)
    directory = tempfile.mkdtemp(prefix="gunicorn-readiness-")
    published = directory
    ProbeServer(_listener, workers=workers, readiness=lambda: published_readiness(published)).start()


def worker_forked() -> None:
    """In a new worker: the master's listener is not the worker's to hold open."""
    if _listener is not None:
        _listener.close()


def worker_start() -> None:
    """In a worker with the application loaded: publish readiness."""
    if directory is not None:
        ReadinessPublisher(directory).start()


def worker_exited(pid: int) -> None:
    if directory is not None:
        forget_worker(directory, pid)


def master_stop() -> None:
    import shutil

    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
