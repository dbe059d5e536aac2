"""Daily pruning of processed events after the retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from catalog import services, tasks
from catalog.models import SyncEvent

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 6, 1, 4, 15, tzinfo=UTC)


def _event(resource, *, days_ago: float, processed: bool) -> SyncEvent:
    created = NOW - timedelta(days=days_ago)
    return SyncEvent.objects.create(
        catalog_resource_id=resource.pk,
        project_id=resource.project_id,
        created_at=created,
        status=SyncEvent.Status.PROCESSED if processed else SyncEvent.Status.PENDING,
        processed_at=created + timedelta(seconds=1) if processed else None,
    )


def test_processed_events_older_than_the_retention_are_deleted_in_batches(resource) -> None:
    old = [_event(resource, days_ago=10 - i * 0.1, processed=True) for i in range(5)]
    old_pending = _event(resource, days_ago=9, processed=False)
    recent = [_event(resource, days_ago=6, processed=True), _event(resource, days_ago=1, processed=False)]

    with time_machine.travel(NOW, tick=False):
        deleted = services.catalog_sync_events_prune(batch_size=2)

    assert deleted == 5
    remaining = set(SyncEvent.objects.values_list("pk", flat=True))
    assert remaining == {old_pending.pk, *(e.pk for e in recent)}
    assert not remaining & {e.pk for e in old}


def test_the_retention_setting_decides_what_is_old(resource, settings) -> None:
    settings.CATALOG_EVENT_RETENTION_DAYS = 2
    _event(resource, days_ago=3, processed=True)
    kept = _event(resource, days_ago=1, processed=True)

    with time_machine.travel(NOW, tick=False):
        result = tasks.prune_sync_events()

    assert result == {"deleted": 1}
    assert list(SyncEvent.objects.values_list("pk", flat=True)) == [kept.pk]


def test_pruning_an_empty_table_deletes_nothing() -> None:
    assert services.catalog_sync_events_prune() == 0
