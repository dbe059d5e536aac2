"""Job entry points of the CI catalog (thin: each calls one service)."""

from __future__ import annotations

from django.conf import settings

from catalog import services
from project.jobs import RetryPolicy, job


@job(
    "catalog.process_sync_events",
    cron=settings.CATALOG_SYNC_CRON,
    # Retries redo the batch a lost worker left uncommitted without waiting for the cron.
    retry=RetryPolicy(delays=(2, 10)),
    timeout=300,
)
def process_sync_events() -> dict:
    """Sync catalog resources from their projects' pending sync events."""
    return services.catalog_sync_events_process()


@job("catalog.prune_sync_events", cron=settings.CATALOG_PRUNE_CRON, timeout=3600)
def prune_sync_events() -> dict:
    """Delete processed catalog sync events past their retention."""
    return {"deleted": services.catalog_sync_events_prune()}
