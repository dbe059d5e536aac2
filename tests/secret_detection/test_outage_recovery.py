"""Recovery after outages, within seconds of the far side answering again (issue 11).

* SDRS down longer than the retry window: a circuit breaker opens, verifications are
  parked instead of spending their retries, and one probe (the half-open request, without
  a token) closes it as soon as SDRS answers: every parked finding is due at once.
* Our callback endpoint down (the database unavailable): SDRS's callback is refused and
  lost; once the database is back, the findings accepted before the refusal are verified
  again, without waiting for SDRS_PENDING_TIMEOUT.
* A run that fails after SDRS may have accepted its request (the worker died on the last
  attempt) leaves the status pending for that request: the token is not sent again.

The local SDRS server is a real HTTP server; it records every request it receives, so the
tests count the sends per finding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from unittest import mock

import pytest
from django.db import OperationalError
from django.utils import timezone

from project.jobs import JobRun
from project.jobs.testing import run_inline
from secret_detection import services, tasks
from secret_detection.models import FindingTokenStatus, SdrsHealth
from secret_detection.services import breaker, callbacks
from tests.secret_detection.conftest import CALLBACK_SECRET
from tests.support.cluster import wait_until
from tests.support.sdrs import SdrsServer

REFRESH = "secret_detection.refresh_token_statuses"
PROBE = "secret_detection.probe_sdrs"


def _sends(sdrs: SdrsServer) -> Counter[int]:
    return Counter(record.finding_id for record in sdrs.verifies if record.finding_id)


def _health() -> SdrsHealth:
    return SdrsHealth.objects.get(pk=1)


def _statuses(findings) -> list[tuple[str, str]]:
    return [
        FindingTokenStatus.objects.filter(pk=finding.pk).values_list("status", "last_error_code").get()
        for finding in findings
    ]


@pytest.fixture
def down_sdrs(rsa_keys, sdrs_settings) -> Iterator[SdrsServer]:
    """The local SDRS, configured and stopped (connections refused); ``start()`` brings it back."""
    server = SdrsServer(public_key=rsa_keys[1], callback_secret=CALLBACK_SECRET).start()
    server.failures.drop_callbacks = True
    sdrs_settings(url=server.url)
    server.stop()
    yield server
    server.close()


# --- the circuit breaker ---------------------------------------------------------------


@pytest.mark.django_db
def test_the_circuit_opens_after_consecutive_unavailable_attempts_and_any_answer_resets_the_count(settings, no_broker):
    settings.SDRS_BREAKER_THRESHOLD = 3
    assert breaker.breaker_record_failure(code="sdrs_unavailable") is False
    assert breaker.breaker_record_failure(code="sdrs_auth_rejected") is False  # SDRS answered: not counted
    assert breaker.breaker_record_success() is False  # the count goes back to 0; nothing to close
    assert _health().failures == 0
    opened = [breaker.breaker_record_failure(code="sdrs_server_error") for _ in range(4)]
    assert opened == [False, False, True, False]  # opened once, at the threshold
    health = _health()
    assert (health.circuit, health.failures, health.last_failure_code) == ("open", 4, "sdrs_server_error")
    # The first half-open probe is queued, once.
    assert JobRun.objects.filter(name=PROBE, status="queued").count() == 1
    assert breaker.breaker_is_open()


@pytest.mark.django_db
def test_a_verification_that_fails_as_unavailable_opens_the_circuit_at_once(no_broker):
    assert breaker.breaker_open(code="sdrs_bad_request") is False
    assert breaker.breaker_open(code="sdrs_timeout") is True
    assert breaker.breaker_open(code="sdrs_timeout") is False  # already open
    assert _health().circuit == "open"


@pytest.mark.django_db
def test_while_the_circuit_is_open_a_verification_parks_its_finding_and_sends_nothing(
    project, developer, import_findings, down_sdrs, no_broker
):
    (finding,) = import_findings(project, [("AWS", "AKIA-park-1")], user=developer)
    down_sdrs.start()
    breaker.breaker_open(code="sdrs_unavailable")
    outcome, run = run_inline(tasks.verify_partner_token, finding_id=finding.pk)
    assert (outcome, run.result) == ("succeeded", {"skipped": "sdrs_down"})
    assert _statuses([finding]) == [("unknown", "sdrs_down")]
    assert down_sdrs.verifies == []
    # The refresher sends nothing either while the circuit is open.
    FindingTokenStatus.objects.filter(pk=finding.pk).update(next_refresh_at=timezone.now())
    tick = services.token_statuses_refresh()
    assert (tick["claimed"], tick.get("skipped_paused")) == (1, 1)
    assert down_sdrs.verifies == []


@pytest.mark.django_db(transaction=True)
def test_the_probe_closes_the_circuit_when_sdrs_answers_and_the_parked_findings_are_verified_at_once(
    project, developer, import_findings, down_sdrs, settings, no_broker
):
    """SDRS down past the retry window: a finding's last attempt fails as unavailable and the
    circuit opens; the next findings are parked. Probes while it is down send one request each and change nothing;
    the first probe after SDRS is back closes the circuit, makes every parked finding due
    and starts a refresher tick, which sends each token once."""
    settings.SDRS_BREAKER_THRESHOLD = 100  # opened by the failed run, not by the count
    findings = import_findings(project, [("AWS", f"AKIA-outage-{n}") for n in range(3)], user=developer)
    last = tasks.verify_partner_token.retry.max_attempts
    outcomes = [run_inline(tasks.verify_partner_token, attempt=last, finding_id=finding.pk)[0] for finding in findings]
    # The first run's last attempt fails as unavailable and opens the circuit; the others
    # are parked without a request.
    assert outcomes == ["failed", "succeeded", "succeeded"]
    assert _statuses(findings) == [("unknown", "sdrs_unavailable"), ("unknown", "sdrs_down"), ("unknown", "sdrs_down")]
    assert _health().circuit == "open"

    assert services.sdrs_probe() == {"circuit": "open", "probe": "sdrs_unavailable"}  # still down
    assert JobRun.objects.filter(name=PROBE, status="queued").count() == 1  # the next one is queued

    down_sdrs.start()
    assert services.sdrs_probe() == {"circuit": "closed", "probe": "http_400"}  # the token-less probe
    assert _health().circuit == "closed"
    assert [record.finding_id for record in down_sdrs.verifies] == [0]  # the probe carried no finding, no token
    due = FindingTokenStatus.objects.filter(next_refresh_at__lte=timezone.now()).count()
    assert due == len(findings)
    assert JobRun.objects.filter(name=REFRESH, status="queued").count() == 1  # a tick is started
    services.token_statuses_refresh()  # what that tick does
    assert _sends(down_sdrs) == {finding.pk: 1 for finding in findings}
    assert set(_statuses(findings)) == {("pending", "")}  # accepted, awaiting their callbacks
    # With the circuit closed, the probe sends nothing.
    assert services.sdrs_probe() == {"circuit": "closed"}
    assert len(down_sdrs.verifies) == len(findings) + 1


@pytest.mark.django_db
def test_the_probe_is_a_scheduled_job(settings):
    assert tasks.probe_sdrs.cron == settings.SDRS_PROBE_CRON == "* * * * *"


# --- a run that fails after SDRS may have accepted --------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_failing_after_sdrs_accepted_leaves_the_request_awaiting_its_callback(
    project, developer, import_findings, sdrs_server, sdrs_settings, no_broker
):
    """Its worker died on the last attempt after the 202 (the failure hook runs with
    worker_lost): the status stays pending for the request sent, the refresher does not
    send it again, and the callback, when it comes, is applied."""
    sdrs_settings(url=sdrs_server.url)
    (finding,) = import_findings(project, [("AWS", "AKIA-last-attempt")], user=developer)
    assert services.token_verification_run(finding_id=finding.pk)["accepted"] is True
    services.token_verification_failed(finding_id=finding.pk, code="worker_lost")  # the failure hook
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert status.status == "pending"
    FindingTokenStatus.objects.filter(pk=finding.pk).update(next_refresh_at=timezone.now())  # even if due
    assert services.token_statuses_refresh().get("claimed", 0) == 0
    assert services.token_verification_run(finding_id=finding.pk) == {"skipped": "already_accepted"}
    assert _sends(sdrs_server) == {finding.pk: 1}
    (record,) = sdrs_server.verifies
    applied = services.callback_result_apply(
        finding_id=finding.pk, status="active", verified_at=timezone.now(), request_id=record.request_id
    )
    assert applied == "applied"


# --- callbacks lost while our database was unavailable ----------------------------------


@pytest.fixture
def calling_back_sdrs(rsa_keys, sdrs_settings, live_server, settings) -> Iterator[SdrsServer]:
    """The local SDRS calling back into a live web server (a thread of this process)."""
    settings.EXTERNAL_URL = live_server.url
    server = SdrsServer(public_key=rsa_keys[1], callback_secret=CALLBACK_SECRET).start()
    sdrs_settings(url=server.url)
    yield server
    server.close()


@pytest.fixture
def database_down_for_callbacks() -> Iterator[dict]:
    """While ``state["down"]``, the callback endpoint's first database access fails as it
    does when PostgreSQL restarts (``OperationalError``)."""
    state = {"down": False}
    real = services.callback_authenticate

    def authenticate(**kwargs):
        if state["down"]:
            raise OperationalError("server closed the connection unexpectedly")
        return real(**kwargs)

    with mock.patch("secret_detection.views.services.callback_authenticate", side_effect=authenticate):
        yield state


@pytest.mark.django_db(transaction=True)
def test_findings_whose_callback_was_refused_during_a_database_outage_are_verified_again_once_it_is_back(
    project, developer, import_findings, calling_back_sdrs, database_down_for_callbacks, no_broker
):
    """SDRS accepts three requests and calls back while the database is down: 503, and SDRS
    gives up. Once the database is back, the next callback this web process serves writes
    the refusal and starts the sweep; the sweep sends the three tokens again (they would
    otherwise wait for SDRS_PENDING_TIMEOUT, 15 min), and their callbacks make them final.
    A finding verified after the outage is not sent again."""
    sdrs = calling_back_sdrs
    lost = import_findings(project, [("AWS", f"AKIA-refused-{n}") for n in range(3)], user=developer, prefix="lost")
    database_down_for_callbacks["down"] = True
    for finding in lost:
        assert services.token_verification_run(finding_id=finding.pk)["accepted"] is True
    wait_until(sdrs.callbacks_idle, progress=lambda: len(sdrs.callbacks), stall=30)
    assert {callback.http_status for callback in sdrs.callbacks} == {503}
    assert set(_statuses(lost)) == {("pending", "")}

    database_down_for_callbacks["down"] = False  # the database is back
    (later,) = import_findings(project, [("AWS", "AKIA-after-outage")], user=developer, prefix="later")
    assert services.token_verification_run(finding_id=later.pk)["accepted"] is True
    wait_until(sdrs.callbacks_idle, progress=lambda: len(sdrs.callbacks), stall=30)
    assert _statuses([later]) == [("active", "")]
    assert _health().callbacks_refused_at is not None
    # The sweep is started at once (here it runs inline: no cluster).
    assert JobRun.objects.filter(name="secret_detection.expire_pending", status="queued").count() == 1
    outcome, run = run_inline(tasks.expire_pending)
    assert (outcome, run.result) == ("succeeded", {"callbacks_lost": 3, "expired": 0})
    assert set(_statuses(lost)) == {("unknown", "callback_lost")}
    tick = services.token_statuses_refresh()
    assert tick["accepted"] == 3
    wait_until(sdrs.callbacks_idle, progress=lambda: len(sdrs.callbacks), stall=30)
    assert set(_statuses(lost)) == {("active", "")}
    assert _sends(sdrs) == {**{finding.pk: 2 for finding in lost}, later.pk: 1}
    # Nothing more to do: the next sweep finds no request from before the outage.
    assert services.callbacks_lost_reverify() == 0


@pytest.mark.django_db
def test_a_refusal_is_written_on_the_processs_next_database_connection(no_broker):
    """The web process that refused a callback writes it when it connects again (Django
    discards the broken connection and opens a new one on the next query)."""
    from django.db import connection

    callbacks.callback_refused_note()
    callbacks.callback_refusals_flush_on_connect(sender=None, connection=connection)
    assert _health().callbacks_refused_at is not None
    assert JobRun.objects.filter(name="secret_detection.expire_pending", status="queued").count() == 1
    assert callbacks.callback_refusals_flush() is False  # written once: nothing noted any more
