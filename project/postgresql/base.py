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

It also prepares the hot paths' hand-written statements (``prepared_cursor``): the status
poll's three reads, the job toolkit's claim and outcome, a verification's transitions.
PostgreSQL parsed and planned each of them on every call, which cost more than running
them (the status poll's token read: 0.21 ms of server CPU unprepared, 0.05 ms prepared).
Django turns psycopg's prepared statements off (``prepare_threshold=None``) because a
connection pooler in transaction mode cannot keep them; here they are made only where
asked for, and ``DB_PREPARED_STATEMENTS=0`` turns them off for such a pooler.

Every cursor reads ``timestamptz`` with ``IsoTzLoader`` (``datetime.fromisoformat``, in C)
rather than Django's loader, which parses in Python: half the CPU of reading a page of
runs, and six values for each run a worker claims.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from django.conf import settings
from django.db.backends.postgresql import base, operations, psycopg_any
from django.db.backends.utils import CursorWrapper
from psycopg import errors
from psycopg.pq import Format, TransactionStatus

# Defined for psycopg 3 only; django-stubs declares the cursor without psycopg's methods.
_ServerBindingCursor: Any = base.ServerBindingCursor
_TIMESTAMPTZ_OID: int = base.TIMESTAMPTZ_OID
_BaseTzLoader: Any = psycopg_any.BaseTzLoader

# The cursor name that asks ``create_cursor`` for a preparing cursor (no real cursor has it).
_PREPARED = "\x00prepared"
# While a preparing cursor runs a statement, psycopg's threshold for preparing: any
# number works, as the cursor asks for preparation (``prepare=True``, which psycopg ignores
# while the threshold is None). Set only then: with a threshold, psycopg counts every
# statement the connection runs, keeping the text of the last 100 (the ORM's statements,
# whose values are inlined: a bulk INSERT's text is megabytes).
_WHILE_PREPARING = 0
_STALE_PLAN = "cached plan must not change result type"
_IDLE, _INERROR = TransactionStatus.IDLE, TransactionStatus.INERROR


class PreparingCursor(_ServerBindingCursor):
    """Binds its parameters on the server and prepares each statement on its first run on
    the connection (psycopg keeps the last ``prepared_max`` of them, 100).

    A connection keeps one of them (``kept``) and hands it out again once it is closed:
    a cursor caches the loaders of the columns it reads and the dumpers of the values it
    binds, and a new cursor for every call looked them all up again (the status poll's
    statement: 0.124 ms of Python against 0.106 ms with the kept cursor).
    """

    kept = False
    in_use = False

    def close(self) -> None:
        if not self.kept:
            super().close()
            return
        self._reset()
        self.in_use = False

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None, **kwargs: Any) -> Any:
        if prepare is False or not getattr(settings, "DB_PREPARED_STATEMENTS", True):
            return super().execute(query, params, prepare=False, **kwargs)
        connection = self.connection
        # Unless OPTIONS turned psycopg's own preparing on, for every statement.
        ours = connection.prepare_threshold is None
        if ours:
            connection.prepare_threshold = _WHILE_PREPARING
        try:
            if getattr(connection, "stale_plans", False) and connection.info.transaction_status != _INERROR:
                self._deallocate_all()
            try:
                return super().execute(query, params, prepare=True, **kwargs)
            except errors.FeatureNotSupported as exc:
                if _STALE_PLAN not in str(exc):
                    raise
                # A migration changed a column this statement returns while it stayed
                # prepared: PostgreSQL refuses the old plan until it is deallocated, on
                # every call (psycopg does not recover by itself).
                if connection.info.transaction_status != _IDLE:
                    connection.stale_plans = True  # dropped at the next call outside this failed transaction
                    raise
                self._deallocate_all()
                return super().execute(query, params, prepare=True, **kwargs)
        finally:
            if ours:
                connection.prepare_threshold = None

    def _deallocate_all(self) -> None:
        # Through psycopg, which then forgets the names it prepared (it clears its cache when
        # a statement it runs under a threshold answers DEALLOCATE ALL).
        super().execute("DEALLOCATE ALL", prepare=False)
        self.connection.stale_plans = False


class IsoTzLoader(_BaseTzLoader):
    """Django's timestamptz loader (the instant in ``timezone``, or the naive wall time
    without one), the ISO text PostgreSQL sends parsed by ``datetime.fromisoformat``, in
    C: the psycopg loader Django's subclasses parses it in Python, 3.2 us against 0.2, six
    times for each run a worker claims, eight times for each row of a list of runs. What
    ``fromisoformat`` cannot read (``infinity``, a date before Christ) goes to Django's.
    Registered on every connection (``get_new_connection``) and on a preparing cursor."""

    def load(self, data: Any) -> Any:
        try:
            value = dt.datetime.fromisoformat(bytes(data).decode())
        except ValueError:
            return super().load(data)
        if self.timezone is None:
            return value.replace(tzinfo=None)
        return value.astimezone(self.timezone)


_iso_tzloaders: dict[Any, type[IsoTzLoader]] = {}


def _register_iso_tzloader(timezone: Any, cursor: Any) -> None:
    """On a psycopg cursor or connection (either has ``adapters``)."""
    loader = _iso_tzloaders.get(timezone)
    if loader is None:
        loader = _iso_tzloaders[timezone] = type("SpecificIsoTzLoader", (IsoTzLoader,), {"timezone": timezone})
    cursor.adapters.register_loader("timestamptz", loader)


def _read_timestamps_fast(cursor: Any, timezone: Any) -> None:
    """As Django's cursors, timestamps in the connection's time zone (a test may change
    it, and Django then gives the cursor its own loader), by ``IsoTzLoader``."""
    loader = cursor.adapters.get_loader(_TIMESTAMPTZ_OID, Format.TEXT)
    if timezone != loader.timezone or not issubclass(loader, IsoTzLoader):
        _register_iso_tzloader(timezone, cursor)


class DatabaseOperations(operations.DatabaseOperations):
    def last_executed_query(self, cursor: Any, sql: str, params: Any) -> str:
        if isinstance(cursor, PreparingCursor):
            # As Django shows a server-bound statement: with its parameters inlined, for
            # the debug log and captured queries (psycopg keeps no composed text of it).
            try:
                return str(self.compose_sql(sql, params))
            except errors.DataError:
                return sql
        return super().last_executed_query(cursor, sql, params)


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations
    #: time.monotonic() when a cursor was last taken on the current connection.
    last_used_at = float("-inf")
    #: The preparing cursor of the current connection, handed out again once closed.
    kept_cursor: PreparingCursor | None = None
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

    def get_new_connection(self, conn_params: Any) -> Any:
        connection = super().get_new_connection(conn_params)
        # The cursors inherit it: no cursor copies the loaders unless the zone changed.
        _register_iso_tzloader(self.timezone, connection)
        return connection

    def create_cursor(self, name: str | None = None) -> Any:
        if name != _PREPARED:
            cursor = super().create_cursor(name)
            _read_timestamps_fast(cursor, self.timezone)
            return cursor
        kept = self.kept_cursor
        if kept is not None and kept.connection is self.connection and not kept.in_use:
            cursor = kept
        else:
            cursor = PreparingCursor(self.connection)
            if kept is None or kept.connection is not self.connection:  # else one in use: this one is closed after
                cursor.kept = True
                self.kept_cursor = cursor
        _read_timestamps_fast(cursor, self.timezone)
        cursor.in_use = True
        return cursor

    def prepared_cursor(self) -> CursorWrapper:
        """A cursor whose statements are prepared on their first run on this connection
        and only bound and executed after that. For statements written once and run
        often (parameters as ``%s`` or ``%(name)s``, bound by the server, so each must
        have a type PostgreSQL can infer). Plain ``cursor()`` otherwise."""
        return self._cursor(_PREPARED)
