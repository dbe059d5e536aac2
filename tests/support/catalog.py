"""The ``catalog_listen`` command in a subprocess, on the test database (like ClusterProcess)."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django_q.conf import Conf

from catalog.listener import APPLICATION_NAME
from tests.support.cluster import ManagePyProcess


def listening_backends() -> list[int]:
    """Pids of listener sessions on the test database that have run LISTEN."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"
            " AND query LIKE 'LISTEN%%'",
            [APPLICATION_NAME],
        )
        return [row[0] for row in cursor.fetchall()]


class ListenerProcess(ManagePyProcess):
    command = "catalog_listen"
    stop_timeout = 10.0

    def __init__(self, *, env: dict[str, str] | None = None) -> None:
        # It enqueues to the queue the cluster of this test serves.
        super().__init__(broker=settings.JOBS_BROKER, queue=Conf.CLUSTER_NAME, env=env)

    def start(self, timeout: float = 20) -> ListenerProcess:
        before = set(listening_backends())
        self._launch(ready=lambda: bool(set(listening_backends()) - before), timeout=timeout, interval=0.05)
        return self
