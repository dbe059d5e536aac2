"""``make run`` end to end: embedded database, migrations, admin user, web server, cluster."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.cluster import ROOT, process_activity, wait_until

pytestmark = pytest.mark.cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _fresh_env(var_dir: Path, port: int) -> dict[str, str]:
    # A fresh machine's environment: nothing configured.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update({"VAR_DIR": str(var_dir), "PORT": str(port), "WEB_CONCURRENCY": "1", "Q_WORKERS": "1"})
    return env


def _launch(var_dir: Path, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "project.launcher"],
        cwd=ROOT,
        env=_fresh_env(var_dir, port),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _wait_ready(process: subprocess.Popen, port: int, log: Path, stall: float = 90) -> None:
    """Until the launcher's server is ready; fail once nothing moved for ``stall`` s (its
    processes' CPU time, its log), or if it exits."""

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return _get(f"http://127.0.0.1:{port}/-/readiness")[0] == 200
        except OSError:
            return False

    wait_until(
        ready,
        # Coarse CPU steps: once up, its cluster and web server idle at a few % of a core.
        progress=process_activity(process, files=[log], cpu_step=5),
        stall=stall,
        interval=0.5,
        message=lambda: f"not ready:\n{log.read_text()[-5000:]}",
    )


def _stop(process: subprocess.Popen, log: Path) -> None:
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0, log.read_text()[-5000:]


def _postgres_running(pgdata: Path) -> bool:
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
            return True
    return False


@pytest.fixture
def var_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: pytest resets its root to mode 0700 when any session
    # starts, and the embedded server runs as another user that must traverse the path.
    path = Path(tempfile.mkdtemp(prefix="launcher-"))
    yield path / "var"
    shutil.rmtree(path, ignore_errors=True)


def test_make_run_starts_everything_on_an_embedded_database_and_stops_cleanly(tmp_path, var_dir) -> None:
    log = tmp_path / "run.log"
    port = _free_port()

    first = _launch(var_dir, port, log)
    try:
        _wait_ready(first, port, log)
        output = log.read_text()
        assert f"Admin:     http://localhost:{port}/admin/" in output
        assert "generated; shown only this once" in output
        assert f"Database:  embedded PostgreSQL, data in {var_dir / 'pgdata'}" in output
        assert f"Metrics:   http://localhost:{port}/metrics" in output
        assert _get(f"http://127.0.0.1:{port}/admin/login/")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/static/admin/css/base.css")[0] == 200
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert b"jobs_clusters_alive 1.0" in body
        assert _get(f"http://127.0.0.1:{port}/api/v4/user")[0] == 401
        # A command in a second terminal finds the same database and keys.
        token = subprocess.run(
            [sys.executable, "manage.py", "create_access_token", "admin", "--scopes", "read_user"],
            cwd=ROOT,
            env=_fresh_env(var_dir, port),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.splitlines()[-1]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v4/user", headers={"PRIVATE-TOKEN": token})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert b'"username":"admin"' in response.read()
    finally:
        _stop(first, log)
    assert not _postgres_running(var_dir / "pgdata"), "the embedded database was left running"
    assert (var_dir / "secrets.env").exists()

    second = _launch(var_dir, port, log)
    try:
        _wait_ready(second, port, log)
        assert "password: as set on the first run" in log.read_text()
    finally:
        _stop(second, log)
    assert not _postgres_running(var_dir / "pgdata")
