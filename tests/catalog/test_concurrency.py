"""Processors started at the same time, each on its own database session."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from catalog import services
from tests.catalog.conftest import make_projects, out_of_sync_count, pending_count, run_sql

pytestmark = pytest.mark.django_db(transaction=True)


def test_processors_started_together_never_process_an_event_twice() -> None:
    projects = make_projects(200)
    for round_ in range(5):
        run_sql("UPDATE projects SET name = name || %s WHERE id = ANY(%s)", [f" r{round_}", [p.pk for p in projects]])
    assert pending_count() == 1000
    start = threading.Barrier(4)
    results: list[dict] = []

    def process() -> None:
        try:
            start.wait()
            while True:
                outcome = services.catalog_sync_events_process(batch_size=20, reenqueue=False)
                results.append(outcome)
                if outcome.get("skipped") != "locked" or not pending_count():
                    break
        finally:
            connection.close()

    threads = [threading.Thread(target=process) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert pending_count() == 0
    assert out_of_sync_count() == 0
    # Every event was taken by exactly one run: the counts add up to the events, no more.
    assert sum(r["processed_events"] for r in results) == 1000
    working = [r for r in results if r["processed_events"]]
    assert all(r.get("skipped") is None for r in working)
