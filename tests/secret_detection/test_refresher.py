"""The status refresher (coder's gitsync pattern), against the local SDRS server over HTTP."""

from __future__ import annotations

import threading
from datetime import timedelta

import psutil
import pytest
from django.core.checks import Error
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from project import locks
from project import services as core
from project.jobs import JobRun
from secret_detection import checks, services, tasks
from secret_detection.models import FindingTokenStatus
from secret_detection.services import refresher

pytestmark = pytest.mark.django_db
# The refresher calls out from threads, which see committed rows only.
threaded = pytest.mark.django_db(transaction=True)


@pytest.fixture
def due(project, import_findings, no_broker):
    """``due([(type, value), ...], status="active")``: findings whose status is due now.
    The import's jobs are recorded but not sent: a cluster left running by another test
    would otherwise verify these findings while the test refreshes them."""

    batches = iter(range(1000))

    def make(findings, status="active"):
        created = import_findings(project, findings, prefix=f"due-{next(batches)}")
        past = timezone.now() - timedelta(minutes=1)
        FindingTokenStatus.objects.filter(pk__in=[f.pk for f in created]).update(
            status=status, verifier="partner", routed_at=past, next_refresh_at=past, last_verified_at=past
        )
        return created

    return make


def _status(finding) -> FindingTokenStatus:
    return FindingTokenStatus.objects.get(pk=finding.pk)


@threaded
def test_due_active_tokens_are_sent_to_sdrs_again(due, sdrs_server, sdrs_settings):
    sdrs_settings(url=sdrs_server.url)
    findings = due([("AWS", f"AKIA{n}") for n in range(3)])
    not_due = due([("AWS", "AKIA-later")])[-1]
    FindingTokenStatus.objects.filter(pk=not_due.pk).update(next_refresh_at=timezone.now() + timedelta(hours=1))

    result = services.token_statuses_refresh()

    assert (result["claimed"], result["accepted"]) == (3, 3)
    assert sorted(r.finding_id for r in sdrs_server.accepted()) == sorted(f.pk for f in findings)
    for finding in findings:
        status = _status(finding)
        assert status.status == "pending"
        assert status.accepted_at is not None
    assert _status(not_due).status == "active"


def test_claims_are_batches_that_push_next_refresh_forward(due, settings, sdrs_settings):
    settings.TOKEN_REFRESH_BATCH_SIZE = 4
    sdrs_settings(sdrs_enabled=False)
    due([("AWS", f"AKIA{n}") for n in range(10)])
    before = timezone.now()

    rows = refresher._claim_due(batch_size=4)

    assert len(rows) == 4
    lease = timedelta(seconds=settings.TOKEN_REFRESH_TICK_TIMEOUT)
    assert all(before + lease <= row.next_refresh_at <= timezone.now() + lease for row in rows)
    with CaptureQueriesContext(connection) as queries:
        result = services.token_statuses_refresh()
    claims = [q["sql"] for q in queries.captured_queries if "SKIP LOCKED" in q["sql"]]
    assert result["claimed"] == 6  # 4 + 2: the rows already claimed are no longer due
    # 4, 2, then none; once more if rows were still in flight then (they may be due again).
    assert len(claims) in (3, 4)
    assert all("LIMIT 4" in sql for sql in claims)


@threaded
def test_a_claim_skips_rows_another_tick_holds(due, sdrs_settings):
    sdrs_settings(sdrs_enabled=False)
    findings = due([("AWS", f"AKIA{n}") for n in range(5)])
    held = {findings[0].pk, findings[1].pk}
    locked, release = threading.Event(), threading.Event()

    def other_tick():
        with transaction.atomic():
            list(FindingTokenStatus.objects.select_for_update().filter(pk__in=held))
            locked.set()
            release.wait(10)
        connections.close_all()

    thread = threading.Thread(target=other_tick)
    thread.start()
    try:
        assert locked.wait(10)
        claimed = {row.pk for row in refresher._claim_due(batch_size=50)}
    finally:
        release.set()
        thread.join()
    assert claimed == {f.pk for f in findings} - held


@threaded
def test_outbound_calls_run_with_bounded_concurrency_and_threads_close_their_connections(
    due, sdrs_server, sdrs_settings, settings
):
    settings.TOKEN_REFRESH_CONCURRENCY = 4
    settings.TOKEN_REFRESH_BATCH_SIZE = 50
    sdrs_settings(url=sdrs_server.url)
    sdrs_server.failures.latency = 0.15
    due([("AWS", f"AKIA{n}") for n in range(24)])

    def connection_count() -> int:
        # This process's own sockets to PostgreSQL: the session cluster's connections to the
        # same database come and go and must not count.
        sockets = psutil.Process().net_connections(kind="all")
        return sum(
            1 for s in sockets if s.raddr and (".s.PGSQL" in str(s.raddr) or getattr(s.raddr, "port", None) == 5432)
        )

    before = connection_count()
    result = services.token_statuses_refresh()

    assert result["accepted"] == 24
    assert 2 <= sdrs_server.max_in_flight <= 4
    assert connection_count() == before


@threaded
def test_a_429_pauses_that_partner_for_the_tick_and_honours_retry_after(due, sdrs_server, sdrs_settings, settings):
    settings.TOKEN_REFRESH_CONCURRENCY = 1  # one at a time, so "the rest" is well defined
    sdrs_settings(url=sdrs_server.url)
    sdrs_server.failures.status_by_token_type = {"AWS": 429}
    sdrs_server.failures.retry_after = 120
    aws = due([("AWS", f"AKIA{n}") for n in range(5)])
    github = due([("GitHub Personal Access Token", f"ghp_{n}") for n in range(5)])
    started = timezone.now()

    result = services.token_statuses_refresh()

    aws_requests = [r for r in sdrs_server.verifies if r.token_type == "AWS"]
    assert len(aws_requests) == 1  # the first AWS row got the 429; the other four were skipped
    assert result["rate_limited"] == 1
    assert result["skipped_paused"] == 4
    assert sorted(r.finding_id for r in sdrs_server.accepted()) == sorted(f.pk for f in github)
    for finding in aws:
        status = _status(finding)
        assert (status.status, status.last_error_code) == ("active", "sdrs_rate_limited")
        assert started + timedelta(seconds=120) <= status.next_refresh_at <= timezone.now() + timedelta(seconds=120)
    assert all(_status(f).status == "pending" for f in github)


@threaded
def test_gcp_types_share_one_rate_limit(due, sdrs_server, sdrs_settings, settings):
    settings.TOKEN_REFRESH_CONCURRENCY = 1
    sdrs_settings(url=sdrs_server.url)
    sdrs_server.failures.status_by_token_type = {"GCP API key": 429}
    due([("GCP API key", "AIza1"), ("GCP API key", "AIza2")])
    oauth = due([("GCP OAuth client secret", "GOCSPX-1")])

    result = services.token_statuses_refresh()

    assert result["rate_limited"] == 1
    assert _status(oauth[0]).last_error_code == "sdrs_rate_limited"


def test_a_row_without_a_verifier_backs_off_instead_of_coming_back_every_tick(due, sdrs_server, sdrs_settings):
    sdrs_settings(url=sdrs_server.url)
    (finding,) = due([("Password in URL", "https://u:p@example.com")], status="unknown")

    first = services.token_statuses_refresh()
    second = services.token_statuses_refresh()

    assert first["no_verifier"] == 1
    assert "claimed" not in second
    status = _status(finding)
    assert (status.status, status.last_error_code) == ("unknown", "no_verifier")
    backoff = timedelta(seconds=600)
    assert timezone.now() + backoff - timedelta(seconds=5) <= status.next_refresh_at <= timezone.now() + backoff
    assert sdrs_server.verifies == []


def test_disabled_verification_backs_off_partner_rows_until_it_is_enabled(due, sdrs_server, sdrs_settings):
    sdrs_settings(url=sdrs_server.url, sdrs_enabled=False)
    # A type with no direct client (AWS would go to its partner's API with SDRS off).
    (finding,) = due([("GitHub Refresh Token", "ghr_x")], status="unknown")
    services.token_statuses_refresh()
    assert _status(finding).last_error_code == "verification_disabled"
    assert sdrs_server.verifies == []


def test_our_own_tokens_are_checked_again_locally(due, developer):
    token, value = core.access_token_create(user=developer, name="leaked", scopes=["api"])
    (finding,) = due([("gitlab_personal_access_token", value)])
    core.access_token_revoke(token_id=token.pk)

    result = services.token_statuses_refresh()

    assert result["local_inactive"] == 1
    status = _status(finding)
    assert (status.status, status.verifier, status.next_refresh_at) == ("inactive", "local", None)


@threaded
def test_a_failed_refresh_keeps_what_we_knew_and_retries_later(due, sdrs_server, sdrs_settings):
    sdrs_settings(url=sdrs_server.url)
    sdrs_server.failures.status = 500
    (finding,) = due([("AWS", "AKIA1")])

    assert services.token_statuses_refresh()["failed"] == 1

    status = _status(finding)
    assert (status.status, status.last_error_code, status.pending_since) == ("active", "sdrs_server_error", None)
    assert status.next_refresh_at > timezone.now() + timedelta(seconds=590)


@threaded
def test_unreachable_sdrs_pauses_every_partner_for_the_tick(due, sdrs_settings, settings):
    settings.TOKEN_REFRESH_CONCURRENCY = 1
    sdrs_settings()  # nothing listens there
    findings = due([("AWS", "AKIA1"), ("GitHub Personal Access Token", "ghp_1"), ("Postman API token", "PMAK-1")])

    result = services.token_statuses_refresh()

    assert (result["failed"], result["skipped_paused"]) == (1, 2)
    for finding in findings:
        status = _status(finding)
        assert (status.status, status.last_error_code) == ("active", "sdrs_unavailable")


@threaded
def test_only_one_tick_runs_at_a_time(due, sdrs_settings):
    sdrs_settings(sdrs_enabled=False)
    due([("AWS", "AKIA1")])
    held, release = threading.Event(), threading.Event()

    def other_tick():
        with locks.session_lock(refresher._TICK_LOCK) as locked:
            assert locked
            held.set()
            release.wait(10)
        connections.close_all()

    thread = threading.Thread(target=other_tick)
    thread.start()
    try:
        assert held.wait(10)
        assert services.token_statuses_refresh() == {"skipped": "previous tick still running"}
    finally:
        release.set()
        thread.join()
    assert services.token_statuses_refresh()["claimed"] == 1


def test_refresh_now_makes_rows_due_and_starts_a_tick(due):
    (finding,) = due([("AWS", "AKIA1")])
    FindingTokenStatus.objects.filter(pk=finding.pk).update(next_refresh_at=timezone.now() + timedelta(days=1))

    assert services.token_statuses_refresh_now(finding_ids=[finding.pk]) == 1

    assert _status(finding).next_refresh_at <= timezone.now()
    assert JobRun.objects.filter(name="secret_detection.refresh_token_statuses", status="queued").count() == 1


def test_the_tick_timeout_must_outlast_its_interval(settings):
    assert checks.refresh_tick_budget() == []
    settings.TOKEN_REFRESH_CRON = "*/5 * * * *"
    settings.TOKEN_REFRESH_TICK_TIMEOUT = 300
    (error,) = checks.refresh_tick_budget()
    assert isinstance(error, Error)
    assert error.id == "sd.E002"
    settings.TOKEN_REFRESH_CRON = "every minute"
    assert checks.refresh_tick_budget()[0].id == "sd.E001"


def test_the_tick_is_a_scheduled_job_with_its_own_timeout(settings):
    tick = tasks.refresh_token_statuses
    assert tick.cron == settings.TOKEN_REFRESH_CRON
    assert tick.timeout_seconds == settings.TOKEN_REFRESH_TICK_TIMEOUT == 240
    assert tasks.expire_pending.cron == settings.SDRS_PENDING_SWEEP_CRON
