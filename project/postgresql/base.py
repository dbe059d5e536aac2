"""Django's PostgreSQL backend, with ``CONN_HEALTH_CHECKS`` only where they help.

With persistent connections (``CONN_MAX_AGE``) and health checks, Django tests a reused
connection with a ``SELECT 1`` before the first query of every request and of every job:
one more round trip each time, a tenth of the export status endpoint's database work
under load. A connection goes bad when PostgreSQL restarts or a network path drops it,
and that happens to connections at rest: a connection that answered a query less than
``DB_HEALTH_CHECK_IDLE`` seconds ago (default 1 s) is used without the check; one idle
for longer is checked as before, so a server that sat idle through a database restart
does not fail its first request. A connection that breaks mid-request still fails that
request (answered 503 with ``Retry-After``, see ``project.api``) and is replaced at its end,
as with the stock backend. ``DB_HEALTH_CHECK_IDLE=0`` checks every time (Django's own
behaviour).
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    #: time.monotonic() when a cursor was last taken on the current connection.
    last_used_at = float("-inf")
    # Set by BaseDatabaseWrapper (CONN_HEALTH_CHECKS); django-stubs does not declare them.
    health_check_enabled: bool
    health_check_done: bool

    def close_if_health_check_failed(self) -> None:
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and time.monotonic() - self.last_used_at < getattr(settings, "DB_HEALTH_CHECK_IDLE", 1.0)
        ):
            self.health_check_done = True  # in use a moment ago: as good as checked
            return
        super().close_if_health_check_failed()

    def _cursor(self, name: str | None = None) -> Any:
        cursor = super()._cursor(name)  # type: ignore[misc]  # private Django API, not in django-stubs
        self.last_used_at = time.monotonic()
        return cursor

    def connect(self) -> None:
        super().connect()
        self.last_used_at = time.monotonic()
