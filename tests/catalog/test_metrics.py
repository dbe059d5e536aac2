"""Catalog sync metrics at /metrics."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from prometheus_client import REGISTRY

from catalog import services
from catalog.models import SyncEvent
from tests.catalog.conftest import make_projects, run_sql

pytestmark = pytest.mark.django_db


def _sample(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _scraped(client, name: str) -> float:
    text = client.get("/metrics").content.decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} is not exported"
    return float(match.group(1))


def test_processing_counts_events_resources_and_the_sync_lag() -> None:
    make_projects(3)
    run_sql("UPDATE projects SET name = name || '!'")
    run_sql("UPDATE projects SET name = name || '?'")
    before = (
        _sample("catalog_sync_events_processed_total"),
        _sample("catalog_resources_synced_total", {"source": "events"}),
        _sample("catalog_sync_lag_seconds_count"),
    )

    services.catalog_sync_events_process()

    after = (
        _sample("catalog_sync_events_processed_total"),
        _sample("catalog_resources_synced_total", {"source": "events"}),
        _sample("catalog_sync_lag_seconds_count"),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [6, 3, 3]


def test_pending_events_and_the_oldest_age_are_read_at_scrape_time(client, resource) -> None:
    now = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
    for minutes in (10, 2):
        SyncEvent.objects.create(
            catalog_resource_id=resource.pk, project_id=resource.project_id, created_at=now - timedelta(minutes=minutes)
        )

    with time_machine.travel(now, tick=False):
        assert _scraped(client, "catalog_sync_events_pending") == 2
        assert _scraped(client, "catalog_sync_events_oldest_pending_age_seconds") == 600
        assert _scraped(client, "catalog_sync_enabled") == 1
