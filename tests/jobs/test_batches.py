"""Runs pushed together share a message: packing, execution, the budget, failures."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import OperationalError
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import BadSignature, SignedPackage
from django_q.timeout import TimeoutHandler

from project.jobs import djangoq, recovery, runner, transitions
from project.jobs.djangoq import OrmBroker, RedisBroker
from project.jobs.models import JobRun
from tests.conftest import BROKERS, needs_redis
from tests.support import jobs as probes
from tests.support.cluster import running_cluster, wait_for
from tests.support.messages import executed, pulled_all, runs_of
from tests.support.models import ProbeExecution


def _messages() -> list[dict[str, Any]]:
    """The ORM queue's messages in due order, each with the ack id a pusher would add."""
    tasks = []
    for row in OrmQ.objects.order_by("lock", "id"):
        task = djangoq.message_task(row.payload)
        task["ack_id"] = row.pk
        tasks.append(task)
    return tasks


@pytest.fixture
def orm(settings, monkeypatch) -> None:
    settings.JOBS_BROKER = "orm"
    monkeypatch.setattr(Conf, "WORKERS", 4)


def _enqueued(count: int, **kwargs: Any) -> list[JobRun]:
    from django.db import transaction

    with transaction.atomic():
        runs = probes.ok.enqueue_many([{"key": f"k{n}", **kwargs} for n in range(count)])
    return runs


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("orm")
class TestPacking:
    def test_runs_enqueued_together_share_messages_of_at_most_the_workers_share(self, settings) -> None:
        settings.JOBS_BATCH_MAX = 20
        runs = _enqueued(50)
        tasks = _messages()
        per_message = math.ceil(50 / 4)
        assert [len(runs_of(task)) for task in tasks] == [13, 13, 13, 11]
        assert all(len(runs_of(task)) <= per_message for task in tasks)
        assert [run_id for task in tasks for run_id in runs_of(task)] == [run.pk for run in runs]
        assert {task["group"] for task in tasks} == {"probe.ok"}
        # The message's budget: the job's, plus the time the last run may wait in it.
        assert tasks[0]["timeout"] == probes.ok.timeout_seconds + math.ceil(settings.JOBS_BATCH_BUDGET)

    def test_no_message_carries_more_than_the_batch_maximum(self, settings) -> None:
        settings.JOBS_BATCH_MAX = 5
        _enqueued(50)
        assert [len(runs_of(task)) for task in _messages()] == [5] * 10

    def test_a_batch_maximum_of_one_sends_a_message_per_run(self, settings) -> None:
        settings.JOBS_BATCH_MAX = 1
        runs = _enqueued(6)
        tasks = _messages()
        assert {task["func"] for task in tasks} == {djangoq.RUNNER}
        assert [task["args"] for task in tasks] == [(run.pk, 1) for run in runs]

    def test_runs_due_at_different_times_do_not_share_a_message(self, monkeypatch) -> None:
        from django.db import transaction

        monkeypatch.setattr(Conf, "WORKERS", 1)

        with transaction.atomic():
            runs = probes.ok.enqueue_many([{"key": f"d{n}"} for n in range(8)], _delays=[0, 0, 0, 0, 30, 30, 60, 60])
        by_due = {tuple(runs_of(task)) for task in _messages()}
        pks = [run.pk for run in runs]
        assert by_due == {tuple(pks[:4]), tuple(pks[4:6]), tuple(pks[6:])}

    def test_fewer_runs_than_workers_go_out_one_each(self) -> None:
        _enqueued(4)
        assert {task["func"] for task in _messages()} == {djangoq.RUNNER}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("orm")
class TestExecution:
    def test_a_shared_message_runs_each_run_and_is_acknowledged_with_the_last(self) -> None:
        runs = _enqueued(12)
        task = _messages()[0]
        ack = task["ack_id"]
        assert executed(task) == "3 succeeded"
        done = JobRun.objects.filter(pk__in=runs_of(task))
        assert {run.status for run in done} == {"succeeded"}
        assert {run.task_id for run in done} == {task["id"]}
        # Deleted in the last run's success statement: the monitor has nothing left to do.
        assert not OrmQ.objects.filter(pk=ack).exists()
        assert "ack_id" not in task
        assert JobRun.objects.filter(pk__in=[run.pk for run in runs], status="queued").count() == 9

    def test_a_redelivered_message_does_only_the_runs_not_done(self) -> None:
        _enqueued(12)
        task = _messages()[0]
        first, *rest = runs_of(task)
        runner.remember_task_id(None, task={"id": "other"})
        assert runner.execute(first, 1) == "succeeded"
        assert executed(dict(task)) == "1 duplicate, 2 succeeded"
        assert executed(dict(task)) == "3 duplicate"
        keys = [run.kwargs["key"] for run in JobRun.objects.filter(pk__in=[first, *rest])]
        assert sorted(ProbeExecution.objects.filter(key__in=keys).values_list("key", flat=True)) == sorted(keys)

    def test_a_failed_run_in_a_message_is_retried_on_its_own_and_the_others_run(self, monkeypatch) -> None:
        from django.db import transaction

        monkeypatch.setattr(Conf, "WORKERS", 1)
        with transaction.atomic():
            runs = probes.flaky.enqueue_many([{"key": f"f{n}", "failures": 1 if n == 1 else 0} for n in range(3)])
        (task,) = _messages()
        OrmQ.objects.all().delete()
        assert executed(task) == "2 succeeded, 1 retried"
        first, failed, third = (JobRun.objects.get(pk=run.pk) for run in runs)
        assert (first.status, third.status) == ("succeeded", "succeeded")
        assert (failed.status, failed.attempt) == ("queued", 2)
        # Its retry is a message of its own, due after the policy's delay.
        (retry,) = _messages()
        assert retry["args"] == (failed.pk, 2)

    def test_a_paused_job_leaves_its_runs_queued_until_the_resume_sends_them_again(self, monkeypatch) -> None:
        from project.jobs import control

        _enqueued(12)
        task = _messages()[0]
        control.job_pause(name="probe.ok", by="ops")
        assert executed(task) == "3 paused"
        assert set(JobRun.objects.filter(pk__in=runs_of(task)).values_list("status", flat=True)) == {"queued"}
        OrmQ.objects.all().delete()
        control.job_resume(name="probe.ok", by="ops")
        resent = [run_id for each in _messages() for run_id in runs_of(each)]
        assert set(runs_of(task)) <= set(resent)
        for each in _messages():
            executed(each)
        assert set(JobRun.objects.values_list("status", flat=True)) == {"succeeded"}

    def test_runs_not_started_within_the_budget_go_out_one_message_each(self, settings) -> None:
        settings.JOBS_BATCH_BUDGET = 0
        _enqueued(12)
        task = _messages()[0]
        first, *rest = runs_of(task)
        assert executed(task) == "1 succeeded, 2 sent_on"
        assert JobRun.objects.get(pk=first).status == "succeeded"
        assert set(JobRun.objects.filter(pk__in=rest).values_list("status", flat=True)) == {"queued"}
        sent = [each for each in _messages() if each["func"] == djangoq.RUNNER]
        assert [each["args"] for each in sent] == [(run_id, 1) for run_id in rest]
        # The shared message keeps its ack id: the monitor acknowledges it.
        assert task["ack_id"]
        for each in sent:
            assert executed(each) == "succeeded"

    def test_a_run_over_its_time_budget_fails_and_the_rest_go_out(self) -> None:
        from django.db import transaction

        with transaction.atomic():
            runs = probes.too_slow.enqueue_many([{"key": f"t{n}"} for n in range(8)])
        task = _messages()[0]
        first, *rest = runs_of(task)
        assert rest
        # django-q2's own alarm, as its worker arms it around a task.
        with pytest.raises(djangoq.TimeoutException), TimeoutHandler(1):
            executed(task)
        assert JobRun.objects.get(pk=first).error_code == "timeout"
        assert set(JobRun.objects.filter(pk__in=rest).values_list("status", flat=True)) == {"queued"}
        sent_on = [each["args"] for each in _messages() if each["func"] == djangoq.RUNNER]
        assert sent_on == [(run_id, 1) for run_id in rest]
        assert [run.pk for run in runs][: len(rest) + 1] == [first, *rest]

    def test_a_message_out_of_time_while_its_claim_waits_for_the_database_sends_every_run_on(
        self, settings, monkeypatch
    ) -> None:
        # Found by the PostgreSQL crash test: the first run of a message, its claim tried
        # again through the outage past the message's timeout, was left queued with no
        # message once django-q2 acknowledged the failed one.
        settings.JOBS_DB_RETRY_FOR = 60
        _enqueued(12)
        task = _messages()[0]
        pairs = [(run_id, 1) for run_id in runs_of(task)]

        def claim(*args: Any, **kwargs: Any) -> JobRun | None:
            raise OperationalError("the database system is starting up")

        monkeypatch.setattr(transitions, "claim", claim)
        with pytest.raises(djangoq.TimeoutException), TimeoutHandler(1):
            executed(task)
        assert set(JobRun.objects.filter(pk__in=runs_of(task)).values_list("status", flat=True)) == {"queued"}
        sent = [each["args"] for each in _messages() if each["func"] == djangoq.RUNNER]
        assert sent == pairs
        monkeypatch.undo()
        for each in _messages():
            if each["func"] == djangoq.RUNNER:
                assert executed(each) == "succeeded"

    def test_a_database_outage_at_a_claim_leaves_the_message_for_redelivery(self, settings, monkeypatch) -> None:
        settings.JOBS_DB_RETRY_FOR = 0
        _enqueued(12)
        task = _messages()[0]
        ack = task["ack_id"]
        real = transitions.claim

        def claim(*args: Any, **kwargs: Any) -> JobRun | None:
            raise OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(transitions, "claim", claim)
        assert executed(task) == "3 database_unavailable"
        # Not acknowledged: the message is pulled again when its lease ends.
        assert "ack_id" not in task
        assert OrmQ.objects.filter(pk=ack).exists()
        assert set(JobRun.objects.filter(pk__in=runs_of(task)).values_list("status", flat=True)) == {"queued"}
        monkeypatch.setattr(transitions, "claim", real)
        assert executed(_messages()[0]) == "3 succeeded"

    def test_an_outcome_the_database_refuses_leaves_the_rest_for_redelivery(self, settings, monkeypatch) -> None:
        settings.JOBS_LOST_AFTER = 0.1  # how long a worker holding an outcome keeps trying
        _enqueued(12)
        task = _messages()[0]
        first, second, third = runs_of(task)

        def refused(*args: Any, **kwargs: Any) -> tuple[bool, JobRun | None]:
            raise OperationalError("server closed the connection unexpectedly")

        with monkeypatch.context() as patched:
            patched.setattr(transitions, "succeed_then_claim", refused)
            with pytest.raises(OperationalError):
                executed(task)
        assert "ack_id" not in task
        assert JobRun.objects.get(pk=first).status == "running"
        assert set(JobRun.objects.filter(pk__in=[second, third]).values_list("status", flat=True)) == {"queued"}
        # The message comes back after its lease, by when the first run's worker has been
        # silent for longer than lost_after: it is recovered, the others run. The database
        # refused its outcome moments ago, so its attempt is not charged: it runs again.
        JobRun.objects.filter(pk=first).update(heartbeat_at=timezone.now() - timedelta(minutes=1))
        assert executed(_messages()[0]) == "1 recovered, 2 succeeded"
        recovered = JobRun.objects.get(pk=first)
        assert (recovered.status, recovered.attempt, recovered.deferrals, recovered.error_code) == ("queued", 1, 1, "")


def _leased(broker: OrmBroker | RedisBroker) -> tuple[str, Any]:
    """Enqueue one message, pull it (it is then leased) and give its task id and ack id."""
    message = djangoq.package(run_id=1, attempt=1, name="probe.ok#1.1", group="probe.ok", timeout=None)
    broker.enqueue(message)
    ((ack_id, payload),) = broker.dequeue()
    task_id = SignedPackage.loads(payload.decode() if isinstance(payload, bytes) else payload)["id"]
    return task_id, ack_id


@pytest.mark.django_db
def test_ending_the_lease_of_a_dead_workers_orm_message_makes_it_due_at_once() -> None:
    broker = OrmBroker(list_key=f"lease-end-{uuid.uuid4().hex[:8]}")
    task_id, ack_id = _leased(broker)
    assert broker.depth() == {"ready": 0, "held": 1}
    assert broker.leases_end({"some-other-task"}) == 0
    assert broker.leases_end({task_id}) == 1
    assert broker.dequeue()[0][0] == ack_id


def _pulled_one(queue: str) -> tuple[OrmBroker, int, dict[str, Any]]:
    """The ORM broker of ``queue``, and the one message a pull hands out: its ack id and task."""
    broker = OrmBroker(list_key=queue)
    ((ack_id, payload),) = broker.dequeue()
    return broker, ack_id, SignedPackage.loads(payload)


@pytest.mark.django_db
def test_ending_the_lease_of_an_orm_message_that_names_its_run(settings) -> None:
    # The task id the pusher gives such a message is the one its run records at the claim.
    settings.JOBS_BROKER = "orm"
    run = probes.ok.enqueue(key="named")
    broker, ack_id, task = _pulled_one(run.queue)
    # A worker claims it, then dies.
    assert transitions.claim(run.pk, 1, worker="host:1", task_id=task["id"]) is not None
    assert JobRun.objects.get(pk=run.pk).task_id == task["id"] == f"r{run.pk}.1"
    assert broker.leases_end({task["id"]}) == 1
    assert broker.dequeue()[0][0] == ack_id


@pytest.fixture
def shared_message(settings, monkeypatch, django_capture_on_commit_callbacks):
    """Runs enqueued together, as one ORM message, which a pull has handed out (it is then
    leased): the runs, the broker, the message's ack id and its task."""
    settings.JOBS_BROKER = "orm"
    monkeypatch.setattr(Conf, "WORKERS", 1)  # this process packs the runs into one message

    def enqueued(job, kwargs_list: list[dict[str, Any]]):
        with django_capture_on_commit_callbacks(execute=True):
            runs = job.enqueue_many(kwargs_list)
        broker, ack_id, task = _pulled_one(runs[0].queue)
        assert runs_of(task) == [run.pk for run in runs]
        return runs, broker, ack_id, task

    return enqueued


@pytest.mark.django_db
def test_a_worker_dead_between_two_runs_of_a_shared_message_has_the_message_come_back_at_once(shared_message) -> None:
    runs, broker, ack_id, task = shared_message(probes.ok, [{"key": f"between{n}"} for n in range(3)])
    # Its worker finished the first run, then died before claiming the second: none running.
    worker = f"{socket.gethostname()}:4242"
    run = transitions.claim(runs[0].pk, 1, worker=worker, task_id=task["id"])
    assert transitions.succeed(run, None, progress=None)
    assert broker.dequeue() is None  # leased for JOBS_MESSAGE_LEASE
    assert recovery.runs_recover_of_worker(pid=4242) == []
    ((again, _payload),) = broker.dequeue()
    assert again == ack_id


@pytest.mark.django_db
def test_a_dead_workers_shared_message_comes_back_at_once_when_the_lost_run_check_finds_it_first(
    shared_message,
) -> None:
    # The sentinel's periodic check can see the dead worker's run before its own
    # reincarnation does, which then finds no run of that worker left running: the check
    # must end the message's lease itself, or the runs after the dead one wait it out.
    kwargs_list = [{"key": f"found-first{n}", "seconds": 0} for n in range(3)]
    runs, broker, ack_id, task = shared_message(probes.slow, kwargs_list)
    exited = subprocess.Popen([sys.executable, "-c", ""])
    exited.wait()
    worker = f"{socket.gethostname()}:{exited.pid}"
    assert transitions.claim(runs[0].pk, 1, worker=worker, task_id=task["id"]) is not None
    assert broker.dequeue() is None  # leased for JOBS_MESSAGE_LEASE
    # Retried, so the run is not one its worker finished, which the sentinel would look for.
    assert recovery.runs_recover_dead_local() == ["retried"]
    assert recovery.runs_recover_of_worker(pid=exited.pid) == []  # the sentinel, later
    assert ack_id in [again for again, _payload in broker.dequeue() or []]


@pytest.mark.django_db
def test_a_worker_dead_after_its_message_was_acknowledged_brings_nothing_back(settings) -> None:
    settings.JOBS_BROKER = "orm"
    run = probes.ok.enqueue(key="acknowledged")
    broker, ack_id, task = _pulled_one(run.queue)
    worker = f"{socket.gethostname()}:4243"
    claimed = transitions.claim(run.pk, 1, worker=worker, task_id=task["id"])
    assert transitions.succeed(claimed, None, progress=None, ack=ack_id)
    assert recovery.runs_recover_of_worker(pid=4243) == []
    assert broker.dequeue() is None
    assert not OrmQ.objects.filter(pk=ack_id).exists()


@needs_redis
def test_a_redis_pusher_waiting_for_a_message_never_holds_it_unleased() -> None:
    broker = RedisBroker(list_key=f"wait-{uuid.uuid4().hex[:8]}")
    message = djangoq.package(run_id=1, attempt=1, name="probe.ok#1.1", group="probe.ok", timeout=None)
    real_pull = broker.pull
    pulls = []

    def pull(**kwargs: Any) -> list[bytes]:
        pulls.append(1)
        if len(pulls) == 1:
            nothing = real_pull(**kwargs)
            broker.enqueue(message)  # arrives once the pull found none: the pusher waits for it
            return nothing
        # The pusher dies once the wait is over, before its pull takes the message.
        raise SystemExit

    broker.pull = pull  # type: ignore[method-assign]  # this broker only
    try:
        with pytest.raises(SystemExit):
            broker.dequeue()
        # Still on the list for any cluster's next pull, not lost until the re-push sweep.
        assert broker.depth() == {"ready": 1, "held": 0}
        broker.pull = real_pull  # type: ignore[method-assign]
        ((ack_id, _payload),) = broker.dequeue()
        assert broker.depth() == {"ready": 0, "held": 1}
        broker.acknowledge(ack_id)
    finally:
        broker.purge_queue()


def _recording_sleeps(monkeypatch) -> list[float]:
    """The pauses the brokers take from now on (each still taken)."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(djangoq, "time", SimpleNamespace(time=time.time, monotonic=time.monotonic, sleep=sleep))
    return waits


def _pulled(broker: OrmBroker | RedisBroker, *groups: str) -> None:
    """Send a message of one run of each job in ``groups``, then have the pusher take them
    all (one or more dequeues), checking each and acknowledging it."""
    sent = [(uuid.uuid4().int % 10**9, group) for group in groups]
    for run_id, group in sent:
        broker.enqueue(djangoq.package(run_id=run_id, attempt=1, name=f"{group}#{run_id}.1", group=group, timeout=None))
    taken = []
    while len(taken) < len(sent):
        for ack_id, payload in broker.dequeue() or []:
            taken.append(SignedPackage.loads(payload)["args"])
            broker.acknowledge(ack_id)
    assert sorted(taken) == sorted((run_id, 1) for run_id, _group in sent)


@pytest.mark.parametrize("kind", BROKERS)
@pytest.mark.django_db
def test_a_pusher_pulls_at_most_once_per_batch_wait_while_messages_keep_coming(kind, settings, monkeypatch) -> None:
    settings.JOBS_BATCH_WAIT = 0.3
    broker = (OrmBroker if kind == "orm" else RedisBroker)(list_key=f"paced-{uuid.uuid4().hex[:8]}")
    waits = _recording_sleeps(monkeypatch)
    try:
        started = time.monotonic()
        _pulled(broker, "probe.ok")
        assert waits == []  # the first message is not held
        _pulled(broker, "probe.ok")
        # Pulled right after one that found a message: it waited out the rest of the 0.3 s.
        assert len(waits) == 1
        assert 0 < waits[0] <= 0.3
        assert time.monotonic() - started >= 0.3
        time.sleep(0.3)  # a quiet spell
        _pulled(broker, "probe.ok")
        assert len(waits) == 1
        settings.JOBS_BATCH_WAIT = 0  # off
        _pulled(broker, "probe.ok")
        assert len(waits) == 1
    finally:
        broker.purge_queue()


@pytest.mark.parametrize("kind", BROKERS)
@pytest.mark.django_db
def test_a_pull_that_hands_out_a_whole_bulk_is_followed_at_once(kind, settings, monkeypatch) -> None:
    # More may be waiting: a backlog, or a stream of messages that cannot share, is not
    # held to a bulk per JOBS_BATCH_WAIT.
    settings.JOBS_BATCH_WAIT = 0.3
    monkeypatch.setattr(Conf, "BULK", 2)
    broker = (OrmBroker if kind == "orm" else RedisBroker)(list_key=f"paced-{uuid.uuid4().hex[:8]}")
    waits = _recording_sleeps(monkeypatch)
    try:
        _pulled(broker, "probe.ok")
        _pulled(broker, "probe.ok", "probe.permanent")  # paced: the pull before found one
        assert len(waits) == 1
        _pulled(broker, "probe.ok")  # after a whole bulk: at once
        assert len(waits) == 1
        _pulled(broker, "probe.ok")  # after a pull of one: paced again
        assert len(waits) == 2
    finally:
        broker.purge_queue()


@needs_redis
def test_ending_the_lease_of_a_dead_workers_redis_message_puts_it_back_first() -> None:
    broker = RedisBroker(list_key=f"lease-end-{uuid.uuid4().hex[:8]}")
    try:
        task_id, ack_id = _leased(broker)
        broker.enqueue("later")
        assert broker.leases_end({"some-other-task"}) == 0
        assert broker.leases_end({task_id}) == 1
        assert broker.leases_end({task_id}) == 0  # back on the list already
        assert broker.dequeue()[0][0] == ack_id
    finally:
        broker.purge_queue()


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
@pytest.mark.parametrize("broker", BROKERS)
def test_a_worker_killed_in_a_shared_message_costs_only_its_own_run(broker, monkeypatch) -> None:
    monkeypatch.setattr(Conf, "WORKERS", 1)  # this process packs all four runs into one message
    # A lease far longer than the wait below: the runs after the killed one go on only
    # because the sentinel ends the lease of the dead worker's message.
    lease = {"JOBS_MESSAGE_LEASE": "600", "Q_RETRY": "600"}
    with running_cluster(broker=broker, workers=1, env=lease) as cluster:
        runs = probes.slow.enqueue_many(
            [{"key": "killed", "seconds": 30}, *({"key": f"after{n}", "seconds": 0} for n in range(3))]
        )
        wait_for(lambda: ProbeExecution.objects.filter(key="killed").exists(), message="job did not start")
        (worker,) = [w for w in cluster.workers() if "processing" in " ".join(w.cmdline())]
        os.kill(worker.pid, signal.SIGKILL)

        def finished() -> bool:
            return not JobRun.objects.filter(pk__in=[run.pk for run in runs]).exclude(status="succeeded").exists()

        wait_for(finished, timeout=40, message=cluster.output)
    killed, *after = (JobRun.objects.get(pk=run.pk) for run in runs)
    assert killed.attempt == 2
    assert killed.history[0]["error_code"] == "worker_lost"
    assert [run.attempt for run in after] == [1, 1, 1]
    assert ProbeExecution.objects.filter(key__startswith="after").count() == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_slow_runs_in_a_shared_message_are_handed_to_idle_workers(monkeypatch) -> None:
    monkeypatch.setattr(Conf, "WORKERS", 1)
    with running_cluster(broker="orm", workers=3) as cluster:
        runs = probes.slow.enqueue_many([{"key": f"s{n}", "seconds": 1} for n in range(4)])

        def finished() -> bool:
            return not JobRun.objects.filter(pk__in=[run.pk for run in runs]).exclude(status="succeeded").exists()

        wait_for(finished, timeout=30, message=cluster.output)
    first, *rest = (JobRun.objects.get(pk=run.pk) for run in runs)
    # The first run spent the message's budget; each of the others went out on its own.
    assert len({first.task_id, *(run.task_id for run in rest)}) == 4


def _enqueued_one_by_one(job, count: int, prefix: str) -> list[JobRun]:
    """Runs enqueued one at a time, each committed on its own: a message each."""
    return [job.enqueue(key=f"{prefix}{n}") for n in range(count)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("orm")
class TestMergedAtPull:
    """A pull that finds more messages than the cluster has workers is a backlog: the
    messages of one run each that belong to one job are merged into shared messages."""

    @pytest.fixture(autouse=True)
    def _pull(self, monkeypatch, settings) -> None:
        monkeypatch.setattr(Conf, "BULK", 4)
        monkeypatch.setattr(Conf, "POLL", 0)
        settings.JOBS_BATCH_MAX = 20

    def test_a_backlog_of_single_messages_of_one_job_is_pulled_as_shared_messages(self, settings) -> None:
        ok = _enqueued_one_by_one(probes.ok, 12, "ok")
        permanent = _enqueued_one_by_one(probes.permanent, 2, "p")
        before = timezone.now()
        tasks = pulled_all(OrmBroker(list_key=Conf.CLUSTER_NAME))
        # Twelve runs of one job for four workers: three per message; two runs of another
        # job are fewer than the workers, and go out as they were.
        assert sorted(len(runs_of(task)) for task in tasks) == [1, 1, 3, 3, 3, 3]
        assert sorted(run_id for task in tasks for run_id in runs_of(task)) == sorted(r.pk for r in ok + permanent)
        shared = [task for task in tasks if task["func"] == djangoq.RUNNER_MANY]
        assert {task["group"] for task in shared} == {"probe.ok"}
        assert [runs_of(task) for task in shared] == [[r.pk for r in ok[n : n + 3]] for n in range(0, 12, 3)]
        assert shared[0]["timeout"] == probes.ok.timeout_seconds + math.ceil(settings.JOBS_BATCH_BUDGET)
        # The shared messages replaced their parts in the queue, leased as the pull left them.
        rows = OrmQ.objects.filter(key=Conf.CLUSTER_NAME)
        assert sorted(rows.values_list("pk", flat=True)) == sorted(task["ack_id"] for task in tasks)
        assert all(row.lock > before for row in rows)

    def test_runs_of_merged_messages_each_run_once_and_every_message_is_acknowledged(self) -> None:
        runs = _enqueued_one_by_one(probes.ok, 10, "m")
        tasks = pulled_all(OrmBroker(list_key=Conf.CLUSTER_NAME))
        assert len(tasks) == 4  # 3, 3, 3, 1
        for task in tasks:
            executed(task)
        assert set(JobRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)) == {"succeeded"}
        assert ProbeExecution.objects.filter(key__startswith="m").count() == 10
        assert not OrmQ.objects.filter(key=Conf.CLUSTER_NAME).exists()

    def test_no_more_messages_than_workers_are_handed_out_as_they_were(self) -> None:
        _enqueued_one_by_one(probes.ok, 4, "few")
        ids = sorted(OrmQ.objects.values_list("pk", flat=True))
        tasks = pulled_all(OrmBroker(list_key=Conf.CLUSTER_NAME))
        assert [task["ack_id"] for task in tasks] == ids
        assert {task["func"] for task in tasks} == {djangoq.RUNNER}

    def test_what_a_pull_cannot_merge_beyond_bulk_is_given_back_at_once(self, monkeypatch) -> None:
        monkeypatch.setattr(Conf, "WORKERS", 2)
        monkeypatch.setattr(Conf, "BULK", 2)
        # Three jobs, two runs each, for two workers: a run per worker's share, nothing merged.
        for job in (probes.ok, probes.permanent, probes.slow):
            for n in range(2):
                job.enqueue(key=f"g{n}", **({"seconds": 0} if job is probes.slow else {}))
        broker = OrmBroker(list_key=Conf.CLUSTER_NAME)
        first = broker.dequeue()
        now = timezone.now()
        locks = list(OrmQ.objects.order_by("id").values_list("pk", "lock"))
        leased = [pk for pk, lock in locks if lock > now]
        assert len(leased) == 2  # the bulk this pusher holds: one handed out, one pre-fetched
        assert first[0][0] == leased[0]
        assert sum(1 for _pk, lock in locks if lock <= now) == 4  # due again, for any cluster
        assert len(pulled_all(broker)) == 5  # the pre-fetched one, then those given back

    def test_a_batch_maximum_of_one_merges_nothing(self, settings) -> None:
        settings.JOBS_BATCH_MAX = 1
        _enqueued_one_by_one(probes.ok, 9, "one")
        tasks = pulled_all(OrmBroker(list_key=Conf.CLUSTER_NAME))
        assert len(tasks) == 9
        assert {task["func"] for task in tasks} == {djangoq.RUNNER}


@needs_redis
@pytest.mark.django_db(transaction=True)
def test_a_backlog_of_single_redis_messages_is_pulled_as_shared_messages(settings, monkeypatch) -> None:
    settings.JOBS_BROKER = "redis"
    settings.JOBS_BATCH_MAX = 20
    monkeypatch.setattr(Conf, "WORKERS", 4)
    monkeypatch.setattr(Conf, "BULK", 4)
    monkeypatch.setattr(Conf, "CLUSTER_NAME", f"merge-{uuid.uuid4().hex[:8]}")
    broker = djangoq.get_broker()
    try:
        ok = _enqueued_one_by_one(probes.ok, 12, "r")
        permanent = _enqueued_one_by_one(probes.permanent, 2, "p")
        handed = broker.dequeue()
        tasks = [
            SignedPackage.loads(payload.decode() if isinstance(payload, bytes) else payload) for _, payload in handed
        ]
        # As with the ORM broker: three to a message for four workers; the two runs of
        # another job go out as they were, and the pull hands out four messages (bulk).
        assert [len(runs_of(task)) for task in tasks] == [3, 3, 3, 3]
        assert [run_id for task in tasks for run_id in runs_of(task)] == [run.pk for run in ok]
        # The merged messages replaced their parts among the pulled ones; the two messages
        # beyond bulk went back to the head of the list.
        assert broker.depth() == {"ready": 2, "held": 4}
        for ack_id, _payload in handed:
            broker.acknowledge(ack_id)
        assert broker.depth() == {"ready": 2, "held": 0}
        rest = broker.dequeue()
        assert [SignedPackage.loads(payload)["args"] for _, payload in rest] == [(r.pk, 1) for r in permanent]
    finally:
        broker.purge_queue()


@needs_redis
def test_the_redis_pusher_does_not_take_a_message_that_names_a_run_unsigned_for_a_task() -> None:
    # Only a message in the runs' own database may name a run unsigned: one found on Redis
    # goes to the pusher as it is, which drops it as an unsigned message.
    broker = RedisBroker(list_key=f"unsigned-{uuid.uuid4().hex[:8]}")
    try:
        broker.enqueue("jobs.run:1:1:probe.ok")
        assert broker.dequeue() == [(b"jobs.run:1:1:probe.ok", b"jobs.run:1:1:probe.ok")]
        with pytest.raises(BadSignature):
            SignedPackage.loads("jobs.run:1:1:probe.ok")
    finally:
        broker.purge_queue()


@needs_redis
@pytest.mark.django_db
def test_a_single_redis_enqueue_sends_a_signed_message_that_names_its_run(
    settings, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    settings.JOBS_BROKER = "redis"
    monkeypatch.setattr(Conf, "CLUSTER_NAME", f"named-{uuid.uuid4().hex[:8]}")
    broker = djangoq.get_broker()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            run = probes.ok.enqueue(key="named")
        (message,) = broker.connection.lrange(broker.list_key, 0, -1)
        assert message.startswith(f"jobs.srun:{run.pk}:1:probe.ok:".encode())
        ((ack_id, payload),) = broker.dequeue()
        # The message is its own ack id; the pusher gets django-q2's signed task, with the
        # task id the run records at its claim (so a dead worker's lease can be ended).
        assert ack_id == message
        task = SignedPackage.loads(payload)
        assert (task["func"], task["args"], task["id"]) == (djangoq.RUNNER, (run.pk, 1), f"r{run.pk}.1")
        assert broker.depth() == {"ready": 0, "held": 1}
        assert broker.leases_end({task["id"]}) == 1
        assert broker.dequeue()[0][0] == message
        broker.acknowledge(message)
        assert broker.depth() == {"ready": 0, "held": 0}
    finally:
        broker.purge_queue()


def _all_due_now() -> int:
    """Make every delayed message of this cluster's queue, and its runs, due at once (a backlog)."""
    JobRun.objects.filter(status="queued").update(due_at=timezone.now())
    if djangoq.settings.JOBS_BROKER == "orm":
        return OrmQ.objects.filter(key=Conf.CLUSTER_NAME).update(lock=timezone.now())
    broker = djangoq.get_broker()
    delayed = broker.connection.zrange(broker.delayed_key, 0, -1)
    broker.connection.zadd(broker.delayed_key, dict.fromkeys(delayed, 0))
    return len(delayed)


def _queue_empty() -> bool:
    if djangoq.settings.JOBS_BROKER == "orm":
        return not OrmQ.objects.filter(key=Conf.CLUSTER_NAME).exists()
    return djangoq.get_broker().depth() == {"ready": 0, "held": 0}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker", BROKERS)
def test_a_backlog_of_single_enqueues_is_drained_by_a_cluster_in_shared_messages(broker) -> None:
    # A budget the runs will not spend, however slow the machine: none is sent on alone.
    with running_cluster(broker=broker, workers=2, env={"JOBS_BATCH_BUDGET": "60"}) as cluster:
        # Thirty messages of a run each, all due at once: the cluster's next pull finds them
        # together (due later at first, so that none is pulled while they are being sent).
        runs = [probes.ok.enqueue(key=f"drain{n}", _delay=3600) for n in range(30)]
        assert _all_due_now() == 30

        def finished() -> bool:
            return not JobRun.objects.filter(pk__in=[r.pk for r in runs]).exclude(status="succeeded").exists()

        wait_for(finished, timeout=30, message=cluster.output)
        wait_for(_queue_empty, timeout=30, message=cluster.output)  # every message acknowledged
    executions = list(ProbeExecution.objects.filter(key__startswith="drain").values_list("key", flat=True))
    assert sorted(executions) == sorted(f"drain{n}" for n in range(30))
    # Thirty runs for two workers: shared messages, up to JOBS_BATCH_MAX runs each.
    assert len(set(JobRun.objects.filter(pk__in=[r.pk for r in runs]).values_list("task_id", flat=True))) <= 2
