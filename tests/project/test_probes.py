"""Health probes on a port of their own (``WEB_PROBE_PORT``, ``project/probes.py``), answered
by the gunicorn master from the readiness its workers publish: answered while every
ordinary worker thread is busy, where the web port's probes wait behind the requests
(issue 11, defect 10). On a real gunicorn."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
import time_machine

from project.probes import ReadinessPublisher, forget_worker, published_readiness
from tests.support.cluster import database_url, leftovers_running, process_activity, wait_until
from tests.support.gunicorn import ProbedWebServer


class _Background:
    """A request sent from a thread; ``response`` once it answered."""

    def __init__(self, method: str, url: str, **kwargs) -> None:
        self.response: requests.Response | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._send, args=(method, url), kwargs=kwargs, daemon=True)
        self.thread.start()

    def _send(self, method: str, url: str, **kwargs) -> None:
        try:
            self.response = requests.request(method, url, timeout=120, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def answered(self) -> bool:
        return not self.thread.is_alive()


@pytest.fixture
def web(transactional_db) -> Iterator[ProbedWebServer]:
    with ProbedWebServer(workers=1, threads=1) as server:
        yield server


def _backends_waiting_on_a_lock() -> int:
    with psycopg.connect(database_url(), autocommit=True) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'gitlab-jobs' AND wait_event_type = 'Lock'"
        ).fetchone()
    return count


def test_the_probe_port_answers_while_every_ordinary_worker_is_busy(web, owner, token_for) -> None:
    token = token_for(owner)
    # The only worker thread is held by a request that waits for a lock this test holds.
    with psycopg.connect(database_url()) as holder:
        holder.execute("LOCK TABLE personal_access_tokens IN ACCESS EXCLUSIVE MODE")
        busy = _Background("GET", f"{web.url}/api/v4/user", headers={"PRIVATE-TOKEN": token})
        wait_until(
            lambda: _backends_waiting_on_a_lock() == 1,
            progress=busy.answered,
            stall=60,
            message=lambda: f"the request did not reach the lock:\n{web.output()}",
        )
        queued_probe = _Background("GET", f"{web.url}/-/liveness")

        liveness = requests.get(f"{web.probe_url}/-/liveness", timeout=60)
        readiness = requests.get(f"{web.probe_url}/-/readiness", timeout=60)

        assert liveness.status_code == 200
        assert liveness.json() == {"status": "ok", "workers": 1}
        assert readiness.status_code in (200, 503)  # 503: no job cluster runs in this test
        assert readiness.json()["db_check"][0]["status"] == "ok"
        # The web port's probe is still behind the held request: it cannot have been served.
        assert not busy.answered()
        assert not queued_probe.answered()
        holder.rollback()  # releases the lock

    wait_until(
        lambda: busy.answered() and queued_probe.answered(),
        progress=process_activity(web.process, files=[web.log.name]),
        stall=60,
        message=web.output,
    )
    assert busy.response is not None, busy.error
    assert busy.response.status_code == 200
    assert queued_probe.response is not None, queued_probe.error
    assert queued_probe.response.status_code == 200


def test_the_probe_port_answers_only_the_probes(web) -> None:
    response = requests.get(f"{web.probe_url}/admin/", timeout=60)
    assert response.status_code == 404
    assert response.json() == {"message": "404 Not Found"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db
def test_a_server_whose_database_is_unreachable_answers_503_with_retry_after_and_stays_alive(project) -> None:
    unreachable = urlsplit(database_url())._replace(netloc=f"postgres@127.0.0.1:{_closed_port()}").geturl()
    with ProbedWebServer(env={"DATABASE_URL": unreachable}) as web:
        answers = {
            "api": requests.get(
                f"{web.url}/api/v4/projects/{project.pk}/export", headers={"PRIVATE-TOKEN": "x"}, timeout=60
            ),
            "export request": requests.post(
                f"{web.url}/api/v4/projects/{project.pk}/export", headers={"PRIVATE-TOKEN": "x"}, timeout=60
            ),
            "callback": requests.post(
                f"{web.url}/api/v4/internal/token_status/callback", json={"finding_id": 1}, timeout=60
            ),
            "admin session": requests.get(f"{web.url}/admin/", cookies={"sessionid": "a" * 32}, timeout=60),
        }
        liveness = requests.get(f"{web.probe_url}/-/liveness", timeout=60)
        readiness = requests.get(f"{web.probe_url}/-/readiness", timeout=60)

    for name, response in answers.items():
        assert response.status_code == 503, (name, response.text, web.output())
        assert int(response.headers["Retry-After"]) >= 1, name
        assert response.json() == {"message": "503 Service Unavailable"}, name
    assert liveness.status_code == 200
    assert readiness.status_code == 503
    assert readiness.json()["db_check"][0]["status"] == "failed"


# --- readiness as the workers publish it, in process ------------------------------------------


def test_readiness_answers_the_freshest_report_a_worker_published(tmp_path) -> None:
    ReadinessPublisher(tmp_path, check=lambda: {"status": "failed", "db_check": []}).publish_once()
    time.sleep(0.01)  # a later check_at for the second worker, whatever the clock's resolution
    ReadinessPublisher(tmp_path, check=lambda: {"status": "ok", "db_check": []}).publish_once()
    # Both files are this process's (one pid): the later one replaced the first.
    assert published_readiness(tmp_path) == {"status": "ok", "db_check": []}


def test_readiness_fails_when_no_worker_published_a_recent_report(tmp_path) -> None:
    assert published_readiness(tmp_path)["status"] == "failed"

    with time_machine.travel(time.time() - 60):
        ReadinessPublisher(tmp_path, check=lambda: {"status": "ok"}).publish_once()
    stale = published_readiness(tmp_path, max_age=5)

    assert stale == {"status": "failed", "message": "no web worker has checked readiness in the last 5 s"}


def test_an_exited_workers_report_is_forgotten(tmp_path) -> None:
    ReadinessPublisher(tmp_path, check=lambda: {"status": "ok"}).publish_once()
    forget_worker(tmp_path, os.getpid())
    assert published_readiness(tmp_path)["status"] == "failed"


@pytest.mark.django_db
def test_a_readiness_check_that_raises_publishes_a_failed_report(tmp_path, monkeypatch) -> None:
    def broken() -> dict:
        raise RuntimeError("bug")

    monkeypatch.setattr("project.health.readiness_report", broken)
    ReadinessPublisher(tmp_path).publish_once()
    assert published_readiness(tmp_path) == {"status": "failed", "message": "RuntimeError"}


def test_probed_web_server_is_tracked_until_stopped_so_one_a_test_leaves_running_is_stopped(db) -> None:
    # A gunicorn left running holds the test database, and the next run on the machine errors;
    # the session's teardown stops what is still tracked (leftovers_stop).
    server = ProbedWebServer().start()
    assert server.process is not None
    name = f"gunicorn (pid {server.process.pid})"
    try:
        assert name in leftovers_running()
    finally:
        server.stop()
    assert name not in leftovers_running()
