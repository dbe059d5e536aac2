"""A worker's claim and success commit asynchronously (JOBS_WORKER_ASYNC_COMMIT), for their
own statement only: never a caller's transaction, never the statements after them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, transaction

from project.jobs import transitions
from project.jobs.testing import messages_held
from tests.support import jobs as probes


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return str(cursor.fetchone()[0])


@contextmanager
def _modes_asked() -> Iterator[list[Any]]:
    """The commit mode each toolkit statement passed (its ``synchronous_commit`` parameter)."""
    asked: list[Any] = []

    def wrapper(execute, sql, params, many, context):
        if "set_config('synchronous_commit'" in sql:
            asked.append(params[-1])
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield asked


def _claim_and_succeed(key: str) -> None:
    with messages_held():  # no cluster another test started can take them
        first, second = probes.ok.enqueue_many([{"key": f"{key}1"}, {"key": f"{key}2"}])
    run = transitions.claim(first.pk, 1, worker="host:1", task_id="t1")
    assert run is not None
    recorded, claimed = transitions.succeed_then_claim(
        run, None, progress=None, claim_id=second.pk, claim_attempt=1, worker="host:1", task_id="t1"
    )
    assert recorded
    assert claimed is not None
    assert transitions.succeed(claimed, {"ok": True}, progress=None)


@pytest.mark.django_db(transaction=True)
def test_a_workers_claim_and_success_commit_asynchronously_and_the_next_statement_waits_again() -> None:
    assert _synchronous_commit() == "on"
    with _modes_asked() as asked:
        _claim_and_succeed("async")
    # The claim, the success with the next claim, the last success.
    assert asked == ["off", "off", "off"]
    assert _synchronous_commit() == "on"  # for that statement's transaction only


@pytest.mark.django_db(transaction=True)
def test_every_worker_commit_waits_when_asynchronous_commits_are_turned_off(settings) -> None:
    settings.JOBS_WORKER_ASYNC_COMMIT = False
    with _modes_asked() as asked:
        _claim_and_succeed("sync")
    assert asked == [None, None, None]


@pytest.mark.django_db(transaction=True)
def test_a_claim_inside_a_callers_transaction_leaves_its_commit_mode_alone() -> None:
    with transaction.atomic(), _modes_asked() as asked:
        _claim_and_succeed("inside")
        assert _synchronous_commit() == "on"
    assert asked == [None, None, None]


@pytest.mark.django_db
def test_the_mode_a_statement_asks_for_holds_for_its_transaction(monkeypatch) -> None:
    # Inside the test's transaction, so the setting the statement made can be read back.
    with messages_held():
        run = probes.ok.enqueue(key="held")
    monkeypatch.setattr(transitions, "_commit_mode", lambda: "off")
    assert transitions.claim(run.pk, 1, worker="host:1", task_id="t1") is not None
    assert _synchronous_commit() == "off"
