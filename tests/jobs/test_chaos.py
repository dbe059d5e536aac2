"""Crash tests: processes killed, signals sent, the database taken away, on real clusters.

Each test asserts the end state of every record it made, and waits on progress (fails
when nothing has moved for a while), never on a fixed total deadline. The recovery times
these faults take are measured by bench/faults.py and listed in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path
from unittest import mock

import psutil
import pytest
from django.db import connection
from django_q.conf import Conf

from project.jobs.djangoq import get_broker
from project.jobs.models import JobRun
from tests.conftest import BROKERS
from tests.support import jobs as probes
from tests.support.cluster import ClusterProcess, running_cluster, wait_until
from tests.support.models import ProbeExecution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster, pytest.mark.chaos]

FINAL = (JobRun.Status.SUCCEEDED, JobRun.Status.FAILED, JobRun.Status.CANCELLED)
# Lost runs must be noticed by the sentinel, not by heartbeat staleness: the tests' short
# JOBS_LOST_AFTER would hide whether it did.
SLOW_LOSS = {"JOBS_LOST_AFTER": "600", "EXPORT_STUCK_AFTER": "600"}


def _snapshot(runs: list[JobRun]) -> tuple:
    return tuple(JobRun.objects.filter(pk__in=[r.pk for r in runs]).order_by("pk").values_list("status", "attempt"))


def _all_final(runs: list[JobRun]) -> bool:
    return not JobRun.objects.filter(pk__in=[r.pk for r in runs]).exclude(status__in=FINAL).exists()


def _wait_final(runs: list[JobRun], cluster: ClusterProcess, *, stall: float = 60) -> None:
    wait_until(
        lambda: _all_final(runs),
        progress=lambda: _snapshot(runs),
        stall=stall,
        message=lambda: f"runs stopped moving: {_snapshot(runs)}\n{cluster.output()}",
    )


def _waiting_on_the_queue_lock(cluster: ClusterProcess) -> psutil.Process | None:
    """The idle worker blocked reading the task queue's pipe: it holds the queue's lock."""
    for process in cluster.workers():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{process.pid}/wchan").read_text().strip() == "anon_pipe_read":
                return process
    return None


@pytest.mark.parametrize("broker", BROKERS)
def test_idle_worker_killed_while_holding_the_queue_lock_does_not_stop_the_cluster(broker) -> None:
    # The runs enqueued after the kill sit in the stuck queue until the pool restarts: they
    # finish only if the restart sends their messages again (a Redis message is gone
    # from the broker once pulled).
    with running_cluster(broker=broker, workers=2) as cluster:
        holder = wait_until(
            lambda: _waiting_on_the_queue_lock(cluster),
            progress=cluster.activity,  # the workers starting
            message="no worker waits on the queue",
        )
        os.kill(holder.pid, signal.SIGKILL)
        time.sleep(1)  # the sentinel replaces the dead worker; the lock stays with the dead one
        runs = [probes.ok.enqueue(key=f"after-kill-{n}") for n in range(6)]
        _wait_final(runs, cluster)
        output = cluster.output()
    assert {run.status for run in JobRun.objects.filter(pk__in=[r.pk for r in runs])} == {"succeeded"}
    assert "restarting the pool" in output
    assert ProbeExecution.objects.filter(key__startswith="after-kill-").count() == 6


def test_worker_killed_while_holding_its_timer_lock_is_replaced() -> None:
    # The stock guard waits on that lock for ever: the one worker is never replaced.
    with running_cluster(broker="orm", workers=1, env=SLOW_LOSS) as cluster:
        dying = probes.die_handing_over.enqueue(key="handing-over")
        _wait_final([dying], cluster)
        runs = [probes.ok.enqueue(key=f"after-handover-{n}") for n in range(3)]
        _wait_final(runs, cluster)
        # The sentinel logs the reincarnation just after it starts the new worker, which may
        # have run these by then.
        wait_until(
            lambda: "reincarnated worker" in cluster.output(),
            progress=cluster.output,
            stall=30,
            message="the sentinel did not log a reincarnated worker",
        )
    assert set(JobRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)) == {"succeeded"}


@pytest.mark.parametrize("broker", BROKERS)
def test_killed_busy_worker_has_its_run_retried_by_its_sentinel_at_once(broker) -> None:
    with running_cluster(broker=broker, workers=1, env=SLOW_LOSS) as cluster:
        run = probes.slow.enqueue(key="busy-kill", seconds=60)
        wait_until(lambda: ProbeExecution.objects.filter(key="busy-kill").exists(), progress=cluster.work)
        (worker,) = [w for w in cluster.workers() if "processing" in " ".join(w.cmdline())]
        os.kill(worker.pid, signal.SIGKILL)
        _wait_final([run], cluster)
    run.refresh_from_db()
    assert (run.status, run.attempt) == ("succeeded", 2), cluster.output()
    assert run.history[0]["error_code"] == "worker_lost"


@pytest.mark.parametrize("broker", BROKERS)
def test_cluster_killed_whole_has_its_running_and_prefetched_work_resumed_after_restart(settings, broker) -> None:
    settings.JOBS_BROKER = broker
    # A queue of its own: the restarted cluster is alone on it and sends the dead one's
    # messages again at once (with another cluster alive on the queue, they come back when
    # their lease ends: the test below).
    name = f"{Conf.CLUSTER_NAME}-{uuid.uuid4().hex[:8]}"
    with mock.patch.object(Conf, "CLUSTER_NAME", name):
        broker_of_queue = get_broker(name)
        cluster = ClusterProcess(broker=broker, workers=1, env=SLOW_LOSS, name=name).start()
        try:
            running = probes.slow.enqueue(key="whole-running", seconds=60)
            wait_until(lambda: ProbeExecution.objects.filter(key="whole-running").exists(), progress=cluster.work)
            # Pulled by the pusher (its one worker is busy) but never started: none left ready.
            waiting = [probes.ok.enqueue(key=f"whole-waiting-{n}") for n in range(3)]
            wait_until(lambda: broker_of_queue.depth()["ready"] == 0, progress=broker_of_queue.depth, stall=30)
        finally:
            os.killpg(cluster.process.pid, signal.SIGKILL)
            cluster.process.wait()
        restarted = ClusterProcess(broker=broker, workers=2, env=SLOW_LOSS, name=name).start()
        try:
            _wait_final([running, *waiting], restarted)
        finally:
            restarted.stop()
    running.refresh_from_db()
    assert (running.status, running.attempt, running.history[0]["error_code"]) == ("succeeded", 2, "worker_lost")
    assert set(JobRun.objects.filter(pk__in=[r.pk for r in waiting]).values_list("status", "attempt")) == {
        ("succeeded", 1)
    }
    assert ProbeExecution.objects.filter(key__startswith="whole-waiting-").count() == 3


@pytest.mark.parametrize("broker", BROKERS)
def test_the_messages_a_killed_cluster_had_pulled_are_run_by_another_cluster_within_their_lease(
    settings, broker
) -> None:
    """Two clusters serve one queue; one is killed whole with messages its pusher had taken
    but no worker had started. The other runs them once their lease ends: with Redis too,
    where they were gone from the broker, waiting for the re-push sweep (off here)."""
    settings.JOBS_BROKER = broker
    name = f"{Conf.CLUSTER_NAME}-{uuid.uuid4().hex[:8]}"
    env = {**SLOW_LOSS, "JOBS_MESSAGE_LEASE": "3", "JOBS_REPUSH_AFTER": "600", "Q_SCHEDULER": "0"}
    with mock.patch.object(Conf, "CLUSTER_NAME", name):
        broker_of_queue = get_broker(name)
        killed = ClusterProcess(broker=broker, workers=1, env=env, name=name).start()
        try:
            probes.slow.enqueue(key="pulled-busy", seconds=60)
            wait_until(lambda: ProbeExecution.objects.filter(key="pulled-busy").exists(), progress=killed.work)
            waiting = [probes.ok.enqueue(key=f"pulled-waiting-{n}") for n in range(3)]
            # Taken by the killed cluster's pusher (its one worker is busy): none left ready.
            wait_until(lambda: broker_of_queue.depth()["ready"] == 0, progress=broker_of_queue.depth, stall=30)
            survivor = ClusterProcess(broker=broker, workers=2, env=env, name=name).start()
        finally:
            os.killpg(killed.process.pid, signal.SIGKILL)
            killed.process.wait()
        try:
            _wait_final(waiting, survivor)
        finally:
            survivor.stop()
    assert set(JobRun.objects.filter(pk__in=[r.pk for r in waiting]).values_list("status", "attempt")) == {
        ("succeeded", 1)
    }
    assert ProbeExecution.objects.filter(key__startswith="pulled-waiting-").count() == 3


@pytest.mark.parametrize("broker", BROKERS)
def test_sigterm_to_the_whole_process_group_stops_the_cluster_cleanly(broker) -> None:
    with running_cluster(broker=broker, workers=2) as cluster:
        run = probes.slow.enqueue(key="sigterm", seconds=2)
        wait_until(lambda: ProbeExecution.objects.filter(key="sigterm").exists(), progress=cluster.work)
        os.killpg(cluster.process.pid, signal.SIGTERM)  # as systemd's KillMode=control-group does
        try:
            wait_until(
                lambda: cluster.process.poll() is not None,
                progress=lambda: (_children(cluster), JobRun.objects.get(pk=run.pk).status),
                stall=30,
                message=lambda: f"qcluster did not stop after a group SIGTERM:\n{cluster.output()}",
            )
        finally:
            if cluster.process.poll() is None:
                os.killpg(cluster.process.pid, signal.SIGKILL)
        assert cluster.process.returncode == 0, cluster.output()
    run.refresh_from_db()
    assert run.status == "succeeded", "the running job was cut short"


def _children(cluster: ClusterProcess) -> list[int]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [p.pid for p in psutil.Process(cluster.process.pid).children(recursive=True)]
    return []


def _database_blocked(name: str, blocked: bool) -> None:
    """Refuse (or allow again) new connections to the test database, and drop the open ones."""
    with _admin_cursor() as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if blocked else "true"}')
        if blocked:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )


@contextlib.contextmanager
def _admin_cursor():
    import psycopg

    settings = connection.settings_dict
    with (
        psycopg.connect(
            dbname="postgres",
            user=settings["USER"],
            host=settings["HOST"] or None,
            port=settings["PORT"] or None,
            password=settings["PASSWORD"] or None,
            autocommit=True,
        ) as admin,
        admin.cursor() as cursor,
    ):
        yield cursor


def test_database_outage_delays_runs_without_losing_or_charging_them() -> None:
    name = connection.settings_dict["NAME"]
    with running_cluster(broker="orm", workers=2, env=SLOW_LOSS) as cluster:
        runs = [probes.slow.enqueue(key=f"outage-{n}", seconds=1, first_attempt_only=False) for n in range(8)]
        wait_until(lambda: ProbeExecution.objects.filter(key__startswith="outage-").exists(), progress=cluster.work)
        connection.close()
        _database_blocked(name, True)
        try:
            time.sleep(5)  # claims, heartbeats and outcomes fail meanwhile
        finally:
            _database_blocked(name, False)
        _wait_final(runs, cluster)
    rows = list(JobRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", "error_code", "history"))
    assert {status for status, _code, _history in rows} == {"succeeded"}, cluster.output()
    charged = [h for _s, _c, history in rows for h in history if h["outcome"] != "succeeded"]
    assert charged == [], "an attempt was charged for the database's fault"


def test_busy_workers_killed_again_and_again_leave_no_run_behind() -> None:
    import threading

    with running_cluster(broker="orm", workers=3, env=SLOW_LOSS) as cluster:
        runs = [probes.slow.enqueue(key=f"massacre-{n}", seconds=0.3, first_attempt_only=True) for n in range(40)]
        stop = threading.Event()
        killed = []

        def killer() -> None:
            while not stop.wait(0.7) and len(killed) < 15:
                for worker in cluster.workers():
                    with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                        if "processing" in " ".join(worker.cmdline()):
                            os.kill(worker.pid, signal.SIGKILL)
                            killed.append(worker.pid)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            _wait_final(runs, cluster)
        finally:
            stop.set()
            thread.join()
    assert killed
    statuses = set(JobRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True))
    assert statuses <= {"succeeded", "failed"}, cluster.output()
