"""CI catalog business logic: resources, the sync-event processor, resync and pruning.

How a change reaches a resource (DESIGN.md §4 "catalog"):

1. The trigger on ``projects`` records a pending ``SyncEvent`` per affected resource, for
   every UPDATE however it is made, and sends ``pg_notify('catalog_sync_events')``.
2. The processor (``catalog_sync_events_process``) is started three ways: after a project
   update through the application commits (``catalog_project_updated``), every minute by
   a schedule (``tasks.process_sync_events``), and by the ``catalog_listen`` command within
   about a second of any commit that recorded events.
3. It runs one at a time cluster-wide (a session advisory lock), syncs batches with one
   set-based statement each, commits each batch with its events marked processed, and
   enqueues itself again while pending events remain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from catalog import metrics, sql
from catalog.models import SYNCED_FIELDS, CatalogResource, SyncEvent
from project import locks
from project.errors import Conflict, NotFound, ValidationFailed
from project.models import ApplicationSetting, Project

logger = logging.getLogger(__name__)

#: One queued processor run at most: bursts of requests collapse into it.
DEDUPE_KEY = "catalog-sync"
#: Other pending events of a batch's resources marked along with it, per claimed event.
SIBLINGS_PER_EVENT = 10
#: Seconds before the next run when pending events could not be taken (row-locked elsewhere).
STALLED_RETRY_DELAY = 5

Progress = Callable[[dict[str, Any]], None]


# --- resources --------------------------------------------------------------------------


@transaction.atomic
def catalog_resource_create(*, project_id: int, state: int = CatalogResource.State.DRAFT) -> CatalogResource:
    """Make a project a catalog resource, copying its name, description and visibility.

    The project row is locked (FOR NO KEY UPDATE) while its values are copied: an UPDATE
    of the project running at the same time either commits first (and its values are
    copied) or waits for this transaction, and then its trigger sees the new resource and
    records an event.
    """
    project = Project.objects.select_for_update(no_key=True).filter(pk=project_id).first()
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    if CatalogResource.objects.filter(project_id=project_id).exists():
        raise Conflict(f"project {project.path_with_namespace} is already a catalog resource")
    return CatalogResource.objects.create(
        project=project,
        state=state,
        name=project.name,
        description=project.description,
        visibility_level=project.visibility_level,
    )


@transaction.atomic
def catalog_resource_set_state(*, resource_id: int, state: int) -> bool:
    """Publish or unpublish a resource; False when it was already in that state."""
    if state not in CatalogResource.State.values:
        raise ValidationFailed(f"unknown catalog resource state {state!r}")
    return bool(
        CatalogResource.objects.filter(pk=resource_id)
        .exclude(state=state)
        .update(state=state, updated_at=timezone.now())
    )


def catalog_resource_ids_for_projects(*, project_ids: Iterable[int]) -> tuple[list[int], list[int]]:
    """The resources of these projects, and the project ids that have none."""
    wanted = sorted(set(project_ids))
    found = dict(CatalogResource.objects.filter(project_id__in=wanted).values_list("project_id", "id"))
    return sorted(found.values()), [pk for pk in wanted if pk not in found]


# --- starting the processor --------------------------------------------------------------


def catalog_sync_enabled() -> bool:
    return ApplicationSetting.current().catalog_sync_enabled


def catalog_processor_running() -> bool:
    """Whether some session holds the processor lock right now."""
    return locks.lock_held(sql.PROCESSOR_LOCK)


def catalog_sync_request(*, source: str) -> bool:
    """Have the processor run soon if events wait; True when a run was enqueued (or one
    already waits).

    Call it only after the events to process have committed. Nothing is enqueued while
    a processor holds the lock: that run checks for pending events after releasing the
    lock and enqueues itself again, so events committed before this call are not missed.
    """
    if not catalog_sync_enabled():
        logger.debug("catalog sync is switched off; not enqueueing", extra={"source": source})
        return False
    if catalog_processor_running() or not SyncEvent.objects.pending().exists():
        return False
    from catalog import tasks

    tasks.process_sync_events.enqueue(_dedupe_key=DEDUPE_KEY)
    metrics.SYNC_REQUESTS.labels(source=source).inc()
    return True


def catalog_project_updated(*, project: Project, fields: Iterable[str]) -> None:
    """Hook called by ``project.services.project_update`` inside its transaction.

    The trigger has already recorded the events (same transaction); this wakes the
    processor once they commit, like GitLab's ``after_commit`` callback on Project.
    """
    if not set(fields) & set(SYNCED_FIELDS):
        return
    if not CatalogResource.objects.filter(project_id=project.pk).exists():
        return
    transaction.on_commit(lambda: catalog_sync_request(source="project_update"), robust=True)


# --- processing --------------------------------------------------------------------------


def catalog_sync_events_pending_stats() -> dict[str, Any]:
    """Pending count, oldest pending creation time and its age (admin, metrics, commands)."""
    pending = SyncEvent.objects.pending()
    oldest = pending.order_by("id").values_list("created_at", flat=True).first()
    age = (timezone.now() - oldest).total_seconds() if oldest else 0.0
    return {"pending": pending.count(), "oldest_created_at": oldest, "oldest_age_seconds": max(age, 0.0)}


def _estimated_pending() -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql.ESTIMATED_PENDING)
        return int(cursor.fetchone()[0])


def _process_batch(*, batch_size: int, results: dict[str, Any]) -> tuple[int, int]:
    """Claim, sync and mark one batch in one transaction: (claimed, resources written)."""
    with transaction.atomic(), connection.cursor() as cursor:
        # A batch lost to a server crash is rolled back whole and redone: its events are
        # pending again. So the commit need not wait for the WAL flush.
        cursor.execute("SET LOCAL synchronous_commit = off")
        locks.xact_lock(sql.RESOURCE_WRITE_LOCK)
        cursor.execute(sql.PROCESS_BATCH, {"batch_size": batch_size, "sibling_limit": batch_size * SIBLINGS_PER_EVENT})
        claimed, marked, synced, lags = cursor.fetchone()
        results["consumable_events"] += marked
    results["processed_events"] += marked
    for lag in lags:
        metrics.SYNC_LAG.observe(max(lag, 0.0))
    metrics.EVENTS_PROCESSED.inc(marked)
    metrics.RESOURCES_SYNCED.labels(source="events").inc(synced)
    return claimed, synced


def catalog_sync_events_process(
    *,
    batch_size: int | None = None,
    max_batches: int | None = None,
    time_budget: float | None = None,
    reenqueue: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Process pending sync events (GitLab's ``Ci::ProcessSyncEventsService``).

    Returns GitLab's results hash: ``estimated_total_events`` (pending when the run
    started), ``consumable_events`` (taken by this run) and ``processed_events`` (synced
    and committed), plus ``skipped`` ("disabled" or "locked") when it did nothing.
    Each batch commits on its own, so a failure loses only the batch in flight, which
    stays pending and is redone.
    """
    batch_size = batch_size or settings.CATALOG_SYNC_BATCH_SIZE
    time_budget = settings.CATALOG_SYNC_RUN_SECONDS if time_budget is None else time_budget
    results: dict[str, Any] = {"estimated_total_events": 0, "consumable_events": 0, "processed_events": 0}
    if not catalog_sync_enabled():
        # Events accumulate; turning the switch on sends a notification that drains them.
        results.update(estimated_total_events=_estimated_pending(), skipped="disabled")
        logger.info("catalog sync is switched off; events wait", extra=results)
        return results
    with locks.session_lock(sql.PROCESSOR_LOCK) as acquired:
        if not acquired:
            # The holder checks for pending events after releasing the lock, so giving up
            # here loses nothing (and re-enqueueing would spin while it runs).
            results["skipped"] = "locked"
            logger.info("another catalog sync processor is running", extra=results)
            return results
        results["estimated_total_events"] = _estimated_pending()
        deadline = time.monotonic() + time_budget
        batches = synced = 0
        try:
            while True:
                claimed, written = _process_batch(batch_size=batch_size, results=results)
                batches += 1
                synced += written
                if progress is not None:
                    progress({**results, "batches": batches, "resources_synced": synced})
                if claimed < batch_size:
                    break  # drained, as far as this snapshot could see
                if (max_batches and batches >= max_batches) or time.monotonic() >= deadline:
                    break
        finally:
            logger.info(
                "catalog sync events processed",
                extra={**results, "batches": batches, "resources_synced": synced},
            )
    if reenqueue and SyncEvent.objects.pending().exists():
        # After the lock is released: a run that found it taken relies on this check. A run
        # that took nothing although events wait found them row-locked by another
        # transaction: come back a little later instead of spinning.
        from catalog import tasks

        delay = 0 if results["processed_events"] else STALLED_RETRY_DELAY
        tasks.process_sync_events.enqueue(_dedupe_key=DEDUPE_KEY, _delay=delay)
        results["reenqueued"] = True
    return results


# --- resync and pruning ------------------------------------------------------------------


def catalog_resources_resync(
    *, resource_ids: Iterable[int] | None = None, batch_size: int | None = None, progress: Progress | None = None
) -> dict[str, int]:
    """Copy the projects' values into the given resources (all when None) now, whatever
    the events say. Resources already in sync are not written.
    Returns ``checked`` and ``updated`` counts."""
    batch_size = batch_size or settings.CATALOG_SYNC_BATCH_SIZE
    wanted = None if resource_ids is None else sorted(set(resource_ids))
    total = CatalogResource.objects.count() if wanted is None else len(wanted)
    checked = updated = 0
    after = 0
    while True:
        if wanted is None:
            chunk = list(
                CatalogResource.objects.filter(pk__gt=after).order_by("pk").values_list("pk", flat=True)[:batch_size]
            )
        else:
            chunk = wanted[checked : checked + batch_size]
        if not chunk:
            break
        with transaction.atomic(), connection.cursor() as cursor:
            locks.xact_lock(sql.RESOURCE_WRITE_LOCK)
            cursor.execute(sql.RESYNC, {"ids": chunk})
            written = cursor.rowcount
        checked += len(chunk)
        updated += written
        after = chunk[-1]
        metrics.RESOURCES_SYNCED.labels(source="resync").inc(written)
        if progress is not None:
            progress({"checked": checked, "total": total, "updated": updated})
    result = {"checked": checked, "updated": updated}
    logger.info("catalog resources resynced", extra=result)
    return result


def catalog_sync_events_prune(*, older_than_days: int | None = None, batch_size: int | None = None) -> int:
    """Delete processed events created more than the retention ago, in short batches."""
    days = older_than_days or settings.CATALOG_EVENT_RETENTION_DAYS
    batch_size = batch_size or settings.CATALOG_PRUNE_BATCH_SIZE
    cutoff = timezone.now() - timedelta(days=days)
    after = deleted = 0
    count: int  # rows deleted by one batch
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql.PRUNE_BATCH, {"after": after, "cutoff": cutoff, "batch_size": batch_size})
            last_id, reached_cutoff, count = cursor.fetchone()
        deleted += count
        if last_id is None or reached_cutoff:
            break
        after = last_id
    logger.info("catalog sync events pruned", extra={"deleted": deleted, "retention_days": days})
    return deleted
