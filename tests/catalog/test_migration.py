"""The trigger migration has a working reverse."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from catalog.models import SyncEvent
from tests.catalog.conftest import make_projects, run_sql, run_sql_scalar

# no_broker: committed rows are seen by any session cluster another test left running.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_broker")]

TRIGGERS = (
    "SELECT count(*) FROM pg_trigger WHERE tgname IN"
    " ('trigger_catalog_resource_sync_event_on_project_update', 'trigger_catalog_sync_enabled')"
)


def _migrate(target: str) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("catalog", target)])


def test_the_trigger_migration_reverses_and_applies_again() -> None:
    make_projects(2)
    try:
        _migrate("0001_resources_and_sync_events")
        assert run_sql_scalar(TRIGGERS) == 0
        assert run_sql_scalar("SELECT count(*) FROM pg_proc WHERE proname = 'insert_catalog_resource_sync_event'") == 0
        run_sql("UPDATE projects SET name = name || '!'")
        assert not SyncEvent.objects.exists()
    finally:
        _migrate("0002_sync_event_triggers")

    assert run_sql_scalar(TRIGGERS) == 2
    run_sql("UPDATE projects SET name = name || '!'")
    assert SyncEvent.objects.count() == 2
