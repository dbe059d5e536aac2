"""``project.db.prepared_cursor``: the hot paths' statements are prepared once per connection,
and nothing else is."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from project.db import prepared_cursor
from project.models import ApplicationSetting, User
from tests.exports.test_status_queries import STATES

pytestmark = pytest.mark.django_db

_SQL = "SELECT username FROM users WHERE id = %s AND is_active = %s"


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [statement for (statement,) in cursor.fetchall()]


def test_a_statement_run_through_a_prepared_cursor_is_prepared_once_and_answers_as_before(maintainer) -> None:
    answers = []
    for _ in range(3):
        with prepared_cursor() as cursor:
            cursor.execute(_SQL, [maintainer.pk, True])
            answers.append(cursor.fetchone())

    assert answers == [(maintainer.username,)] * 3
    assert _prepared() == ["SELECT username FROM users WHERE id = $1 AND is_active = $2"]


def test_other_statements_are_never_prepared_however_often_they_run(maintainer) -> None:
    for _ in range(10):
        User.objects.filter(pk=maintainer.pk).first()
        with connection.cursor() as cursor:
            cursor.execute(_SQL, [maintainer.pk, True])

    assert _prepared() == []
    # psycopg keeps no count of them either (with a threshold it keeps the last 100 texts).
    assert connection.connection.prepare_threshold is None


def test_with_prepared_statements_off_nothing_is_prepared(maintainer, settings) -> None:
    settings.DB_PREPARED_STATEMENTS = False

    with prepared_cursor() as cursor:
        cursor.execute(_SQL, [maintainer.pk, True])
        assert cursor.fetchone() == (maintainer.username,)

    assert _prepared() == []


def test_captured_queries_show_a_prepared_statement_with_its_values(maintainer) -> None:
    with CaptureQueriesContext(connection) as captured, prepared_cursor() as cursor:
        cursor.execute(_SQL, [maintainer.pk, True])

    assert [query["sql"] for query in captured.captured_queries] == [
        f"SELECT username FROM users WHERE id = {maintainer.pk} AND is_active = true"
    ]


def _alter_under_a_prepared_statement() -> str:
    """A table whose column changes type while a statement that returns it stays prepared
    (a migration run while the processes keep their connections)."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE migrated (id int, value int)")
        cursor.execute("INSERT INTO migrated VALUES (1, 2)")
    sql = "SELECT id, value FROM migrated WHERE id = %s"
    with prepared_cursor() as cursor:
        cursor.execute(sql, [1])
        assert cursor.fetchone() == (1, 2)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE migrated ALTER COLUMN value TYPE bigint")
    return sql


@pytest.mark.django_db(transaction=True)
def test_a_statement_prepared_before_a_migration_changed_its_columns_is_prepared_again() -> None:
    sql = _alter_under_a_prepared_statement()

    for _ in range(2):
        with prepared_cursor() as cursor:
            cursor.execute(sql, [1])
            assert cursor.fetchone() == (1, 2)


@pytest.mark.django_db(transaction=True)
def test_with_psycopgs_own_preparing_turned_on_a_stale_plan_is_prepared_again_too() -> None:
    """``OPTIONS: {"prepare_threshold": N}`` in the database settings, and the migration
    run by another process (psycopg drops its statements itself after DDL of its own)."""
    table = f"migrated_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (id int, value int)")
        cursor.execute(f"INSERT INTO {table} VALUES (1, 2)")
    connection.connection.prepare_threshold = 0
    sql = f"SELECT id, value FROM {table} WHERE id = %s"
    try:
        with prepared_cursor() as cursor:
            cursor.execute(sql, [1])
        with psycopg.connect(_conninfo(), autocommit=True) as other:
            other.execute(f"ALTER TABLE {table} ALTER COLUMN value TYPE bigint")
        with prepared_cursor() as cursor:
            cursor.execute(sql, [1])
            assert cursor.fetchone() == (1, 2)
        assert connection.connection.prepare_threshold == 0  # left as the settings set it
    finally:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {table}")


def _conninfo() -> str:
    settings = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=settings["NAME"],
        user=settings["USER"],
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        password=settings["PASSWORD"] or None,
    )


def test_inside_a_transaction_only_the_statement_that_met_the_old_plan_fails() -> None:
    sql = _alter_under_a_prepared_statement()

    with (
        pytest.raises(DatabaseError, match="cached plan must not change result type"),
        transaction.atomic(),
        prepared_cursor() as cursor,
    ):
        cursor.execute(sql, [1])
    with prepared_cursor() as cursor:  # the same transaction, back at its savepoint
        cursor.execute(sql, [1])
        assert cursor.fetchone() == (1, 2)


def test_a_status_poll_runs_prepared_statements(api, maintainer, project) -> None:
    STATES["finished"](project, maintainer)
    ApplicationSetting.current()  # before it exists, a poll goes the usual way (three statements)
    client = api(maintainer)

    for _ in range(2):
        assert client.get(f"/api/v4/projects/{project.pk}/export").status_code == 200

    statements = _prepared()
    assert len(statements) == 1  # the token, the project with the access level and the state, at once
    assert "personal_access_tokens" in statements[0]
    assert "project_export_jobs" in statements[0]


def test_a_status_poll_answers_the_same_without_prepared_statements(maintainer, project, token_for, settings) -> None:
    STATES["finished"](project, maintainer)
    client = Client(HTTP_PRIVATE_TOKEN=token_for(maintainer))
    url = f"/api/v4/projects/{project.pk}/export"
    prepared = client.get(url).json()

    settings.DB_PREPARED_STATEMENTS = False
    assert client.get(url).json() == prepared


def test_a_closed_preparing_cursor_is_handed_out_again_on_its_connection(maintainer) -> None:
    """It keeps the loaders and dumpers it looked up; a new cursor per call looked them up
    again."""
    raw = []
    for _ in range(2):
        with prepared_cursor() as cursor:
            cursor.execute(_SQL, [maintainer.pk, True])
            assert cursor.fetchone() == (maintainer.username,)
            raw.append(cursor.cursor)
    assert raw[0] is raw[1]


def test_a_preparing_cursor_taken_while_another_is_open_is_a_new_one(maintainer, owner) -> None:
    with prepared_cursor() as outer:
        outer.execute(_SQL, [maintainer.pk, True])
        with prepared_cursor() as inner:
            assert inner.cursor is not outer.cursor
            inner.execute(_SQL, [owner.pk, True])
            assert inner.fetchone() == (owner.username,)
        assert outer.fetchone() == (maintainer.username,)  # not the inner statement's row
    with prepared_cursor() as again:
        assert again.cursor is outer.cursor  # the connection's kept one, free again


@pytest.mark.django_db(transaction=True)
def test_a_new_connection_gets_a_cursor_of_its_own(maintainer) -> None:
    with prepared_cursor() as cursor:
        first = cursor.cursor
    connection.close()
    with prepared_cursor() as cursor:
        cursor.execute(_SQL, [maintainer.pk, True])
        assert cursor.fetchone() == (maintainer.username,)
        assert cursor.cursor is not first


_TIMESTAMPS = (
    "2026-11-30 19:56:13.123456+00",
    "2026-11-30 19:56:13+00",
    "2026-03-29 01:30:00.5+02:00",
    "1999-12-31 23:59:59.999999-08",
    "0001-01-01 00:00:00+00",
    "0044-03-15 12:00:00+00 BC",
    "infinity",
    "-infinity",
)


def _read(cursor, literal: str) -> object:
    try:
        cursor.execute("SELECT %s::timestamptz", [literal])
        value = cursor.fetchone()[0]
    except DatabaseError as exc:
        return type(exc), str(exc)
    return value, value.tzinfo


@pytest.mark.django_db
@pytest.mark.parametrize("use_tz", [True, False])
def test_every_cursor_reads_timestamps_as_djangos_own_loader_does(settings, use_tz) -> None:
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format

    from project.postgresql.base import IsoTzLoader

    settings.USE_TZ = use_tz
    settings.TIME_ZONE = "America/New_York"
    for literal in _TIMESTAMPS:
        with transaction.atomic(), connection.cursor() as django_own:
            register_tzloader(connection.timezone, django_own.cursor)
            expected = _read(django_own, literal)
        for make in (connection.cursor, prepared_cursor):
            with transaction.atomic(), make() as cursor:
                assert _read(cursor, literal) == expected, (make, literal)
                # Read by the fast loader (both give the same).
                assert issubclass(cursor.cursor.adapters.get_loader(1184, Format.TEXT), IsoTzLoader)


@pytest.mark.django_db
def test_a_prepared_cursor_reads_the_instant_whatever_the_sessions_time_zone() -> None:
    import datetime as dt

    with transaction.atomic(), prepared_cursor() as cursor:
        cursor.execute("SET LOCAL TIME ZONE 'Asia/Tokyo'")
        cursor.execute("SELECT %s::timestamptz", ["2026-11-30 19:56:13.123456+00"])
        value = cursor.fetchone()[0]
    assert value == dt.datetime(2026, 11, 30, 19, 56, 13, 123456, tzinfo=dt.UTC)
    assert value.utcoffset() == dt.timedelta(0)
