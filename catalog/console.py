"""What the CI catalog shows in the job console: its pending sync events."""

from __future__ import annotations

from django.urls import reverse

from catalog import services
from project.jobs import Backlog


def catalog_backlog() -> list[Backlog]:
    stats = services.catalog_sync_events_pending_stats()
    return [
        Backlog(
            "Catalog sync events pending",
            stats["pending"],
            oldest_age_seconds=stats["oldest_age_seconds"] or None,
            url=reverse("admin:catalog_syncevent_changelist") + "?status__exact=1",
            warn=stats["oldest_age_seconds"] > 120,
        )
    ]
