"""The trigger that records catalog sync events (GitLab's ``insert_catalog_resource_sync_event``).

GitLab fires a row trigger (``AFTER UPDATE ... FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM
NEW.name OR ...)``) that looks up the project's catalog resource once per changed row. Ours
is a statement trigger with transition tables: one set-based INSERT ... SELECT per UPDATE
statement, joining the old and new rows with ``catalog_resources``. Same events (one per
resource of every project whose name, description or visibility_level IS DISTINCT FROM its
old value), but a 100,000-row UPDATE pays for one join instead of 100,000 function calls
(see docs/benchmarks.md, "CI catalog").

Details that matter:

* ``SET jit = off``: the planner cannot estimate joins over transition tables and
  overestimates them by orders of magnitude, which made it JIT-compile the INSERT (about
  0.3 s of a 2.5 s UPDATE in the benchmark) for a join that takes milliseconds.
* ``SET search_path FROM CURRENT``: the function resolves its tables in the schema the
  migration ran in, whatever search_path the updating session uses.
* ``pg_notify`` once per statement (and PostgreSQL folds identical notifications of one
  transaction into one), delivered at commit: the ``catalog_listen`` command wakes the
  processor within about a second instead of waiting for the every-minute schedule.
* Turning ``application_settings.catalog_sync_enabled`` back on sends the same
  notification, so accumulated events drain at once, whoever flips the switch.
"""

from django.db import migrations

CHANNEL = "catalog_sync_events"

FORWARD = [
    f"""
    CREATE FUNCTION insert_catalog_resource_sync_event() RETURNS trigger
    LANGUAGE plpgsql
    SET jit = off
    SET search_path FROM CURRENT
    AS $$
    DECLARE
      recorded bigint;
    BEGIN
      INSERT INTO catalog_resource_sync_events (catalog_resource_id, project_id, status, created_at)
      SELECT r.id, r.project_id, 1, now()
      FROM catalog_sync_new_projects AS n
      JOIN catalog_sync_old_projects AS o ON o.id = n.id
      JOIN catalog_resources AS r ON r.project_id = n.id
      WHERE o.name IS DISTINCT FROM n.name
         OR o.description IS DISTINCT FROM n.description
         OR o.visibility_level IS DISTINCT FROM n.visibility_level;
      GET DIAGNOSTICS recorded = ROW_COUNT;
      IF recorded > 0 THEN
        PERFORM pg_notify('{CHANNEL}', '');
      END IF;
      RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER trigger_catalog_resource_sync_event_on_project_update
    AFTER UPDATE ON projects
    REFERENCING OLD TABLE AS catalog_sync_old_projects NEW TABLE AS catalog_sync_new_projects
    FOR EACH STATEMENT
    EXECUTE FUNCTION insert_catalog_resource_sync_event()
    """,
    f"""
    CREATE FUNCTION notify_catalog_sync_enabled() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
      PERFORM pg_notify('{CHANNEL}', 'enabled');
      RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER trigger_catalog_sync_enabled
    AFTER UPDATE OF catalog_sync_enabled ON application_settings
    FOR EACH ROW
    WHEN (NEW.catalog_sync_enabled AND NOT OLD.catalog_sync_enabled)
    EXECUTE FUNCTION notify_catalog_sync_enabled()
    """,
]

REVERSE = [
    "DROP TRIGGER IF EXISTS trigger_catalog_sync_enabled ON application_settings",
    "DROP FUNCTION IF EXISTS notify_catalog_sync_enabled()",
    "DROP TRIGGER IF EXISTS trigger_catalog_resource_sync_event_on_project_update ON projects",
    "DROP FUNCTION IF EXISTS insert_catalog_resource_sync_event()",
]


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0001_resources_and_sync_events"),
        ("project", "0001_initial"),
    ]

    operations = [migrations.RunSQL(sql=FORWARD, reverse_sql=REVERSE)]
