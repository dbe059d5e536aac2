"""A token SDRS may already hold is not sent again while its callback can still arrive.

A send that timed out after the request was written (SDRS may have accepted it), and a
worker killed after SDRS accepted, leave the status pending with the request id; the job's
next attempt, a re-run after ``worker_lost`` and the refresher all wait for the callback or
for SDRS_PENDING_TIMEOUT. What was never written (connection refused, connect timeout) is
retried as before. The local SDRS records every request it receives, so the tests count the
sends per finding.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
import responses
import time_machine
from django.conf import settings as django_settings
from django.utils import timezone
from django_q.models import Schedule

from project.jobs import JobRun
from project.jobs.testing import recovery_sweep, run_inline
from secret_detection import services, tasks
from secret_detection.models import Finding, FindingTokenStatus
from secret_detection.services import statuses
from tests.secret_detection.conftest import CALLBACK_SECRET, report_with
from tests.support.cluster import ClusterProcess, running_cluster, wait_until
from tests.support.sdrs import SdrsServer, default_decision

VERIFY = "secret_detection.verify_partner_token"
SCALED_DELAYS = (0.4, 1.6, 6.4)


def _sends(sdrs: SdrsServer) -> Counter[int]:
    """Verify requests SDRS received, per finding (whatever it answered)."""
    return Counter(record.finding_id for record in sdrs.verifies)


def _runs_done(count: int) -> bool:
    runs = JobRun.objects.filter(name=VERIFY)
    return runs.count() == count and not runs.filter(status__in=["queued", "running"]).exists()


def _progress(sdrs: SdrsServer):
    """What keeps changing while the work goes on: runs, sends, callbacks, statuses."""

    def snapshot():
        runs = sorted(JobRun.objects.filter(name=VERIFY).values_list("status", "attempt", "heartbeat_at"))
        return runs, len(sdrs.verifies), len(sdrs.callbacks), sorted(FindingTokenStatus.objects.values_list("status"))

    return snapshot


NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def finding(project, developer, import_findings) -> Finding:
    (created,) = import_findings(project, [("AWS", "AKIAZQ3EXAMPLE7Q4VNB")], user=developer)
    return created


def _status(finding: Finding) -> FindingTokenStatus:
    return FindingTokenStatus.objects.get(pk=finding.pk)


@pytest.mark.django_db
def test_a_read_timeout_is_not_retried_and_the_next_attempt_sends_nothing(finding, sdrs_settings, no_broker):
    """The retry policy's next attempt (and any re-run) finds the request possibly held by
    SDRS and stops; its callback, when it comes, is applied."""
    sdrs_settings(url="https://sdrs.example.com")
    with responses.RequestsMock() as sdrs, time_machine.travel(NOW, tick=False):
        sdrs.add(responses.POST, "https://sdrs.example.com/api/v1/token/verify", body=requests.ReadTimeout("slow"))
        outcome, run = run_inline(tasks.verify_partner_token, attempt=1, finding_id=finding.pk)
        assert (outcome, run.status) == ("succeeded", "succeeded")  # no retry is scheduled
        assert run.result["unconfirmed"] is True
        outcome, again = run_inline(tasks.verify_partner_token, attempt=2, finding_id=finding.pk)
        assert (outcome, again.result) == ("succeeded", {"skipped": "unconfirmed"})
        assert len(sdrs.calls) == 1
        sent_id = sdrs.calls[0].request.headers["X-Request-ID"]
    assert _status(finding).last_request_id == sent_id
    assert services.callback_result_apply(
        finding_id=finding.pk, status="active", verified_at=NOW, request_id=sent_id
    ) == ("applied")
    assert _status(finding).status == "active"


@pytest.mark.django_db
def test_what_was_never_written_is_retried_as_before(finding, sdrs_settings, no_broker):
    """Connection refused and connect timeouts: SDRS cannot hold the request, so each
    attempt sends it."""
    sdrs_settings(url="https://sdrs.example.com")
    url = "https://sdrs.example.com/api/v1/token/verify"
    with responses.RequestsMock() as sdrs:
        sdrs.add(responses.POST, url, body=requests.ConnectionError("refused"))
        sdrs.add(responses.POST, url, body=requests.ConnectTimeout("no connection"))
        sdrs.add(responses.POST, url, status=202)
        outcomes = [
            run_inline(tasks.verify_partner_token, attempt=attempt, finding_id=finding.pk)[0] for attempt in (1, 2, 3)
        ]
        assert outcomes == ["retried", "retried", "succeeded"]
        assert len(sdrs.calls) == 3
    status = _status(finding)
    assert (status.status, status.attempts, status.accepted_at is not None) == ("pending", 3, True)


@pytest.mark.django_db
def test_an_unconfirmed_request_is_sent_again_only_after_the_pending_timeout(finding, sdrs_settings, settings):
    sdrs_settings(url="https://sdrs.example.com")
    url = "https://sdrs.example.com/api/v1/token/verify"
    with responses.RequestsMock() as sdrs, time_machine.travel(NOW, tick=False) as clock:
        sdrs.add(responses.POST, url, body=requests.ReadTimeout("slow"))
        sdrs.add(responses.POST, url, status=202)
        services.token_verification_run(finding_id=finding.pk)
        clock.move_to(NOW + timedelta(seconds=settings.SDRS_PENDING_TIMEOUT - 1))
        assert services.pending_expire() == 0
        assert services.token_verification_run(finding_id=finding.pk) == {"skipped": "unconfirmed"}
        clock.move_to(NOW + timedelta(seconds=settings.SDRS_PENDING_TIMEOUT + 1))
        assert services.pending_expire() == 1  # no callback came: unknown, callback_timeout
        assert services.token_verification_run(finding_id=finding.pk)["accepted"] is True
        assert len(sdrs.calls) == 2


@pytest.mark.django_db
def test_a_sender_that_died_mid_request_leaves_the_row_held_until_the_pending_timeout(finding, settings):
    """A claim whose lease ran out with no outcome recorded: the request may have reached
    SDRS. Not sent again, even by a later job, until SDRS_PENDING_TIMEOUT."""
    with time_machine.travel(NOW, tick=False) as clock:
        assert statuses.status_claim(finding_id=finding.pk, request_id="r1", attempt=1, lease=9).outcome == "claimed"
        clock.move_to(NOW + timedelta(seconds=5))
        assert statuses.status_claim(finding_id=finding.pk, request_id="r2", attempt=1, lease=9).outcome == (
            "in_flight"
        )
        clock.move_to(NOW + timedelta(seconds=60))  # the worker died; its lease ran out
        assert statuses.status_claim(finding_id=finding.pk, request_id="r2", attempt=2, lease=9).outcome == (
            "unconfirmed"
        )
        assert _status(finding).last_request_id == "r1"
        clock.move_to(NOW + timedelta(seconds=settings.SDRS_PENDING_TIMEOUT + 1))
        assert statuses.status_claim(finding_id=finding.pk, request_id="r3", attempt=1, lease=9).outcome == "claimed"


@pytest.mark.django_db
def test_a_run_sends_nothing_once_a_result_came_in_after_it_was_asked_for(finding):
    """A run re-run (its worker died after SDRS accepted) finds the result its first
    attempt's request brought: nothing to send, forced ("Verify now") or not."""
    asked = NOW - timedelta(seconds=30)
    with time_machine.travel(NOW, tick=False) as clock:
        statuses.status_claim(finding_id=finding.pk, request_id="r1", attempt=1, lease=9, since=asked)
        statuses.status_accepted(finding_id=finding.pk, request_id="r1")
        assert statuses.status_result(finding_id=finding.pk, status="active", verified_at=NOW, request_id="r1") == (
            "applied"
        )
        for force in (False, True):
            claim = statuses.status_claim(
                finding_id=finding.pk, request_id="r2", attempt=2, lease=9, since=asked, force=force
            )
            assert claim.outcome == "already_verified"
        # A verification asked for after that result is sent (the refresher, a new "Verify now").
        clock.move_to(NOW + timedelta(seconds=1))
        later = statuses.status_claim(
            finding_id=finding.pk, request_id="r3", attempt=1, lease=9, since=timezone.now(), force=True
        )
        assert later.outcome == "claimed"


@pytest.mark.django_db
def test_a_forced_run_overrides_an_older_request_but_not_its_own(finding):
    asked = NOW - timedelta(seconds=30)
    with time_machine.travel(NOW - timedelta(minutes=5), tick=False):
        statuses.status_claim(finding_id=finding.pk, request_id="old", attempt=1, lease=9)
        statuses.status_accepted(finding_id=finding.pk, request_id="old")
    with time_machine.travel(NOW, tick=False) as clock:
        # "Verify now" while the older request awaits its callback: sent.
        claim = statuses.status_claim(
            finding_id=finding.pk, request_id="mine", attempt=1, lease=9, force=True, since=asked
        )
        assert claim.outcome == "claimed"
        statuses.status_accepted(finding_id=finding.pk, request_id="mine")
        clock.move_to(NOW + timedelta(seconds=70))
        # The same run again (its worker died after the 202): its own request is held.
        again = statuses.status_claim(
            finding_id=finding.pk, request_id="again", attempt=2, lease=9, force=True, since=asked
        )
        assert again.outcome == "already_accepted"
    assert _status(finding).last_request_id == "mine"


@pytest.mark.django_db(transaction=True)
def test_a_refresh_that_times_out_after_writing_is_not_sent_again_by_the_next_tick(
    project, import_findings, sdrs_server, sdrs_settings
):
    sdrs_settings(url=sdrs_server.url, sdrs_timeout=0.3)
    sdrs_server.failures.latency = 1.0
    (due,) = import_findings(project, [("AWS", "AKIA-refresh-0")], prefix="refresh")
    past = timezone.now() - timedelta(minutes=1)
    FindingTokenStatus.objects.filter(pk=due.pk).update(
        status="active", verifier="partner", routed_at=past, next_refresh_at=past, last_verified_at=past
    )
    first = services.token_statuses_refresh()
    assert (first["claimed"], first["unconfirmed"]) == (1, 1)
    status = _status(due)
    assert (status.status, status.last_error_code) == ("pending", "sdrs_timeout")  # awaits its callback
    # SDRS took it, late (it sleeps 1 s before recording it): nothing else moves meanwhile.
    wait_until(lambda: len(sdrs_server.verifies) == 1, progress=lambda: sdrs_server.max_in_flight, stall=30)
    FindingTokenStatus.objects.filter(pk=due.pk).update(next_refresh_at=past)  # even if due again
    second = services.token_statuses_refresh()
    assert second.get("claimed", 0) == 0
    assert _sends(sdrs_server) == {due.pk: 1}


# --- on a real cluster, against the local SDRS over HTTP ------------------------------


@pytest.fixture
def sdrs(rsa_keys) -> Iterator[SdrsServer]:
    server = SdrsServer(public_key=rsa_keys[1], callback_secret=CALLBACK_SECRET).start()
    yield server
    server.close()


@pytest.fixture
def cluster_env(live_server, settings, sdrs_settings, sdrs) -> dict[str, str]:
    Schedule.objects.all().delete()  # only this test's jobs
    settings.EXTERNAL_URL = live_server.url
    settings.SDRS_RETRY_DELAYS = SCALED_DELAYS  # the recovery sweep runs in this process
    sdrs_settings(url=sdrs.url)
    return {"EXTERNAL_URL": live_server.url, "SDRS_RETRY_DELAYS": ",".join(map(str, SCALED_DELAYS))}


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_sdrs_slower_than_the_client_timeout_gets_each_token_once(
    cluster_env, sdrs, sdrs_settings, project, developer, sample_report
):
    """SDRS answers after 1 s, the client gives up after 0.3 s: every request times out
    after it was written, and SDRS accepts it and calls back. Before the fix each finding
    was sent 4 times (the retries at 0.4, 1.6 and 6.4 s, the later ones after the callback
    had made it active)."""
    sdrs_settings(url=sdrs.url, sdrs_timeout=0.3)
    sdrs.failures.latency = 1.0
    count = 10
    with running_cluster(broker=django_settings.JOBS_BROKER, workers=4, env=cluster_env) as cluster:
        services.report_import(
            project=project,
            user=developer,
            report=report_with([("AWS", f"AKIA-live-{n}") for n in range(count)], base=sample_report),
        )

        def settled() -> bool:
            return (
                _runs_done(count)
                and FindingTokenStatus.objects.filter(status="active").count() == count
                and sdrs.callbacks_idle()
            )

        # Every run ended (none waits for a retry that could resend) and every callback landed.
        wait_until(settled, progress=_progress(sdrs), message=lambda: f"not settled:\n{cluster.output()}")

    sends = _sends(sdrs)
    assert sends == dict.fromkeys(Finding.objects.values_list("pk", flat=True), 1), sends
    for status in FindingTokenStatus.objects.all():
        (record,) = [r for r in sdrs.verifies if r.finding_id == status.pk]
        assert status.last_request_id == record.request_id  # the result of the request sent, applied
        assert (status.status, status.last_error_code) == ("active", "")
    assert {c.http_status for c in sdrs.callbacks} == {200}


def _kill_worker_after_accepting(sdrs: SdrsServer, holder: dict) -> None:
    """Make SDRS SIGKILL the worker that sent the first request, right after accepting it
    (before the 202 reaches the worker)."""
    killed = threading.Event()

    def decide(token_type: str, token_value: str) -> str | None:
        if not killed.is_set():
            killed.set()
            cluster: ClusterProcess = holder["cluster"]
            for worker in cluster.workers():
                os.kill(worker.pid, signal.SIGKILL)
        return default_decision(token_type, token_value)

    sdrs.decide = decide


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("value", ["AKIA-live-1", "AKIA-lost-1"], ids=["called_back", "callback_lost"])
def test_a_worker_killed_after_sdrs_accepted_does_not_send_again(
    cluster_env, sdrs, settings, project, developer, sample_report, value
):
    """The run is recovered as ``worker_lost`` and retried; its next attempt finds the
    result already applied (called back), or the request possibly accepted (no callback
    yet), and sends nothing. Before the fix the retry sent the token a second time."""
    settings.JOBS_LOST_AFTER = 1
    holder: dict = {}
    _kill_worker_after_accepting(sdrs, holder)
    with running_cluster(broker=django_settings.JOBS_BROKER, workers=1, env=cluster_env) as cluster:
        holder["cluster"] = cluster
        services.report_import(
            project=project, user=developer, report=report_with([("AWS", value)], base=sample_report)
        )
        (finding,) = Finding.objects.all()

        def recovered() -> bool:
            recovery_sweep()
            run = JobRun.objects.filter(name=VERIFY).first()
            return run is not None and run.history and run.history[0]["error_code"] == "worker_lost"

        wait_until(
            recovered, progress=_progress(sdrs), message=lambda: f"the run was not recovered:\n{cluster.output()}"
        )
        wait_until(
            lambda: _runs_done(1), progress=_progress(sdrs), message=lambda: f"run not done:\n{cluster.output()}"
        )
        wait_until(sdrs.callbacks_idle, progress=_progress(sdrs))

    assert _sends(sdrs) == {finding.pk: 1}
    run = JobRun.objects.get(name=VERIFY)
    assert (run.status, run.attempt) == ("succeeded", 2)
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    (record,) = sdrs.verifies
    assert status.last_request_id == record.request_id
    if "lost" in value:
        # Still awaiting the callback: pending until SDRS_PENDING_TIMEOUT, then the sweep.
        assert run.result == {"skipped": "unconfirmed"}
        assert status.status == "pending"
    else:
        assert run.result == {"skipped": "already_verified"}
        assert status.status == "active"
