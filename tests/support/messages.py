"""A cluster's messages seen from a test: what a pusher hands out, and a worker's execution."""

from __future__ import annotations

from typing import Any

from django_q.signing import SignedPackage

from project.jobs import djangoq, runner


def pulled_all(broker: djangoq.OrmBroker) -> list[dict[str, Any]]:
    """Every message one pusher would hand out now, in order, as its tasks."""
    tasks = []
    while (pulled := broker.dequeue()) is not None:
        ((ack_id, payload),) = pulled
        task = SignedPackage.loads(payload)
        task["ack_id"] = ack_id
        tasks.append(task)
    return tasks


def runs_of(task: dict[str, Any]) -> list[int]:
    """The ids of the runs a message names."""
    if task["func"] == djangoq.RUNNER:
        return [task["args"][0]]
    assert task["func"] == djangoq.RUNNER_MANY
    return [run_id for run_id, _attempt in task["args"][0]]


def executed(task: dict[str, Any]) -> str:
    """What a worker does with a message: pre_execute, then its function."""
    runner.remember_task_id(None, task=task)
    entry = runner.execute_many if task["func"] == djangoq.RUNNER_MANY else runner.execute
    return entry(*task["args"])
