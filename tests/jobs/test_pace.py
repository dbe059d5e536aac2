"""How long a job's runs take, shared by a cluster's processes, and what a pull does with it."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import Any

import pytest
from django.db import transaction
from django_q.conf import Conf
from django_q.models import OrmQ

from project.jobs import djangoq, pace
from project.jobs.djangoq import OrmBroker
from project.jobs.models import JobRun
from tests.support import jobs as probes
from tests.support.cluster import running_cluster, wait_for
from tests.support.messages import executed, pulled_all, runs_of
from tests.support.models import ProbeExecution


def _record_in_child(job: str, seconds: float) -> None:
    pace.run_seconds_record(job=job, seconds=seconds)


def test_a_run_time_recorded_in_a_forked_process_is_read_by_its_parent() -> None:
    # As django-q2 forks the sentinel, which forks the pusher and the workers.
    child = multiprocessing.get_context("fork").Process(target=_record_in_child, args=("probe.forked", 0.004))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert pace.run_seconds("probe.forked") == pytest.approx(0.004)


def test_a_job_never_run_has_no_run_time_and_fits_one_run_in_any_wait() -> None:
    assert pace.run_seconds("probe.never") is None
    assert pace.runs_within("probe.never", 5.0) == 1


def test_the_run_time_follows_a_job_that_slows_down() -> None:
    for _ in range(10):
        pace.run_seconds_record(job="probe.slowing", seconds=0.001)
    assert pace.runs_within("probe.slowing", 0.02) == 20
    for _ in range(15):
        pace.run_seconds_record(job="probe.slowing", seconds=0.5)
    assert pace.runs_within("probe.slowing", 0.02) == 1


def test_jobs_whose_names_fall_in_one_slot_keep_their_own_run_times() -> None:
    names = [f"probe.many{n}" for n in range(300)]  # more names than a slot per name, surely, in 512
    for n, name in enumerate(names):
        pace.run_seconds_record(job=name, seconds=0.001 * (n + 1))
    known = {name: pace.run_seconds(name) for name in names}
    # A name whose slots were all taken is not known, never given another job's time.
    assert all(seconds is None or seconds == pytest.approx(0.001 * (n + 1)) for n, seconds in enumerate(known.values()))
    assert sum(seconds is not None for seconds in known.values()) > 250


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _timed_beside_a_competitor(result: Any) -> None:
    # This process and a busy one share one processor: about half the wall time is spent
    # waiting for it.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    competitor = multiprocessing.get_context("fork").Process(target=_spin, args=(30,), daemon=True)
    competitor.start()
    try:
        time.sleep(0.2)
        wall, cpu, watch = time.perf_counter(), time.thread_time(), pace.stopwatch()
        _spin(0.3)
        result[:] = [time.perf_counter() - wall, time.thread_time() - cpu, pace.stopwatch() - watch]
    finally:
        competitor.kill()


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="Linux schedstat only")
def test_a_runs_time_leaves_out_the_time_its_thread_waited_for_a_processor() -> None:
    result = multiprocessing.get_context("fork").Array("d", 3)
    child = multiprocessing.get_context("fork").Process(target=_timed_beside_a_competitor, args=(result,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    wall, cpu, watched = result[:]
    assert wall > 1.5 * cpu  # the competitor took its share
    assert watched == pytest.approx(cpu, rel=0.2, abs=0.02)


def test_without_schedstat_a_runs_time_is_its_wall_time(monkeypatch) -> None:
    def no_schedstat(*args: Any) -> int:
        raise OSError("no /proc")

    monkeypatch.setattr(os, "open", no_schedstat)
    readings: list[float] = []
    # A new thread: the file is opened once per thread.
    thread = threading.Thread(target=lambda: readings.extend([pace.stopwatch(), time.perf_counter()]))
    thread.start()
    thread.join()
    assert readings[1] - readings[0] == pytest.approx(0, abs=0.01)


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="Linux schedstat only")
def test_threads_that_timed_runs_leave_no_descriptor_open() -> None:
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    def timed() -> None:
        pace.stopwatch()

    pace.stopwatch()  # this thread's own, kept while it lives
    before = open_descriptors()
    for _ in range(20):
        thread = threading.Thread(target=timed)
        thread.start()
        thread.join()
    assert open_descriptors() <= before


def test_forgetting_drops_every_run_time() -> None:
    pace.run_seconds_record(job="probe.ok", seconds=0.001)
    pace.forget()
    assert pace.run_seconds("probe.ok") is None


@pytest.mark.django_db(transaction=True)
class TestPackedAtPull:
    """A pull of no more messages than workers packs the runs of a job known to be short."""

    @pytest.fixture(autouse=True)
    def _pull(self, monkeypatch, settings) -> None:
        settings.JOBS_BROKER = "orm"
        settings.JOBS_BATCH_MAX = 20
        settings.JOBS_BATCH_WAIT = 0.02
        monkeypatch.setattr(Conf, "WORKERS", 10)
        monkeypatch.setattr(Conf, "BULK", 10)
        monkeypatch.setattr(Conf, "POLL", 0)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # two cores

    def test_runs_of_a_job_known_to_be_short_share_a_message_while_workers_are_idle(self) -> None:
        pace.run_seconds_record(job="probe.ok", seconds=0.004)  # five fit in 20 ms
        short = [probes.ok.enqueue(key=f"short{n}") for n in range(9)]
        unknown = [probes.permanent.enqueue(key=f"unknown{n}") for n in range(2)]
        tasks = pulled_all(OrmBroker(list_key=Conf.CLUSTER_NAME))
        assert sorted(len(runs_of(task)) for task in tasks) == [1, 1, 4, 5]
        packed = sorted((task for task in tasks if task["group"] == "probe.ok"), key=lambda task: -len(runs_of(task)))
        assert [runs_of(task) for task in packed] == [[r.pk for r in short[:5]], [r.pk for r in short[5:]]]
        assert {task["func"] for task in tasks if task["group"] == "probe.permanent"} == {djangoq.RUNNER}
        assert sorted(run_id for task in tasks for run_id in runs_of(task)) == sorted(r.pk for r in short + unknown)
        assert sorted(OrmQ.objects.values_list("pk", flat=True)) == sorted(task["ack_id"] for task in tasks)

    @pytest.mark.parametrize(("cores", "sizes"), [(1, [4, 4]), (2, [4, 4]), (4, [2, 2, 2, 2]), (16, [1] * 8)])
    def test_short_runs_are_spread_over_the_processors_cores(self, monkeypatch, cores, sizes) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
        pace.run_seconds_record(job="probe.ok", seconds=0.0001)
        [probes.ok.enqueue(key=f"spread{n}") for n in range(8)]
        tasks = pulled_all(OrmBroker(list_key=Conf.CLUSTER_NAME))
        assert [len(runs_of(task)) for task in tasks] == sizes

    def test_runs_of_a_job_known_to_be_slow_each_get_a_worker(self) -> None:
        pace.run_seconds_record(job="probe.ok", seconds=0.05)  # longer than the whole wait
        [probes.ok.enqueue(key=f"slow{n}") for n in range(4)]
        tasks = pulled_all(OrmBroker(list_key=Conf.CLUSTER_NAME))
        assert [len(runs_of(task)) for task in tasks] == [1, 1, 1, 1]

    def test_a_wait_of_zero_packs_nothing_outside_a_backlog(self, settings) -> None:
        settings.JOBS_BATCH_WAIT = 0
        pace.run_seconds_record(job="probe.ok", seconds=0.0001)
        [probes.ok.enqueue(key=f"zero{n}") for n in range(4)]
        tasks = pulled_all(OrmBroker(list_key=Conf.CLUSTER_NAME))
        assert [len(runs_of(task)) for task in tasks] == [1, 1, 1, 1]

    def test_a_backlog_is_shared_by_the_workers_however_short_its_runs(self, monkeypatch) -> None:
        monkeypatch.setattr(Conf, "WORKERS", 2)
        pace.run_seconds_record(job="probe.ok", seconds=0.01)  # two fit in 20 ms; the backlog's share is more
        [probes.ok.enqueue(key=f"backlog{n}") for n in range(12)]
        tasks = pulled_all(OrmBroker(list_key=Conf.CLUSTER_NAME))
        assert [len(runs_of(task)) for task in tasks] == [6, 6]


@pytest.mark.django_db(transaction=True)
def test_a_worker_records_how_long_each_run_of_a_message_took(settings, monkeypatch) -> None:
    settings.JOBS_BROKER = "orm"
    monkeypatch.setattr(Conf, "WORKERS", 1)  # the three runs share one message
    with transaction.atomic():
        runs = probes.slow.enqueue_many([{"key": f"timed{n}", "seconds": 0.05} for n in range(3)])
    (row,) = OrmQ.objects.all()
    task = djangoq.message_task(row.payload)
    executed(task)
    assert set(JobRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)) == {"succeeded"}
    assert 0.05 <= pace.run_seconds("probe.slow") < 5


@pytest.mark.django_db(transaction=True)
def test_a_run_overrunning_its_shared_messages_budget_hands_the_rest_on_while_it_runs(
    settings, monkeypatch, caplog
) -> None:
    settings.JOBS_BROKER = "orm"
    monkeypatch.setattr(Conf, "WORKERS", 1)
    settings.JOBS_BATCH_BUDGET = 0.1
    settings.JOBS_CONTROL_POLL = 0.05  # the watcher's tick
    with transaction.atomic():
        first, *rest = probes.slow.enqueue_many(
            [{"key": "overrun", "seconds": 3}, *({"key": f"behind{n}", "seconds": 0} for n in range(2))]
        )
    (row,) = OrmQ.objects.all()
    task = djangoq.message_task(row.payload)
    task["ack_id"] = row.pk
    started = time.monotonic()
    outcome = executed(task)
    assert outcome == "1 succeeded, 2 sent_on"
    # The two runs behind went out as a message each while the first still ran, not after it.
    handed = OrmQ.objects.exclude(pk=row.pk).order_by("lock")
    assert sorted(djangoq.message_task(message.payload)["args"][0] for message in handed) == [r.pk for r in rest]
    first.refresh_from_db()
    assert all(message.lock < first.finished_at for message in handed)
    assert time.monotonic() - started >= 3
    assert set(JobRun.objects.filter(pk__in=[r.pk for r in rest]).values_list("status", flat=True)) == {"queued"}
    assert "2 runs handed on" in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_single_enqueues_of_a_short_job_share_messages_once_the_cluster_knows_it_is_short() -> None:
    # A wait any run fits in, however loaded the machine: packing depends on the run time only.
    # Two runs for each of the machine's cores (the cluster's too), and as many workers.
    cores = max(2, min(16, len(os.sched_getaffinity(0))))
    env = {"JOBS_BATCH_WAIT": "5", "JOBS_BATCH_BUDGET": "60"}
    with running_cluster(broker="orm", workers=2 * cores, env=env) as cluster:
        taught = [probes.ok.enqueue(key=f"teach{n}") for n in range(3)]

        def done(runs: list[JobRun]) -> bool:
            return not JobRun.objects.filter(pk__in=[r.pk for r in runs]).exclude(status="succeeded").exists()

        wait_for(lambda: done(taught), timeout=30, message=cluster.output)
        # Single messages a pull finds together, no more than the workers: not a backlog.
        runs = [probes.ok.enqueue(key=f"packed{n}", _delay=3600) for n in range(2 * cores)]
        JobRun.objects.filter(pk__in=[r.pk for r in runs]).update(due_at=djangoq.timezone.now())
        OrmQ.objects.filter(key=Conf.CLUSTER_NAME).update(lock=djangoq.timezone.now())
        wait_for(lambda: done(runs), timeout=30, message=cluster.output)
    task_ids = JobRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("task_id", flat=True)
    assert len(set(task_ids)) == cores  # two runs to a message, a message per core
    assert ProbeExecution.objects.filter(key__startswith="packed").count() == 2 * cores


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_a_slow_run_does_not_hold_back_the_runs_packed_behind_it(monkeypatch) -> None:
    monkeypatch.setattr(Conf, "WORKERS", 1)  # this process packs the three runs into one message
    # A lease far longer than the wait: the runs behind go on only because they are handed on.
    env = {"JOBS_BATCH_BUDGET": "0.2", "JOBS_MESSAGE_LEASE": "600", "Q_RETRY": "600"}
    with running_cluster(broker="orm", workers=3, env=env) as cluster:
        slow, *behind = probes.slow.enqueue_many(
            [{"key": "holder", "seconds": 30}, *({"key": f"behind{n}", "seconds": 0} for n in range(2))]
        )

        def behind_done() -> bool:
            return not JobRun.objects.filter(pk__in=[r.pk for r in behind]).exclude(status="succeeded").exists()

        wait_for(behind_done, timeout=30, message=cluster.output)
        slow.refresh_from_db()
        assert slow.status == "running"
        cluster.stop(timeout=1)  # not waiting for the holder's 30 s
