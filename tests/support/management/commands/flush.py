"""Django's ``flush``, which a transactional test's teardown runs, tried again when it
loses a deadlock.

A cluster one test starts serves the rest of its session (``tests.conftest.cluster``). A
worker's claim locks ``job_runs`` then ``job_pauses``; the flush's TRUNCATE locks every
table in name order, ``job_pauses`` first. If a run is claimed just as a test ends, the
two deadlock, and PostgreSQL may pick the TRUNCATE to fail: the worker's side is already
tried again by the toolkit, the teardown's would fail a test that passed.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError
from django.core.management.commands import flush

DEADLOCK = "40P01"
TRIES = 5


def _deadlocked(exc: BaseException | None) -> bool:
    while exc is not None:
        if getattr(exc, "sqlstate", None) == DEADLOCK:
            return True
        exc = exc.__cause__
    return False


class Command(flush.Command):
    def handle(self, **options: Any) -> None:
        for tried in range(1, TRIES + 1):
            try:
                super().handle(**options)
            except CommandError as exc:
                if tried == TRIES or not _deadlocked(exc):
                    raise
                time.sleep(0.1 * tried)
            else:
                return
