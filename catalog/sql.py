"""The set-based statements behind catalog sync (kept apart so services.py reads as logic)."""

from __future__ import annotations

from catalog.models import SYNCED_FIELDS

#: The synced columns, written into the statements below (SYNCED_FIELDS names them once;
#: the trigger's migration keeps its own frozen copy, as migrations must).
_COPY = ",\n            ".join(f"{field} = p.{field}" for field in SYNCED_FIELDS)
_DIFFERS = "({r}) IS DISTINCT FROM ({p})".format(
    r=", ".join(f"r.{field}" for field in SYNCED_FIELDS), p=", ".join(f"p.{field}" for field in SYNCED_FIELDS)
)

#: The advisory locks (declared in project.locks): one processor run at a time, and every
#: multi-row writer of catalog_resources (a processor batch, a resync batch) in turn, so two
#: such UPDATEs never lock rows in opposite orders and deadlock.
PROCESSOR_LOCK = "catalog.processor"
RESOURCE_WRITE_LOCK = "catalog.resource_writes"

#: GitLab's ``upper_bound_count``: cheap (two index probes), exact when ids are dense.
ESTIMATED_PENDING = """
    SELECT COALESCE(MAX(id) - MIN(id) + 1, 0) FROM catalog_resource_sync_events WHERE status = 1
"""

#: One batch, in one statement (one snapshot):
#:
#: 1. claim up to ``batch_size`` pending events in id order, FOR UPDATE SKIP LOCKED;
#: 2. add the other pending events of the same resources (up to ``sibling_limit``): the
#:    sync below reads each project as of this statement's snapshot, which includes every
#:    change whose event is visible here, so those events are satisfied by the same sync.
#:    They are not row-locked first (that doubled the cost of a drain); only one
#:    processor runs at a time, and ``status = 1`` is rechecked when they are updated;
#: 3. mark them all processed;
#: 4. copy name, description and visibility_level from the projects, writing only the
#:    resources that differ, so redoing a batch is harmless.
#:
#: Returns the claimed and marked counts, the resources written, and per resource the
#: age of its oldest event (the sync lag histogram).
PROCESS_BATCH = """
    WITH batch AS MATERIALIZED (
        SELECT id, catalog_resource_id
        FROM catalog_resource_sync_events
        WHERE status = 1
        ORDER BY id
        LIMIT %(batch_size)s
        FOR UPDATE SKIP LOCKED
    ), resources AS MATERIALIZED (
        SELECT ARRAY(SELECT DISTINCT catalog_resource_id FROM batch) AS ids
    ), claim AS MATERIALIZED (
        SELECT ARRAY(
            SELECT id FROM batch
            UNION
            (SELECT e.id
             FROM catalog_resource_sync_events AS e, resources
             WHERE e.status = 1 AND e.catalog_resource_id = ANY(resources.ids)
             LIMIT %(sibling_limit)s)
        ) AS ids
    ), marked AS (
        UPDATE catalog_resource_sync_events AS e
        SET status = 2, processed_at = statement_timestamp()
        FROM claim
        WHERE e.id = ANY(claim.ids) AND e.status = 1
        RETURNING e.catalog_resource_id, e.created_at
    ), synced AS (
        UPDATE catalog_resources AS r
        SET {copy},
            synced_at = statement_timestamp(),
            updated_at = statement_timestamp()
        FROM projects AS p, resources
        WHERE r.id = ANY(resources.ids)
          AND p.id = r.project_id
          AND {differs}
        RETURNING r.id
    )
    SELECT
        (SELECT count(*) FROM batch),
        (SELECT count(*) FROM marked),
        (SELECT count(*) FROM synced),
        (SELECT COALESCE(array_agg(lag), '{}')
         FROM (SELECT extract(epoch FROM statement_timestamp() - min(created_at))::float8 AS lag
               FROM marked GROUP BY catalog_resource_id) AS per_resource)
""".replace("{copy}", _COPY).replace("{differs}", _DIFFERS)

#: Direct resync of the given resources, whatever the events say.
RESYNC = f"""
    UPDATE catalog_resources AS r
    SET {_COPY},
        synced_at = statement_timestamp(),
        updated_at = statement_timestamp()
    FROM projects AS p
    WHERE r.id = ANY(%(ids)s)
      AND p.id = r.project_id
      AND {_DIFFERS}
"""

#: One prune batch: walk the table in id order from ``after`` and delete processed events
#: created before the cutoff. Ids follow creation order, so the walk stops at the first
#: batch that reaches the cutoff: no index on the timestamps is needed, and pending
#: events, however old, are never deleted.
PRUNE_BATCH = """
    WITH candidates AS MATERIALIZED (
        SELECT id, status, created_at
        FROM catalog_resource_sync_events
        WHERE id > %(after)s
        ORDER BY id
        LIMIT %(batch_size)s
    ), deleted AS (
        DELETE FROM catalog_resource_sync_events AS e
        USING candidates AS c
        WHERE e.id = c.id AND c.status = 2 AND c.created_at < %(cutoff)s
        RETURNING e.id
    )
    SELECT
        (SELECT max(id) FROM candidates),
        (SELECT COALESCE(bool_or(created_at >= %(cutoff)s), false) FROM candidates),
        (SELECT count(*) FROM deleted)
"""
