"""The django-q2 internals the toolkit's adapter (project/jobs/djangoq.py) relies on.

These fail loudly, naming what changed, when a django-q2 upgrade moves one of them, so the
adapter is fixed before a cluster silently stops beating, signing or retrying.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
from django_q import cluster, monitor, worker
from django_q.brokers import Broker
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule
from django_q.signing import SignedPackage
from django_q.status import Stat
from django_q.tasks import async_task

from project.jobs import djangoq


def test_django_q2_is_the_version_the_adapter_was_written_for() -> None:
    assert version("django-q2").startswith("1.11."), "re-check project/jobs/djangoq.py against this django-q2"


class Capture:
    """A broker that keeps the message ``async_task`` gives it."""

    list_key = "capture"
    message = ""

    def enqueue(self, message: str) -> int:
        Capture.message = message
        return 1


def test_our_message_carries_what_async_task_would_put_in_it() -> None:
    async_task(djangoq.RUNNER, 7, 2, q_options={"broker": Capture(), "task_name": "n", "group": "g", "timeout": 30})
    theirs = SignedPackage.loads(Capture.message)
    ours = SignedPackage.loads(djangoq.package(run_id=7, attempt=2, name="n", group="g", timeout=30))
    assert set(theirs) <= set(ours) | {"cached", "sync"}, f"async_task now also sets {set(theirs) - set(ours)}"
    for key in ("func", "args", "name", "group", "timeout", "ack_failure"):
        assert ours[key] == theirs[key], key
    assert len(ours["id"]) == len(theirs["id"])


def test_a_message_of_several_runs_carries_what_async_task_would_put_in_it() -> None:
    pairs = [[7, 1], [8, 2]]
    async_task(djangoq.RUNNER_MANY, pairs, q_options={"broker": Capture(), "task_name": "n", "group": "g"})
    theirs = SignedPackage.loads(Capture.message)
    ours = SignedPackage.loads(djangoq.package_many(runs=[(7, 1), (8, 2)], name="n", group="g", timeout=None))
    for key in ("func", "args", "name", "group"):
        assert ours[key] == theirs[key], key


def test_brokers_keep_the_methods_we_override_and_use() -> None:
    for base in (Broker, ORM, Redis):
        for name in ("enqueue", "dequeue", "queue_size", "purge_queue", "set_stat", "get_connection"):
            assert callable(getattr(base, name, None)), f"{base.__name__}.{name} is gone"
    assert "list_key" in inspect.signature(Broker.__init__).parameters


def test_the_sentinel_still_saves_its_status_through_the_broker() -> None:
    # Our cluster heartbeat rides on Broker.set_stat, called from the sentinel's guard loop.
    assert "Stat(self).save()" in inspect.getsource(cluster.Sentinel.guard)
    assert "set_stat(" in inspect.getsource(Stat.save)


def test_the_worker_signals_pre_execute_and_raises_timeouts_as_system_exit() -> None:
    source = inspect.getsource(worker)
    assert 'pre_execute.send(sender="django_q", func=f, task=task)' in source
    assert issubclass(djangoq.TimeoutException, SystemExit)


def test_the_monitor_acknowledges_failed_tasks_that_ask_for_it() -> None:
    assert 'task.get("ack_failure", False)' in inspect.getsource(monitor)


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (OrmQ, {"key", "payload", "lock"}),
        (Schedule, {"name", "func", "args", "schedule_type", "cron", "repeats", "next_run"}),
    ],
)
def test_the_models_we_read_and_write_keep_their_fields(model, fields) -> None:
    assert fields <= {field.name for field in model._meta.get_fields()}


def test_the_configuration_we_read_is_there() -> None:
    for name in ("CLUSTER_NAME", "RETRY", "BULK", "POLL", "ORM", "WORKERS", "ACK_FAILURES"):
        assert hasattr(Conf, name), name


def test_the_monitor_acknowledges_only_a_task_that_still_carries_its_ack_id() -> None:
    # A successful run deletes its own ORM message and drops the ack_id, so the monitor
    # must skip a task without one (and still acknowledge one that has it).
    source = inspect.getsource(monitor)
    assert 'ack_id = task.pop("ack_id", False)' in source
    assert "broker.acknowledge(ack_id)" in source


def test_the_worker_hands_the_monitor_the_task_dict_pre_execute_saw() -> None:
    # We take the ack_id off the dict in pre_execute's receiver; the worker must put that
    # same dict on the result queue.
    source = inspect.getsource(worker.worker)
    assert 'pre_execute.send(sender="django_q", func=f, task=task)' in source
    assert "result_queue.put(task)" in source


def test_the_pusher_gives_each_task_the_ack_id_of_its_message() -> None:
    from django_q import pusher

    source = inspect.getsource(pusher)
    assert 'task["ack_id"] = ack_id' in source
    # It reads each payload it is handed as a signed package: a message that names a run
    # (plain in PostgreSQL, signed on Redis) is turned into one before the pusher sees it.
    assert "task = SignedPackage.loads(task[1])" in source


def test_the_pusher_gives_up_for_10_s_when_a_pull_raises() -> None:
    # Why our brokers never raise from dequeue for an unavailable store (_unavailable):
    # when this changes, the workaround may go.
    from django_q import pusher

    source = inspect.getsource(pusher.pusher)
    assert "task_set = broker.dequeue()" in source
    assert "sleep(10)" in source


def test_the_cluster_spawns_the_sentinel_its_module_names() -> None:
    # project.jobs.cluster.sentinel_install() replaces that name with our sentinel.
    assert "target=Sentinel" in inspect.getsource(cluster.Cluster.start)


def test_the_sentinel_keeps_what_our_supervisor_overrides_and_reads() -> None:
    for name in ("spawn_process", "spawn_cluster", "spawn_worker", "spawn_pusher", "reincarnate", "guard", "stop"):
        assert callable(getattr(cluster.Sentinel, name)), name
    init = inspect.getsource(cluster.Sentinel.__init__)
    for attribute in ("self.task_queue", "self.result_queue", "self.event_out", "self.pool_size", "start=True"):
        assert attribute in init, attribute
    spawn = inspect.getsource(cluster.Sentinel.spawn_worker)
    assert 'Value("f", -1)' in spawn
    assert "self.timeout" in spawn


def test_the_worker_marks_idle_busy_and_recycled_in_its_timer() -> None:
    source = inspect.getsource(worker)
    for state in ("timer.value = -1", "timer.value = timer_value", "timer.value = -2", 'task.pop("timeout", timeout)'):
        assert state in source, state
    assert source.index("pre_execute.send") < source.index("timer.value = timer_value")


def test_the_scheduler_passes_the_q_options_of_a_schedule_s_kwargs() -> None:
    from django_q import scheduler

    source = inspect.getsource(scheduler.scheduler)
    assert 'q_options = kwargs.get("q_options", {})' in source
    assert 'kwargs["q_options"] = q_options' in source


def test_the_worker_and_the_monitor_log_the_lines_we_drop() -> None:
    # project.logs.TaskLinesFilter drops these two INFO lines by their module and text.
    assert """_("%(proc_name)s processing %(task_name)s '%(func_name)s'")""" in inspect.getsource(worker)
    assert "logger.info(task_desc)" in inspect.getsource(worker.worker)
    assert """_("Processed '%(info_name)s' (%(task_name)s)")""" in inspect.getsource(monitor)
