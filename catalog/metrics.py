"""CI catalog sync metrics. Label values come from closed sets only.

Counters and the histogram are written by whichever process runs the processor (a job
worker, a command) and merged at ``/metrics`` by prometheus_client's multiprocess mode.
The queue depth and age are read from PostgreSQL at scrape time (``catalog_gauges``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

EVENTS_PROCESSED = Counter("catalog_sync_events_processed_total", "Catalog sync events marked processed.")
RESOURCES_SYNCED = Counter(
    "catalog_resources_synced_total",
    "Catalog resources whose copied fields were rewritten, by source: events or resync.",
    ["source"],
)
SYNC_LAG = Histogram(
    "catalog_sync_lag_seconds",
    "Time from a resource's oldest pending sync event to its processing (one observation per resource per batch).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 21600, 86400),
)
SYNC_REQUESTS = Counter(
    "catalog_sync_requests_total",
    "Processor runs enqueued by a starter: project_update, listener or admin.",
    ["source"],
)


def catalog_gauges() -> Iterable[Metric]:
    """Pending events and the age of the oldest, read at scrape time."""
    from catalog.services import catalog_sync_enabled, catalog_sync_events_pending_stats

    stats = catalog_sync_events_pending_stats()
    pending = GaugeMetricFamily("catalog_sync_events_pending", "Catalog sync events waiting to be processed.")
    pending.add_metric([], stats["pending"])
    yield pending
    age = GaugeMetricFamily(
        "catalog_sync_events_oldest_pending_age_seconds", "Age of the oldest pending catalog sync event (0 if none)."
    )
    age.add_metric([], stats["oldest_age_seconds"])
    yield age
    enabled = GaugeMetricFamily("catalog_sync_enabled", "1 while the admin switch lets events be processed.")
    enabled.add_metric([], 1 if catalog_sync_enabled() else 0)
    yield enabled
