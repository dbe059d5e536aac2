"""Crash test across the three features at once: the whole cluster SIGKILLed mid-work.

20 exports, a 50,000-event catalog sync backlog and 200 partner token verifications run on
one real cluster (ORM broker). The kill comes once all three are visibly half-way, each at
its most delicate point: two exports paused half-way through writing their archive (the
``tests.support.export_hooks`` pause point) after others finished; the sync processor's
batch stopped mid-way by a row lock the test holds on one resource, its events marked
processed but not committed, after earlier batches committed; verification requests in
flight at SDRS (it answers in 0.5 s until the restart) after others were answered. Then
the whole process group gets SIGKILL and a new cluster starts. What it proves, on the end
state of every record the test made:

* **exports**: every job ends finished or failed; no scratch directory
  (``MEDIA_ROOT/exports-tmp/job-<id>-*``, where an archive is written before it is
  published) is left, although the kill strands two exports half-way through writing
  their archive; every stored archive file belongs to an archive record (once the
  documented orphan sweep has run);
* **catalog**: every sync event is processed exactly once: a statement trigger the test
  adds records each committed status change of an event, and every event has exactly
  one, pending → processed (a batch the kill cut short rolled back whole, and was redone,
  never applied twice); every resource ends in sync with its project;
* **secret detection**: every finding reaches a final status (active, inactive, or
  unknown once the pending timeout has passed for a request SDRS never received), the
  verdict SDRS gave for the token it saw, and the SDRS stand-in saw at most one request
  per token: none is sent twice, although the kill lands while requests are in flight
  (SDRS answers slowly until the restart).

Recovery must come from the restarted cluster's sentinel (runs of this host's workers that
no longer exist are moved on at its start; prefetched messages come back when their
lease ends), not from heartbeat staleness: JOBS_LOST_AFTER and EXPORT_STUCK_AFTER are
600 s, and no schedule runs (no sweep, refresher or minute tick of the processor). Every
wait fails only when nothing has moved for its stall, never on a fixed total deadline.
It takes 40-50 s on a 2-core machine under a load of 5-8 (the backlog about 6 s of it).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from unittest import mock

import psycopg
import pytest
import time_machine
from django.apps import apps
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from django_q.conf import Conf

from catalog import services as catalog_services
from catalog import tasks as catalog_tasks
from catalog.models import SyncEvent
from exports import maintenance
from exports import services as export_services
from exports.models import ProjectExportArchive, ProjectExportJob
from project.jobs.models import JobRun
from project.models import ApplicationSetting, Issue
from project.services import project_create
from secret_detection import services as sd_services
from secret_detection.models import Finding, FindingTokenStatus
from tests.catalog.conftest import out_of_sync_count, run_sql, run_sql_scalar
from tests.secret_detection.conftest import CALLBACK_SECRET, SAMPLE, report_with
from tests.support.cluster import ClusterProcess, database_url, wait_until
from tests.support.sdrs import SdrsServer, default_decision, keypair

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster, pytest.mark.chaos]

EXPORTS = 20
HELD = (2, 3)  # the exports whose first attempt stops half-way through its archive
#: Made by one UPDATE of as many catalog-backed projects (the trigger writes the events):
#: building the backlog takes about 5 s on a loaded 2-core machine, draining it a few.
EVENTS = 50_000
FINDINGS = 200
WORKERS = 6
#: SDRS's answer time until the kill: requests are in flight when it lands.
SLOW_SDRS = 0.5
#: Tokens SDRS has received when the kill comes (more are on their way).
SENT_BEFORE_KILL = 5
VERIFY = "secret_detection.verify_partner_token"
#: The refresher tick that an import of this many findings hands them to (its pool sends them).
REFRESH = "secret_detection.refresh_token_statuses"

ENV = {
    # Recovery by the restarted sentinel only, not by a stale heartbeat.
    "JOBS_LOST_AFTER": "600",
    "EXPORT_STUCK_AFTER": "600",
    "Q_SCHEDULER": "0",  # no scheduled tick (sweeps, refresher) does the recovery's work
    "JOBS_EXTRA_MODULES": "tests.support.jobs,tests.support.export_hooks",
    "EXPORT_SLOT_WAIT": "0.2",
    "EXPORT_RETRY_DELAYS": "0.5,1,2",
    "SDRS_RETRY_DELAYS": "0.4,1.6,6.4",
}

AUDIT_SQL = """
    CREATE TABLE chaos_sync_event_changes (event_id bigint, old_status smallint, new_status smallint);
    CREATE FUNCTION chaos_sync_event_audit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO chaos_sync_event_changes
        SELECT n.id, o.status, n.status FROM chaos_new AS n JOIN chaos_old AS o ON o.id = n.id
        WHERE o.status IS DISTINCT FROM n.status;
        RETURN NULL;
    END $$;
    CREATE TRIGGER chaos_sync_event_audit AFTER UPDATE ON catalog_resource_sync_events
        REFERENCING OLD TABLE AS chaos_old NEW TABLE AS chaos_new
        FOR EACH STATEMENT EXECUTE FUNCTION chaos_sync_event_audit();
"""
AUDIT_DROP_SQL = """
    DROP TRIGGER IF EXISTS chaos_sync_event_audit ON catalog_resource_sync_events;
    DROP FUNCTION IF EXISTS chaos_sync_event_audit();
    DROP TABLE IF EXISTS chaos_sync_event_changes;
"""


@pytest.fixture
def event_audit(transactional_db) -> Iterator[None]:
    """Every committed status change of a sync event, recorded by a statement trigger (a
    batch rolled back by the kill leaves no row)."""
    run_sql(AUDIT_DROP_SQL)
    run_sql(AUDIT_SQL)
    yield
    run_sql(AUDIT_DROP_SQL)


@pytest.fixture
def rsa() -> tuple[str, str]:
    return keypair()


@pytest.fixture
def sdrs(rsa) -> Iterator[SdrsServer]:
    server = SdrsServer(public_key=rsa[1], callback_secret=CALLBACK_SECRET).start()
    yield server
    server.close()


def _sdrs_configure(sdrs: SdrsServer, signing_key: str) -> None:
    # The partner types the migration seeds: an earlier transactional test flushed them.
    importlib.import_module("secret_detection.migrations.0002_partner_token_types").seed(apps, None)
    row = ApplicationSetting.current()
    row.sdrs_enabled = True
    row.sdrs_url = sdrs.url
    row.sdrs_jwt_signing_key = signing_key
    row.sdrs_callback_secret = CALLBACK_SECRET
    row.sdrs_timeout = 2.0
    row.save()


def _catalog_backlog() -> None:
    """EVENTS catalog resources, then one UPDATE of their projects: the trigger records
    one pending event each."""
    run_sql(
        "INSERT INTO projects (name, path, namespace_path, description, visibility_level, created_at, updated_at)"
        " SELECT 'bulk ' || n, 'p' || n, 'chaos-bulk', 'about ' || n, 0, now(), now()"
        " FROM generate_series(1, %s) AS n",
        [EVENTS],
    )
    run_sql(
        "INSERT INTO catalog_resources (state, name, description, visibility_level, created_at, updated_at,"
        " project_id) SELECT 0, name, description, visibility_level, now(), now(), id FROM projects"
        " WHERE namespace_path = 'chaos-bulk'"
    )
    run_sql("UPDATE projects SET name = name || ' v2', visibility_level = 20 WHERE namespace_path = 'chaos-bulk'")


def _sample_report() -> dict:
    return json.loads(SAMPLE.read_text())


def _token_values() -> list[str]:
    return [f"AKIA-revoked-chaos-{n}" if n % 5 == 0 else f"AKIA-live-chaos-{n}" for n in range(FINDINGS)]


def _export_projects(owner) -> list:
    projects = [
        project_create(namespace_path="chaos-exports", path=f"e{n}", name=f"E{n}", owner=owner) for n in range(EXPORTS)
    ]
    Issue.objects.bulk_create(
        [Issue(project=p, iid=i, title=f"issue {i} of {p.name}", author=owner) for p in projects for i in (1, 2)]
    )
    return projects


def _scratch(media: Path) -> list[Path]:
    root = media / "exports-tmp"
    return sorted(root.iterdir()) if root.is_dir() else []


def _snapshot(sdrs: SdrsServer) -> tuple:
    """What moves while any of the three features works. Heartbeats and deferrals are left
    out: a job that only beats, or an export that keeps waiting for a slot, is no progress."""
    # Queued and running are one state here: a run waiting for a slot flips between them
    # at every deferral, for ever if the slot never frees.
    runs = sorted(
        Counter(
            (name, status if status not in JobRun.ACTIVE else "active", attempt)
            for name, status, attempt in JobRun.objects.values_list("name", "status", "attempt")
        ).items()
    )
    exports = sorted(Counter(ProjectExportJob.objects.values_list("status", flat=True)).items())
    statuses = sorted(Counter(FindingTokenStatus.objects.values_list("status", "last_error_code")).items())
    return runs, exports, SyncEvent.objects.pending().count(), statuses, len(sdrs.verifies), len(sdrs.callbacks)


def _blocked_processor_backends() -> int:
    """Processor sessions waiting for a row lock in the middle of a batch."""
    return run_sql_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE '%%catalog_resource_sync_events%%'"
    )


def _progress_state(sdrs: SdrsServer, held: list[Path]) -> dict:
    return {
        "held_exports_paused": sum(Path(f"{flag}.paused").exists() for flag in held),
        "exports_finished": ProjectExportJob.objects.filter(status="finished").count(),
        "pending_events": SyncEvent.objects.pending().count(),
        "catalog_batch_blocked": _blocked_processor_backends(),
        "sdrs_requests": len(sdrs.verifies),
        "verifications_running": JobRun.objects.filter(name__in=(VERIFY, REFRESH), status="running").count(),
    }


def _exports_and_catalog_mid_way(sdrs: SdrsServer, held: list[Path]) -> bool:
    """The held exports paused mid-archive after others finished; events processed,
    others pending, and a batch stopped mid-way on the blocked resource."""
    state = _progress_state(sdrs, held)
    return (
        state["held_exports_paused"] == len(held)
        and state["exports_finished"] > 0
        and 0 < state["pending_events"] < EVENTS
        and state["catalog_batch_blocked"] > 0
    )


def _verifications_mid_way(sdrs: SdrsServer) -> bool:
    """Some tokens received by SDRS, others not yet, and requests being sent right now (by
    the refresher tick's pool, or by verification jobs)."""
    return SENT_BEFORE_KILL <= len(sdrs.verifies) < FINDINGS and (
        JobRun.objects.filter(name=REFRESH, status="running").exists()
        or JobRun.objects.filter(name=VERIFY, status="running").count() >= 2
    )


def _wait(predicate, *, sdrs: SdrsServer, held: list[Path], cluster: ClusterProcess, what: str) -> None:
    """Until ``predicate()``; fails once nothing has moved for a minute, saying where each
    feature stands and what the cluster logged."""
    try:
        wait_until(predicate, progress=lambda: _snapshot(sdrs), stall=60)
    except AssertionError as exc:
        state = f"{_progress_state(sdrs, held)}\n{_snapshot(sdrs)}"
        raise AssertionError(f"{what}: {exc}\n{state}\n{cluster.output()}") from None


def _all_final(sdrs: SdrsServer) -> bool:
    return (
        not ProjectExportJob.objects.filter(status__in=ProjectExportJob.ACTIVE).exists()
        and not SyncEvent.objects.pending().exists()
        and not JobRun.objects.filter(status__in=JobRun.ACTIVE).exists()
        and FindingTokenStatus.objects.filter(routed_at__isnull=False).count() == FINDINGS
        and sdrs.callbacks_idle()
    )


def test_whole_cluster_killed_mid_work_in_all_three_features_loses_and_repeats_nothing(
    settings, tmp_path, live_server, owner, event_audit, rsa, sdrs
) -> None:
    media, pause = tmp_path / "media", tmp_path / "pause"
    pause.mkdir()
    settings.JOBS_BROKER = "orm"  # the broker that prefetches and leases messages
    settings.MEDIA_ROOT = media
    settings.EXTERNAL_URL = live_server.url
    env = {**ENV, "MEDIA_ROOT": str(media), "EXPORT_TEST_PAUSE_DIR": str(pause), "EXTERNAL_URL": live_server.url}
    name = f"{Conf.CLUSTER_NAME}-{uuid.uuid4().hex[:8]}"  # a queue of its own: no other cluster serves it

    started = time.monotonic()
    _catalog_backlog()
    backlog_seconds = time.monotonic() - started
    assert SyncEvent.objects.pending().count() == EVENTS
    blocked_project = run_sql_scalar(
        "SELECT id FROM projects WHERE namespace_path = 'chaos-bulk' ORDER BY id OFFSET %s LIMIT 1", [EVENTS // 2]
    )
    _sdrs_configure(sdrs, rsa[0])
    sdrs.failures.latency = SLOW_SDRS
    findings_project = project_create(namespace_path="chaos-sd", path="leaks", name="Leaks", owner=owner)
    values = _token_values()
    projects = _export_projects(owner)
    held = [pause / str(projects[index].pk) for index in HELD]
    for flag in held:
        flag.touch()

    with mock.patch.object(Conf, "CLUSTER_NAME", name):
        catalog_tasks.process_sync_events.enqueue(_dedupe_key=catalog_services.DEDUPE_KEY)
        jobs = [export_services.export_request(project=p, user=owner) for p in projects]

        with psycopg.connect(database_url()) as blocker:
            # A resource half-way through the backlog, row-locked: the processor's batch
            # that reaches it stops there, its events marked processed but uncommitted.
            blocker.execute("SELECT id FROM catalog_resources WHERE project_id = %s FOR UPDATE", [blocked_project])
            cluster = ClusterProcess(workers=WORKERS, env=env, name=name).start()
            try:
                _wait(
                    lambda: _exports_and_catalog_mid_way(sdrs, held),
                    sdrs=sdrs,
                    held=held,
                    cluster=cluster,
                    what="exports and catalog sync not both half-way",
                )
                # Imported now, so that its verifications do not fill the queue ahead of
                # the exports: the held exports and the blocked batch stay where they are.
                sd_services.report_import(
                    project=findings_project,
                    user=owner,
                    report=report_with([("AWS", v) for v in values], base=_sample_report()),
                )
                _wait(
                    lambda: _verifications_mid_way(sdrs),
                    sdrs=sdrs,
                    held=held,
                    cluster=cluster,
                    what="no verification in progress",
                )
                at_kill = _progress_state(sdrs, held)
            finally:
                os.killpg(cluster.process.pid, signal.SIGKILL)
                cluster.process.wait()
            blocker.rollback()  # the orphaned batch finishes, cannot answer, and rolls back
        killed_at = time.monotonic()
        stranded = _scratch(media)
        sdrs.failures.latency = 0

        restarted = ClusterProcess(workers=WORKERS, env=env, name=name).start()
        try:
            _wait(
                lambda: _all_final(sdrs),
                sdrs=sdrs,
                held=held,
                cluster=restarted,
                what="work stopped moving after the restart",
            )
        finally:
            restarted.stop()
    recovered_seconds = time.monotonic() - killed_at
    output = restarted.output()

    # The kill did strand work in every feature.
    assert len(stranded) == len(HELD), f"not one half-written archive per held export: {stranded}"
    lost = Counter(
        JobRun.objects.filter(history__contains=[{"error_code": "worker_lost"}]).values_list("name", flat=True)
    )
    assert lost["exports.run"] >= len(HELD), output  # and any other export running at the kill
    assert lost["catalog.process_sync_events"] == 1, output  # its batch cut short
    assert lost[VERIFY] + lost[REFRESH] >= 1, output  # the tick, whose claims its next attempt took over

    # Exports: all ended, nothing left in the scratch space, no file without its record.
    assert set(ProjectExportJob.objects.values_list("status", flat=True)) <= {"finished", "failed"}
    assert ProjectExportJob.objects.filter(pk__in=[j.pk for j in jobs], status="finished").count() == EXPORTS, list(
        ProjectExportJob.objects.exclude(status="finished").values_list("pk", "error_code", "error")
    )
    assert _scratch(media) == [], f"a scratch file of an export was left behind (at the kill: {stranded})"
    with time_machine.travel(timezone.now() + timedelta(seconds=django_settings.EXPORT_ORPHAN_GRACE + 60)):
        maintenance.export_archives_cleanup()  # what the hourly sweep does to a file a kill orphaned
    stored = {str(p.relative_to(media)) for p in (media / "exports").rglob("*") if p.is_file()}
    assert stored == set(ProjectExportArchive.objects.values_list("file", flat=True))
    assert ProjectExportArchive.objects.count() == EXPORTS

    # Catalog: each event processed exactly once, every resource in sync.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT event_id), bool_and(old_status = 1 AND new_status = 2)"
            " FROM chaos_sync_event_changes"
        )
        changes, events_changed, all_pending_to_processed = cursor.fetchone()
    assert (changes, events_changed, all_pending_to_processed) == (EVENTS, EVENTS, True)
    assert SyncEvent.objects.processed().count() == SyncEvent.objects.count() == EVENTS
    assert out_of_sync_count() == 0

    # Secret detection: no token sent twice; every finding final, with SDRS's verdict.
    sends = Counter(record.token_sha256 for record in sdrs.verifies if record.finding_id is not None)
    assert sends
    assert max(sends.values()) == 1, [n for n in sends.values() if n > 1]
    # Killed after its claim and before its request was written: SDRS never saw it, and the
    # status waits for SDRS_PENDING_TIMEOUT (the product does not risk a second send); the
    # pending sweep then ends it.
    findings = dict(Finding.objects.filter(project=findings_project).values_list("pk", "raw_value"))
    # (Not the records of no finding: a request the kill cut off, which SDRS could not
    # read, or the circuit breaker's probe.)
    seen = {record.finding_id for record in sdrs.verifies if record.finding_id in findings}
    never_sent = set(FindingTokenStatus.objects.filter(status="pending").values_list("finding_id", flat=True))
    assert not never_sent & seen, "a status still waits for a callback SDRS sent"
    assert len(never_sent) <= max(WORKERS, django_settings.TOKEN_REFRESH_CONCURRENCY)
    with time_machine.travel(timezone.now() + timedelta(seconds=django_settings.SDRS_PENDING_TIMEOUT + 60)):
        assert sd_services.pending_expire() == len(never_sent)
    assert len(findings) == FINDINGS
    final = dict(FindingTokenStatus.objects.filter(finding_id__in=findings).values_list("finding_id", "status"))
    expected = {pk: default_decision("AWS", value) if pk in seen else "unknown" for pk, value in findings.items()}
    assert final == expected
    assert len(seen) == FINDINGS - len(never_sent)
    print(  # the figures of a run, shown with -s
        f"\nbacklog {backlog_seconds:.1f} s; at the kill {at_kill}; recovered in {recovered_seconds:.1f} s;"
        f" lost runs {dict(lost)}; never sent {len(never_sent)}"
    )
