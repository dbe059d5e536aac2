"""The wake-up of the catalog sync processor within about a second of a raw SQL update.

The trigger on ``projects`` sends ``pg_notify('catalog_sync_events')`` with every statement
that records events; PostgreSQL delivers it when the transaction commits. This listener
(``manage.py catalog_listen``) holds one connection that LISTENs on that channel and asks
for a processor run (``services.catalog_sync_request``), at most once per debounce window:
the first notification opens a window of ``CATALOG_LISTENER_DEBOUNCE`` seconds, every
notification inside it is folded in, and one request goes out when it closes. The request
is itself deduplicated (one queued run at most) and skipped while a processor runs, which
will pick the new events up before it stops.

A lost connection (server restart, network cut, terminated backend) is retried with
backoff, forever; after every (re)connect the listener asks for one run, because
notifications sent while nobody listened are gone. TCP keepalives and an idle ``SELECT 1``
notice a dead server even when no notification arrives. Nothing is lost while it is
down: the events wait in the table and the every-minute schedule processes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from django.db import DatabaseError, close_old_connections, connection

logger = logging.getLogger(__name__)

CHANNEL = "catalog_sync_events"
APPLICATION_NAME = "gitlab-jobs-catalog-listener"
#: Pauses between reconnect attempts; the last repeats. Capped at 5 s: a reconnect attempt
#: costs one refused or timed-out connection, while a longer cap kept the listener deaf for
#: up to 30 s after PostgreSQL was back (15.7 s after a 63 s outage).
RECONNECT_DELAYS = (0.5, 1, 2, 5)
#: libpq waits for ever for an unreachable host by default; the loop must keep turning.
CONNECT_TIMEOUT = 5
#: Longest blocking wait, so a stop request is honoured within this many seconds.
MAX_WAIT = 1.0


def connect_kwargs() -> dict[str, Any]:
    """psycopg connection arguments for the default database, with keepalives."""
    params = connection.get_connection_params()
    params["application_name"] = APPLICATION_NAME
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 30)
    params.setdefault("keepalives_interval", 10)
    params.setdefault("keepalives_count", 3)
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    return params


class Listener:
    """LISTEN, debounce, request; reconnect when the connection is lost.

    ``request`` is called with no arguments when a window closes; it returns anything
    and may raise ``DatabaseError`` (retried after a pause).
    """

    def __init__(
        self,
        *,
        request: Callable[[], object],
        debounce: float,
        stop: threading.Event | None = None,
        connect: Callable[[], dict[str, Any]] = connect_kwargs,
        idle_check: float = 30.0,
        reconnect_delays: Sequence[float] = RECONNECT_DELAYS,
    ) -> None:
        self.request = request
        self.debounce = debounce
        self.stop = stop or threading.Event()
        self.connect = connect
        self.idle_check = idle_check
        self.reconnect_delays = tuple(reconnect_delays)
        self.due: float | None = None
        self.notifications = 0
        self.requests = 0
        self.connections = 0
        self._was_connected = False

    def run(self) -> None:
        """Listen until ``stop`` is set."""
        failures = 0
        while not self.stop.is_set():
            try:
                self._listen()
            except psycopg.OperationalError as exc:
                if self._was_connected:
                    failures = 0
                delay = self.reconnect_delays[min(failures, len(self.reconnect_delays) - 1)]
                failures += 1
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                logger.warning(
                    "catalog listener lost its database connection; reconnecting in %.1f s",
                    delay,
                    extra={"error": reason, "attempt": failures},
                )
                self.stop.wait(delay)

    def _listen(self) -> None:
        self._was_connected = False
        with psycopg.connect(**self.connect(), autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._was_connected = True
            self.connections += 1
            logger.info("catalog listener is listening", extra={"channel": CHANNEL, "debounce_s": self.debounce})
            # Notifications sent while nobody listened are lost: catch up once.
            self.due = time.monotonic()
            last_seen = time.monotonic()
            while not self.stop.is_set():
                got = False
                for _ in conn.notifies(timeout=self._wait(), stop_after=1):
                    got = True
                    self.notifications += 1
                    if self.due is None:
                        self.due = time.monotonic() + self.debounce
                now = time.monotonic()
                if got:
                    last_seen = now
                elif now - last_seen >= self.idle_check:
                    conn.execute("SELECT 1")
                    last_seen = now
                if self.due is not None and now >= self.due:
                    self._fire()

    def _wait(self) -> float:
        if self.due is None:
            return MAX_WAIT
        return min(MAX_WAIT, max(0.0, self.due - time.monotonic()))

    def _fire(self) -> None:
        close_old_connections()  # drops a Django connection broken by a server restart
        try:
            self.request()
        except DatabaseError:
            logger.warning("catalog listener could not request a processor run; retrying", exc_info=True)
            connection.close()
            self.due = time.monotonic() + self.reconnect_delays[1]
            return
        except Exception:  # the listener outlives a failed request; the schedule backs it up
            logger.exception("catalog listener could not request a processor run; retrying")
            self.due = time.monotonic() + self.reconnect_delays[-1]
            return
        self.requests += 1
        self.due = None
