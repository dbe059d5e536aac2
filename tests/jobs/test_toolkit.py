"""The job toolkit in-process: policies, classification, claims, recovery, schedules."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import uuid
from datetime import timedelta
from unittest.mock import ANY

import pytest
import time_machine
from django.db import OperationalError
from django.utils import timezone
from django_q.models import OrmQ, Schedule
from django_q.signing import SignedPackage

from project import context
from project.errors import PermanentError, RetryableError
from project.jobs import RetryPolicy, djangoq, recovery, registry, runner, schedules, testing
from project.jobs.djangoq import OrmBroker, RedisBroker
from project.jobs.models import JobRun
from tests.conftest import BROKERS, needs_redis
from tests.support import jobs as probes
from tests.support.models import ProbeExecution

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _orm_broker(settings) -> None:
    # These tests inspect django-q2's queue table; the Redis broker has its own test below.
    settings.JOBS_BROKER = "orm"


def test_retry_policy_gives_each_delay_then_none() -> None:
    policy = RetryPolicy(delays=(4, 16, 64))
    assert policy.max_attempts == 4
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [4, 16, 64, None]


def test_retry_policy_reads_its_setting(settings) -> None:
    settings.SDRS_RETRY_DELAYS = (1, 2)
    assert RetryPolicy(setting="SDRS_RETRY_DELAYS").delay_after(2) == 2
    assert RetryPolicy(setting="SDRS_RETRY_DELAYS").max_attempts == 3


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (RetryableError("x", code="sdrs_unavailable"), "retryable", "sdrs_unavailable"),
        (PermanentError("x", code="sdrs_auth"), "permanent", "sdrs_auth"),
        (OperationalError("server closed the connection"), "retryable", "database_unavailable"),
        (KeyError("boom"), "unexpected", "unexpected_error"),
    ],
)
def test_errors_are_classified(exc, kind, code) -> None:
    assert runner.classify(exc)[:2] == (kind, code)


def test_job_names_are_a_closed_set() -> None:
    assert {"jobs.recover", "jobs.prune_runs", "probe.ok"} <= set(registry.names())
    run = JobRun.objects.create(name="no.such.job")
    assert runner.execute(run.pk, 1) == "failed"
    run.refresh_from_db()
    assert run.error_code == "unknown_job"


def test_a_job_name_must_be_one_a_message_can_name() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="letters, digits"):
        registry.job("two words")
    # A run of a job whose name could not be named (none declared now) is sent signed.
    message = djangoq.run_message(run_id=7, attempt=2, job="old name", timeout=None, names=True)
    assert djangoq.message_task(message)["args"] == (7, 2)
    assert djangoq.run_message(run_id=7, attempt=2, job="probe.ok", timeout=None, names=True) == "jobs.run:7:2:probe.ok"
    # Elsewhere (Redis is not the runs' database) it names the run, signed.
    signed = djangoq.run_message(run_id=7, attempt=2, job="probe.ok", timeout=None, names=False)
    assert signed.startswith("jobs.srun:7:2:probe.ok:")
    assert djangoq.message_task(signed, plain=False)["args"] == (7, 2)


def test_a_signed_message_that_names_a_run_is_read_only_with_its_signature(settings) -> None:
    signed = djangoq.run_message(run_id=7, attempt=2, job="probe.ok", timeout=None, names=False)
    task = djangoq.message_task(signed, plain=False)
    assert (task["func"], task["args"], task["group"], task["id"]) == (djangoq.RUNNER, (7, 2), "probe.ok", "r7.2")
    assert task["timeout"] == probes.ok.timeout_seconds
    assert djangoq.message_task(signed.encode(), plain=False) == task | {"started": ANY}
    # Another run, attempt or job under the same signature; the name unsigned; a
    # signature of another key: none is read.
    for forged in (
        signed.replace(":7:2:", ":8:2:"),
        signed.replace(":7:2:", ":7:3:"),
        signed.replace("probe.ok", "probe.permanent"),
        "jobs.run:7:2:probe.ok",
        "jobs.srun:7:2:probe.ok",
    ):
        assert djangoq.message_task(forged, plain=False) is None, forged
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "another key of at least fifty characters, for the signer only"
    assert djangoq.message_task(signed, plain=False) is None
    # A key being rotated out still reads the messages it signed.
    settings.SECRET_KEY_FALLBACKS = [old_key]
    assert djangoq.message_task(signed, plain=False)["args"] == (7, 2)


def test_job_arguments_must_be_ids_or_flags() -> None:
    with pytest.raises(TypeError, match="must be an id"):
        probes.ok.enqueue(key={"nested": "secret"})


@pytest.mark.django_db(transaction=True)
def test_a_run_and_its_orm_message_commit_together_or_not_at_all() -> None:
    from django.db import connections, transaction

    def enqueue_then_fail() -> None:
        with transaction.atomic():
            probes.ok.enqueue(key="rolled back")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        enqueue_then_fail()
    assert not JobRun.objects.filter(kwargs__key="rolled back").exists()
    assert not OrmQ.objects.exists()

    other = connections.create_connection("default")  # as a pulling cluster sees the queue
    try:
        with transaction.atomic():
            run = probes.ok.enqueue(key="kept")
            with other.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM django_q_ormq")
                assert cursor.fetchone() == (0,)  # not before the run is committed
        with other.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM django_q_ormq")
            assert cursor.fetchone() == (1,)
    finally:
        other.close()
    assert djangoq.message_task(OrmQ.objects.values_list("payload", flat=True).get())["args"] == (run.pk, 1)


@needs_redis
def test_a_redis_message_goes_out_only_after_commit(settings, django_capture_on_commit_callbacks) -> None:
    settings.JOBS_BROKER = "redis"
    broker = djangoq.get_broker()
    broker.purge_queue()
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            run = probes.ok.enqueue(key="a")
        assert run.status == "queued"
        assert broker.depth()["ready"] == 0
        assert len(callbacks) == 1
        callbacks[0]()
        assert broker.depth()["ready"] == 1
    finally:
        broker.purge_queue()


@pytest.mark.parametrize("broker", BROKERS)
def test_runs_recorded_while_messages_are_held_send_none_when_their_transaction_commits_later(
    broker, settings, django_capture_on_commit_callbacks
) -> None:
    # A test's transaction that commits after its hold ended once sent them to a cluster
    # another test left running, whose claims then deadlocked with the test's teardown.
    settings.JOBS_BROKER = broker
    queue = djangoq.get_broker()
    queue.purge_queue()
    try:
        with django_capture_on_commit_callbacks(execute=True) as callbacks, testing.messages_held():
            probes.ok.enqueue(key="single")
            probes.ok.enqueue_many([{"key": "a"}, {"key": "b"}])
            probes.ok.enqueue(key="deduped", _dedupe_key="d")
        assert (callbacks, queue.depth()["ready"]) == ([], 0)
        # Without the hold, the same commit sends them.
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            probes.ok.enqueue_many([{"key": "c"}, {"key": "d"}])
        assert len(callbacks) == 1
        assert queue.depth()["ready"] > 0
    finally:
        queue.purge_queue()


def test_enqueue_records_the_request_id(django_capture_on_commit_callbacks) -> None:
    with context.bind(request_id="req-42"), django_capture_on_commit_callbacks(execute=True):
        run = probes.ok.enqueue(key="a")
    assert run.request_id == "req-42"


def test_an_enqueued_run_and_its_message_are_stored_as_their_models_say(django_capture_on_commit_callbacks) -> None:
    with context.bind(request_id="req-9"), django_capture_on_commit_callbacks(execute=True):
        run = probes.ok.enqueue(key="a")
    stored = JobRun.objects.get(pk=run.pk)
    for field in JobRun._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(run, field.attname), field.name
    assert (stored.status, stored.kwargs, stored.history, stored.request_id) == ("queued", {"key": "a"}, [], "req-9")
    (message,) = OrmQ.objects.all()
    assert message.lock == run.due_at
    task = djangoq.message_task(message.payload)
    # Written with the run, it names the run; the pusher makes it the task django-q2 expects,
    # with a task id the run records at its claim.
    assert message.payload == f"jobs.run:{run.pk}:1:probe.ok"
    assert task["args"] == (run.pk, 1)
    assert (task["func"], task["group"], task["timeout"]) == (djangoq.RUNNER, "probe.ok", probes.ok.timeout_seconds)
    assert task["id"] == f"r{run.pk}.1"
    ((ack_id, payload),) = OrmBroker(list_key=message.key).dequeue()
    assert ack_id == message.pk
    assert SignedPackage.loads(payload) == task | {"started": SignedPackage.loads(payload)["started"]}


def test_enqueue_many_inserts_runs_and_messages_in_bulk(django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        runs = probes.ok.enqueue_many([{"key": str(n)} for n in range(50)])
    assert len({run.pk for run in runs}) == 50
    # Packed several to a message (tests/jobs/test_batches.py), every run in one of them.
    sent = [SignedPackage.loads(payload)["args"] for payload in OrmQ.objects.values_list("payload", flat=True)]
    assert sorted(run_id for (pairs,) in sent for run_id, _attempt in pairs) == sorted(run.pk for run in runs)


def test_enqueue_many_gives_each_run_its_own_delay(django_capture_on_commit_callbacks) -> None:
    before = timezone.now()
    with context.bind(request_id="req-7"), django_capture_on_commit_callbacks(execute=True):
        runs = probes.flaky.enqueue_many([{"key": str(n), "failures": n} for n in range(5)], _delays=[40, 0, 20, 0, 10])

    stored = {run.pk: run for run in JobRun.objects.filter(pk__in=[run.pk for run in runs])}
    assert [stored[run.pk].kwargs for run in runs] == [{"key": str(n), "failures": n} for n in range(5)]
    delays = [round((stored[run.pk].due_at - before).total_seconds()) for run in runs]
    assert delays == [40, 0, 20, 0, 10]
    assert {(row.name, row.status, row.max_attempts, row.request_id, row.attempt) for row in stored.values()} == {
        ("probe.flaky", "queued", 3, "req-7", 1)
    }
    assert [run.due_at for run in runs] == [stored[run.pk].due_at for run in runs]
    assert OrmQ.objects.count() == 5


def test_enqueue_many_refuses_delays_that_do_not_match_the_runs() -> None:
    with pytest.raises(ValueError, match="2 delays for 3 runs"):
        probes.ok.enqueue_many([{"key": "a"}, {"key": "b"}, {"key": "c"}], _delays=[1, 2])
    assert not JobRun.objects.exists()


@pytest.mark.parametrize("broker_class", [OrmBroker, pytest.param(RedisBroker, marks=needs_redis)])
def test_delayed_message_is_held_until_its_due_time(broker_class) -> None:
    broker = broker_class(list_key=f"delay-test-{uuid.uuid4().hex[:8]}")
    try:
        broker.enqueue_at("later", timezone.now() + timedelta(seconds=30))
        broker.enqueue_at("now", timezone.now())
        ((ack_id, payload),) = broker.dequeue()
        assert payload in ("now", b"now")
        broker.acknowledge(ack_id)
        assert broker.dequeue() is None
        with time_machine.travel(timezone.now() + timedelta(seconds=31)):
            assert [payload for _, payload in broker.dequeue()] in (["later"], [b"later"])
    finally:
        broker.purge_queue()


@pytest.mark.django_db(transaction=True)
def test_a_pull_while_the_database_is_away_is_nothing_yet_and_pulls_resume_when_it_is_back(monkeypatch) -> None:
    # django-q2's pusher sleeps 10 s and exits when a pull raises: after an outage of any
    # length, nothing would be pulled for up to 10 s more.
    from django.db import connection

    from tests.support.web import free_port

    monkeypatch.setattr(djangoq, "PULL_RETRY_PAUSE", 0)
    broker = OrmBroker(list_key=f"outage-{uuid.uuid4().hex[:8]}")
    broker.enqueue("waiting")
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = free_port()  # nothing listens there: refused
    try:
        assert broker.dequeue() is None
        assert broker.dequeue() is None
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    ((_ack_id, payload),) = broker.dequeue()
    assert payload == "waiting"


@needs_redis
def test_a_pull_while_redis_is_away_is_nothing_yet_and_pulls_resume_when_it_is_back(monkeypatch) -> None:
    from tests.support.web import free_port

    monkeypatch.setattr(djangoq, "PULL_RETRY_PAUSE", 0)
    broker = RedisBroker(list_key=f"outage-{uuid.uuid4().hex[:8]}")
    pool = broker.connection.connection_pool
    port = pool.connection_kwargs["port"]
    try:
        broker.enqueue("waiting")
        pool.disconnect()
        pool.connection_kwargs["port"] = free_port()  # nothing listens there: refused
        pool.reset()  # forget the connections made to the real port
        assert broker.dequeue() is None
        pool.connection_kwargs["port"] = port
        pool.reset()
        assert [payload for _, payload in broker.dequeue()] == [b"waiting"]
    finally:
        pool.connection_kwargs["port"] = port
        broker.purge_queue()


@needs_redis
def test_a_pulled_redis_message_comes_back_when_its_lease_ends_unless_acknowledged() -> None:
    """As an ORM message: the messages a dead cluster had pulled are taken by another."""
    lease = djangoq.message_lease()
    broker = RedisBroker(list_key=f"lease-test-{uuid.uuid4().hex[:8]}")
    try:
        broker.enqueue("kept")
        broker.enqueue("done")
        pulled: list[tuple[bytes, bytes]] = []
        while len(pulled) < 2:
            pulled += broker.dequeue()
        assert [payload for _, payload in pulled] == [b"kept", b"done"]
        assert broker.depth() == {"ready": 0, "held": 2}
        broker.acknowledge(pulled[1][0])  # the ack_id the monitor is given

        assert broker.pull(now=time.time() + lease - 1) == []  # leased
        assert broker.pull(now=time.time() + lease + 1) == [b"kept"]  # its lease ended: pulled again
        broker.acknowledge(b"kept")
        assert broker.pull(now=time.time() + 120) == []
        assert broker.depth() == {"ready": 0, "held": 0}
    finally:
        broker.purge_queue()


def test_orm_broker_hands_out_due_messages_oldest_due_first() -> None:
    broker = OrmBroker(list_key="order-test")
    now = timezone.now()
    for name, seconds_ago in (("b", 5), ("c", 1), ("a", 10)):
        broker.enqueue_at(name, now - timedelta(seconds=seconds_ago))
    assert [broker.dequeue()[0][1] for _ in range(3)] == ["a", "b", "c"]


def test_a_claimed_run_is_not_run_twice() -> None:
    run = JobRun.objects.create(name="probe.ok", kwargs={"key": "once"})
    assert runner.execute(run.pk, 1) == "succeeded"
    assert runner.execute(run.pk, 1) == "duplicate"
    assert ProbeExecution.objects.filter(key="once").count() == 1


def test_a_stale_message_for_an_older_attempt_is_ignored() -> None:
    run = JobRun.objects.create(name="probe.ok", kwargs={"key": "stale"}, attempt=2)
    assert runner.execute(run.pk, 1) == "duplicate"
    assert not ProbeExecution.objects.exists()


def test_a_message_that_comes_back_before_its_run_is_due_leaves_the_run_for_its_time(
    django_capture_on_commit_callbacks,
) -> None:
    # The run was deferred after this message was sent (a lost run put back, a database
    # fault): the message, come back after its lease, must not run it early.
    run = JobRun.objects.create(name="probe.ok", kwargs={"key": "early"}, due_at=timezone.now() + timedelta(seconds=60))
    with django_capture_on_commit_callbacks(execute=True):
        assert runner.execute(run.pk, 1) == "early"
    assert not ProbeExecution.objects.exists()
    assert JobRun.objects.get(pk=run.pk).status == "queued"
    assert OrmQ.objects.get().lock == run.due_at  # sent again for its time, in case it had no other
    with time_machine.travel(run.due_at):
        assert runner.execute(run.pk, 1) == "succeeded"


def test_a_run_due_within_a_second_is_claimed_on_time() -> None:
    # Hosts' clocks differ a little: a message sent at the due time by another's must not bounce.
    run = JobRun.objects.create(name="probe.ok", kwargs={"key": "soon"}, due_at=timezone.now() + timedelta(seconds=0.5))
    assert runner.execute(run.pk, 1) == "succeeded"


def test_retryable_failure_schedules_the_next_attempt_after_the_policy_delay(
    django_capture_on_commit_callbacks,
) -> None:
    with (
        time_machine.travel("2026-11-23 10:00:00Z", tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        run = JobRun.objects.create(name="probe.flaky", kwargs={"key": "f", "failures": 5})
        assert runner.execute(run.pk, 1) == "retried"
    run.refresh_from_db()
    assert (run.status, run.attempt, run.error_code) == ("queued", 2, "probe_transient")
    assert run.due_at.isoformat() == "2026-11-23T10:00:01+00:00"
    assert OrmQ.objects.get().lock == run.due_at


def test_retry_after_hint_lengthens_the_delay() -> None:
    with time_machine.travel("2026-11-23 10:00:00Z", tick=False):
        run = JobRun.objects.create(name="probe.fail_once", kwargs={"delay": 3.5})
        runner.execute(run.pk, 1)
    run.refresh_from_db()
    assert run.due_at.isoformat() == "2026-11-23T10:00:03.500000+00:00"


def test_permanent_failure_runs_the_failure_hook_once(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(probes.permanent, "on_failure", lambda run, code, message: calls.append((run.pk, code)))
    run = JobRun.objects.create(name="probe.permanent", kwargs={"key": "p"})
    assert runner.execute(run.pk, 1) == "failed"
    assert calls == [(run.pk, "probe_permanent")]


def test_a_failing_hook_still_fails_the_run(monkeypatch) -> None:
    def broken(run, code, message):
        raise RuntimeError("hook bug")

    monkeypatch.setattr(probes.permanent, "on_failure", broken)
    run = JobRun.objects.create(name="probe.permanent", kwargs={"key": "p"})
    runner.execute(run.pk, 1)
    run.refresh_from_db()
    assert run.status == "failed"


def test_lost_run_is_retried_by_the_sweep_then_failed_when_attempts_run_out(monkeypatch) -> None:
    hooked = []
    monkeypatch.setattr(probes.slow, "on_failure", lambda run, code, message: hooked.append(code))
    start = timezone.now()
    run = JobRun.objects.create(
        name="probe.slow", kwargs={"key": "k", "seconds": 0}, status="running", heartbeat_at=start, started_at=start
    )
    assert not any(recovery.runs_recover().values())
    with time_machine.travel(start + timedelta(seconds=60)):
        assert recovery.runs_recover()["lost_retried"] == 1
    run.refresh_from_db()
    assert (run.status, run.attempt, run.error_code) == ("queued", 2, "worker_lost")
    JobRun.objects.filter(pk=run.pk).update(status="running", heartbeat_at=start)
    with time_machine.travel(start + timedelta(seconds=120)):
        assert recovery.runs_recover()["lost_failed"] == 1
    run.refresh_from_db()
    assert run.status == "failed"
    assert hooked == ["worker_lost"]


def _worker_gone() -> str:
    """A worker of this host that has exited."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    return f"{socket.gethostname()}:{dead.pid}"


@pytest.mark.parametrize(
    "worker",
    [
        pytest.param(_worker_gone, id="a dead worker"),
        # This worker is claiming another run, so the one recorded as running in it is
        # not: a database crash took back the success it recorded (asynchronous commit),
        # or it gave up recording an outcome. Its heartbeat is fresh: no waiting for
        # lost_after.
        pytest.param(lambda: f"{socket.gethostname()}:{os.getpid()}", id="this very worker"),
    ],
)
@pytest.mark.parametrize(
    ("outage_seen", "expected"), [(True, ("queued", 1, 1, [])), (False, ("queued", 2, 0, ["worker_lost"]))]
)
def test_a_redelivered_message_of_a_worker_that_died_in_a_database_outage_costs_no_attempt(
    monkeypatch, worker, outage_seen, expected
) -> None:
    # The worker that takes the message again saw the database fail a moment ago (its
    # claim waited for it): the dead worker most likely died of the same outage, stuck
    # recording its outcome until its budget ran out, as its sentinel would judge it.
    monkeypatch.setattr(djangoq, "_database_failed_at", None)
    now = timezone.now()
    run = JobRun.objects.create(
        name="probe.slow",
        kwargs={"key": "outage", "seconds": 0},
        status="running",
        worker=worker(),
        started_at=now,
        heartbeat_at=now,
    )
    if outage_seen:
        djangoq.database_failed()
    assert runner.execute(run.pk, 1) == "recovered"
    run.refresh_from_db()
    charged = [entry["error_code"] for entry in run.history]
    assert (run.status, run.attempt, run.deferrals, charged) == expected


def test_a_duplicate_message_for_a_run_this_worker_executes_is_ignored() -> None:
    run = JobRun.objects.create(name="probe.delivered_twice")
    assert runner.execute(run.pk, 1) == "succeeded"
    run.refresh_from_db()
    assert (run.status, run.result) == ("succeeded", "duplicate")


@pytest.mark.parametrize(("heard_after_start", "expected"), [(False, "deferred"), (True, "failed")])
def test_a_lost_run_last_heard_from_before_the_database_started_is_not_charged(
    monkeypatch, heard_after_start, expected
) -> None:
    # The process that finds it (a sentinel between two checks, the minute sweep on another
    # host) may never have seen the outage; the server's start time tells every process.
    from django.db import connection

    monkeypatch.setattr(djangoq, "_database_failed_at", None)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        (started,) = cursor.fetchone()
    heard = started + timedelta(seconds=1 if heard_after_start else -1)
    run = JobRun.objects.create(
        name="probe.ok",
        kwargs={"key": "crash"},
        status="running",
        worker="elsewhere:1",
        started_at=heard,
        heartbeat_at=heard,
    )
    with time_machine.travel(heard + timedelta(seconds=120)):
        assert recovery.run_recover_lost(run_id=run.pk) == expected
    run.refresh_from_db()
    assert run.attempt == 1
    assert [entry["error_code"] for entry in run.history] == ([] if expected == "deferred" else ["worker_lost"])


def test_a_start_alone_sends_again_only_the_runs_whose_messages_a_dead_cluster_had_pulled(monkeypatch) -> None:
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "WORKERS", 4)
    monkeypatch.setattr(Conf, "BULK", 1)
    runs = [probes.ok.enqueue(key=f"s{n}") for n in range(3)]  # each with its message
    queue = runs[0].queue
    # A cluster pulls one message (leased) and dies; the two others wait in the queue.
    ((pulled, _payload),) = OrmBroker(list_key=queue).dequeue()
    assert OrmQ.objects.filter(key=queue, lock__gt=timezone.now()).values_list("pk", flat=True).get() == pulled
    before = {run.pk: JobRun.objects.get(pk=run.pk).pushed_at for run in runs}
    assert recovery.runs_repush_stranded(queue=queue, waiting_for=0) == 1
    again = [run.pk for run in runs if JobRun.objects.get(pk=run.pk).pushed_at != before[run.pk]]
    assert again == [runs[0].pk]  # the oldest: the one the pull took


def test_queued_run_whose_message_was_lost_is_pushed_again(django_capture_on_commit_callbacks) -> None:
    old = timezone.now() - timedelta(hours=1)
    JobRun.objects.create(name="probe.ok", kwargs={"key": "lost"}, due_at=old, pushed_at=old)
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.runs_recover()["repushed"] == 1
    assert OrmQ.objects.count() == 1
    assert recovery.runs_recover()["repushed"] == 0


def test_finished_runs_are_pruned_after_retention() -> None:
    old = timezone.now() - timedelta(days=8)
    JobRun.objects.create(name="probe.ok", status="succeeded", finished_at=old)
    JobRun.objects.create(name="probe.ok", status="failed", finished_at=old)
    JobRun.objects.create(name="probe.ok", status="cancelled", finished_at=old)
    keep = JobRun.objects.create(name="probe.ok", status="succeeded", finished_at=timezone.now())
    queued = JobRun.objects.create(name="probe.ok")
    assert recovery.runs_prune(batch_size=1) == 3
    assert set(JobRun.objects.values_list("pk", flat=True)) == {keep.pk, queued.pk}


def test_schedules_are_upserted_by_name() -> None:
    Schedule.objects.all().delete()
    Schedule.objects.create(
        name="gone.job", func=schedules.SCHEDULED_FUNC, schedule_type=Schedule.CRON, cron="* * * * *"
    )
    assert schedules.schedules_sync()["removed"] == 1
    recover = Schedule.objects.get(name="jobs.recover")
    assert (recover.cron, recover.func, recover.args) == ("* * * * *", schedules.SCHEDULED_FUNC, "('jobs.recover',)")
    recover.cron = "5 * * * *"
    recover.save()
    assert schedules.schedules_sync() == {"created": 0, "updated": 1, "removed": 0}
    assert Schedule.objects.get(name="jobs.recover").cron == "* * * * *"
    assert schedules.schedules_sync() == {"created": 0, "updated": 0, "removed": 0}


def test_scheduled_tasks_carry_their_job_s_declared_timeout_not_the_cluster_default() -> None:
    import ast

    from project.jobs import declared

    schedules.schedules_sync()
    for schedule in Schedule.objects.filter(func=schedules.SCHEDULED_FUNC):
        job = declared.get(schedule.name)
        assert ast.literal_eval(schedule.kwargs) == {"q_options": {"timeout": job.timeout_seconds}}, schedule.name
    Schedule.objects.filter(name="jobs.recover").update(kwargs="")
    assert schedules.schedules_sync()["updated"] == 1


def test_scheduled_run_is_recorded_and_executed() -> None:
    assert runner.run_scheduled("jobs.prune_runs") == "succeeded"
    run = JobRun.objects.get(name="jobs.prune_runs")
    assert run.scheduled
    assert run.result == {"deleted": 0}


def test_log_lines_carry_the_job_context(caplog) -> None:
    from project.logs import ContextFilter, JsonFormatter

    run = JobRun.objects.create(name="probe.flaky", kwargs={"key": "ctx", "failures": 1}, request_id="req-7")
    with caplog.at_level(logging.INFO, logger="project.jobs"):
        handler_filter = ContextFilter()
        for logger_name in ("project.jobs",):
            logging.getLogger(logger_name).addFilter(handler_filter)
        try:
            runner.execute(run.pk, 1)
        finally:
            logging.getLogger("project.jobs").removeFilter(handler_filter)
    record = next(r for r in caplog.records if "retry in" in r.getMessage())
    line = json.loads(JsonFormatter().format(record))
    assert line["job"] == "probe.flaky"
    assert line["run_id"] == run.pk
    assert line["attempt"] == 1
    assert line["request_id"] == "req-7"
    assert line["error_code"] == "probe_transient"
    assert line["level"] == "warning"


def test_a_silent_cluster_fades_then_is_pruned(settings) -> None:
    from project.jobs import overview
    from project.jobs.models import ClusterHeartbeat

    now = timezone.now()
    ClusterHeartbeat.objects.create(key="live:1", cluster_name="q", host="live", pid=1, broker="orm", last_seen=now)
    ClusterHeartbeat.objects.create(
        key="faded:2", cluster_name="q", host="faded", pid=2, broker="orm", last_seen=now - timedelta(minutes=5)
    )
    ClusterHeartbeat.objects.create(
        key="gone:3",
        cluster_name="q",
        host="gone",
        pid=3,
        broker="orm",
        last_seen=now - timedelta(seconds=settings.JOBS_CLUSTER_PRUNE_AFTER + 1),
    )
    assert [(c.host, c.alive) for c in overview.cluster_rows(now=now)] == [
        ("live", True),
        ("faded", False),
        ("gone", False),
    ]
    assert recovery.runs_recover()["clusters_pruned"] == 1
    assert sorted(ClusterHeartbeat.objects.values_list("host", flat=True)) == ["faded", "live"]
