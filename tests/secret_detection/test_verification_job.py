"""PartnerTokenVerification: guards, the request SDRS receives, how each answer is
classified, the attempt log line, and retries at 4, 16 and 64 s."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from unittest import mock

import jwt
import pytest
import requests
import responses
import time_machine
from django.utils import timezone

from project.errors import PermanentError, RetryableError
from project.jobs import Defer, JobRun
from project.jobs.testing import run_inline
from secret_detection import services, tasks
from secret_detection.models import Finding, FindingTokenStatus, PartnerTokenType

pytestmark = pytest.mark.django_db

SDRS = "https://sdrs.example.com"
VERIFY_URL = f"{SDRS}/api/v1/token/verify"
TOKEN = "AKIAZQ3EXAMPLE7Q4VNB"


@pytest.fixture
def finding(project, developer, import_findings) -> Finding:
    (created,) = import_findings(project, [("AWS", TOKEN)], user=developer)
    return created


@pytest.fixture
def sdrs(sdrs_settings):
    sdrs_settings(url=SDRS)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mocked:
        yield mocked


def _status(finding: Finding) -> FindingTokenStatus:
    return FindingTokenStatus.objects.get(pk=finding.pk)


def test_request_is_a_signed_post_carrying_the_token_for_its_finding(finding, developer, project, sdrs, rsa_keys):
    sdrs.add(responses.POST, VERIFY_URL, status=202, json={"status": "accepted"})
    sent = []
    original = requests.Session.post

    def spy(self, url, **kwargs):
        sent.append(kwargs)
        return original(self, url, **kwargs)

    with mock.patch.object(requests.Session, "post", spy), time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        result = services.token_verification_run(finding_id=finding.pk)

    (call,) = sdrs.calls
    claims = jwt.decode(
        call.request.headers["Authorization"].removeprefix("Bearer "),
        rsa_keys[1],
        algorithms=["RS256"],
        audience="sdrs",
        issuer="sdrs-client",
        options={"verify_exp": False},
    )
    assert claims["sub"] == f"user:{developer.pk}"
    assert (claims["project_id"], claims["finding_id"]) == (project.pk, finding.pk)
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["iat"] == int(datetime.fromisoformat("2026-11-21T12:00:00+00:00").timestamp())
    assert json.loads(call.request.body) == {
        "token_type": "AWS",
        "token_value": TOKEN,
        "finding_id": finding.pk,
        "callback_url": "http://testserver/api/v4/internal/token_status/callback",
    }
    assert sent[0]["timeout"] == (2.0, 2.0)
    status = _status(finding)
    assert call.request.headers["X-Request-ID"] == status.last_request_id == result["sdrs_request_id"]
    assert (status.status, status.attempts, status.last_error_code) == ("pending", 1, "")
    assert status.accepted_at is not None
    assert status.sending_until is None


def test_each_attempt_has_its_own_request_id(finding, sdrs):
    sdrs.add(responses.POST, VERIFY_URL, status=503)
    sdrs.add(responses.POST, VERIFY_URL, status=202)
    with pytest.raises(RetryableError):
        services.token_verification_run(finding_id=finding.pk)
    services.token_verification_run(finding_id=finding.pk)
    first, second = (call.request.headers["X-Request-ID"] for call in sdrs.calls)
    assert first != second


@pytest.mark.parametrize(
    ("answer", "code", "retry_after"),
    [
        ({"status": 500}, "sdrs_server_error", None),
        ({"status": 502}, "sdrs_server_error", None),
        ({"status": 503, "headers": {"Retry-After": "20"}}, "sdrs_server_error", 20),
        ({"status": 429, "headers": {"Retry-After": "30"}}, "sdrs_rate_limited", 30),
        ({"status": 429}, "sdrs_rate_limited", 60),
        ({"body": requests.ConnectionError("refused")}, "sdrs_unavailable", None),
        ({"body": requests.ConnectTimeout("slow")}, "sdrs_timeout", None),  # nothing was written
    ],
)
def test_transient_answers_are_retryable_and_leave_the_status_pending(finding, sdrs, answer, code, retry_after):
    sdrs.add(responses.POST, VERIFY_URL, **answer)
    with pytest.raises(RetryableError) as caught:
        services.token_verification_run(finding_id=finding.pk)
    assert caught.value.code == code
    assert caught.value.retry_after == retry_after
    assert TOKEN not in str(caught.value)
    status = _status(finding)
    assert (status.status, status.last_error_code) == ("pending", code)
    assert status.sending_until is None


def test_a_read_timeout_leaves_the_request_to_its_callback_and_sends_nothing_again(finding, sdrs):
    """The request was written and SDRS did not answer in time: it may have accepted it.
    The status stays pending for that request, and neither a retry nor a re-run sends the
    token again before SDRS_PENDING_TIMEOUT."""
    sdrs.add(responses.POST, VERIFY_URL, body=requests.ReadTimeout("slow"))
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        result = services.token_verification_run(finding_id=finding.pk)
        status = _status(finding)
        assert result == {"unconfirmed": True, "sdrs_request_id": status.last_request_id}
        assert (status.status, status.last_error_code, status.accepted_at) == ("pending", "sdrs_timeout", None)
        assert status.sending_until == timezone.now()  # the lease ended with no answer recorded
        assert services.token_verification_run(finding_id=finding.pk) == {"skipped": "unconfirmed"}
    assert len(sdrs.calls) == 1


@pytest.mark.parametrize(
    ("http_status", "code"),
    [(400, "sdrs_bad_request"), (401, "sdrs_auth_rejected"), (403, "sdrs_auth_rejected"), (422, "sdrs_unprocessable")],
)
def test_refusals_are_permanent(finding, sdrs, http_status, code):
    sdrs.add(responses.POST, VERIFY_URL, status=http_status, json={"error": f"echo {TOKEN}"})
    with pytest.raises(PermanentError) as caught:
        services.token_verification_run(finding_id=finding.pk)
    assert caught.value.code == code
    assert TOKEN not in str(caught.value)


def test_guard_finding_missing_is_skipped_without_a_request(sdrs, caplog):
    assert services.token_verification_run(finding_id=987654) == {"skipped": "finding_missing"}
    assert len(sdrs.calls) == 0
    assert "the finding no longer exists" in caplog.text


def test_guard_disabled_verification_comes_before_configuration(finding, sdrs_settings, sdrs):
    sdrs_settings(sdrs_enabled=False, sdrs_url="", sdrs_jwt_signing_key="")
    assert services.token_verification_run(finding_id=finding.pk) == {"skipped": "verification_disabled"}
    status = _status(finding)
    assert (status.status, status.last_error_code) == ("unknown", "verification_disabled")
    assert status.next_refresh_at is not None
    assert len(sdrs.calls) == 0


def test_guard_partner_type_switched_off_is_skipped(finding, sdrs):
    PartnerTokenType.objects.filter(token_type="AWS").update(enabled=False)
    assert services.token_verification_run(finding_id=finding.pk) == {"skipped": "partner_type_disabled"}
    assert len(sdrs.calls) == 0


@pytest.mark.parametrize(
    ("settings_change", "finding_change", "code"),
    [
        ({"sdrs_url": ""}, {"raw_value": ""}, "sdrs_not_configured"),
        ({"sdrs_jwt_signing_key": ""}, {"raw_value": ""}, "signing_key_missing"),
        ({"sdrs_jwt_signing_key": "-----BEGIN PRIVATE KEY-----\nnope\n"}, {}, "signing_key_invalid"),
        ({}, {"raw_value": ""}, "finding_without_token"),
    ],
)
def test_guard_configuration_and_finding_problems_fail_permanently_in_order(
    finding, sdrs_settings, sdrs, settings_change, finding_change, code
):
    sdrs_settings(url=SDRS, **settings_change)
    if finding_change:
        Finding.objects.filter(pk=finding.pk).update(**finding_change)
    with pytest.raises(PermanentError) as caught:
        services.token_verification_run(finding_id=finding.pk)
    assert caught.value.code == code
    assert len(sdrs.calls) == 0
    assert _status(finding).status == "unknown"


def test_a_rerun_after_an_accepted_request_does_not_send_the_token_again(finding, sdrs):
    sdrs.add(responses.POST, VERIFY_URL, status=202)
    services.token_verification_run(finding_id=finding.pk)
    assert services.token_verification_run(finding_id=finding.pk) == {"skipped": "already_accepted"}
    assert len(sdrs.calls) == 1
    # "Verify now" forces a new request.
    services.token_verification_run(finding_id=finding.pk, force=True)
    assert len(sdrs.calls) == 2


def test_an_attempt_in_flight_makes_a_second_one_wait_without_spending_an_attempt(finding, sdrs):
    FindingTokenStatus.objects.filter(pk=finding.pk).update(
        status="pending", sending_until=timezone.now() + timedelta(seconds=9)
    )
    with pytest.raises(Defer) as caught:
        services.token_verification_run(finding_id=finding.pk)
    assert 8 <= caught.value.seconds <= 9
    assert len(sdrs.calls) == 0


def test_every_attempt_logs_one_line_with_its_decision_and_a_masked_token(finding, sdrs, caplog, no_broker):
    caplog.set_level(logging.INFO, logger="secret_detection")
    sdrs.add(responses.POST, VERIFY_URL, status=500)
    sdrs.add(responses.POST, VERIFY_URL, status=429, headers={"Retry-After": "30"})
    sdrs.add(responses.POST, VERIFY_URL, status=401)
    sdrs.add(responses.POST, VERIFY_URL, status=202)
    outcomes = [
        run_inline(tasks.verify_partner_token, attempt=attempt, finding_id=finding.pk)[0] for attempt in (1, 2, 3)
    ]
    assert outcomes == ["retried", "retried", "failed"]  # retryable, retryable, permanent
    services.token_verification_run(finding_id=finding.pk)

    lines = [r for r in caplog.records if r.getMessage().startswith("SDRS verification attempt")]
    assert [(r.attempt, r.http_status, r.decision) for r in lines] == [
        (1, 500, "retry in 4 s"),
        (2, 429, "retry in 30 s"),
        (3, 401, "failed: sdrs_auth_rejected"),
        (1, 202, "accepted"),
    ]
    for record, call in zip(lines, sdrs.calls, strict=True):
        assert record.finding_id == finding.pk
        assert record.token_type == "AWS"
        assert record.token == finding.value_fingerprint
        assert record.sdrs_request_id == call.request.headers["X-Request-ID"]
    assert [r.error_class for r in lines[:3]] == ["SdrsServerError", "SdrsRateLimited", "SdrsRejected"]
    assert TOKEN not in caplog.text


def test_failure_hook_leaves_the_status_unknown_with_the_error_code(finding, sdrs):
    sdrs.add(responses.POST, VERIFY_URL, status=503)
    with pytest.raises(RetryableError):
        services.token_verification_run(finding_id=finding.pk)
    services.token_verification_failed(finding_id=finding.pk, code="sdrs_server_error")
    status = _status(finding)
    assert (status.status, status.last_error_code) == ("unknown", "sdrs_server_error")
    assert status.pending_since is None
    assert status.next_refresh_at > timezone.now()  # the refresher tries again later


def test_retries_happen_4_16_and_64_seconds_after_each_failure_then_the_job_fails(finding, sdrs_settings, no_broker):
    """SDRS unreachable (a closed port, over real TCP); the toolkit runs each attempt, as
    a worker would, when it is due. The due times it records prove the back-off; the clock
    is time-machine's."""
    sdrs_settings()  # a URL where nothing listens
    outcomes, gaps = [], []
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False) as clock:
        for attempt in (1, 2, 3, 4):
            outcome, run = run_inline(tasks.verify_partner_token, attempt=attempt, finding_id=finding.pk)
            outcomes.append(outcome)
            if outcome == "retried":
                (attempted,) = run.history
                gaps.append((run.due_at - datetime.fromisoformat(attempted["finished_at"])).total_seconds())
                clock.move_to(run.due_at)

    assert run.status == "failed"
    assert run.error_code == "sdrs_unavailable"
    assert outcomes == ["retried", "retried", "retried", "failed"]
    assert gaps == [4, 16, 64]
    status = _status(finding)
    assert (status.status, status.last_error_code, status.attempts) == ("unknown", "sdrs_unavailable", 4)


def test_429_retry_after_longer_than_the_policy_delay_is_honoured(finding, sdrs, no_broker):
    sdrs.add(responses.POST, VERIFY_URL, status=429, headers={"Retry-After": "90"})
    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        outcome, run = run_inline(tasks.verify_partner_token, attempt=1, finding_id=finding.pk)
        assert outcome == "retried"
        assert run.status == JobRun.Status.QUEUED
        assert run.due_at == timezone.now() + timedelta(seconds=90)


# --- against the local SDRS server, over real HTTP ----------------------------------


def test_the_local_sdrs_accepts_a_real_request_and_checks_our_jwt(finding, developer, sdrs_server, sdrs_settings):
    sdrs_settings(url=sdrs_server.url)
    services.token_verification_run(finding_id=finding.pk)
    (record,) = sdrs_server.verifies
    assert (record.answered, record.finding_id, record.subject) == (202, finding.pk, f"user:{developer.pk}")
    assert record.request_id == _status(finding).last_request_id


def test_a_slow_sdrs_is_an_unconfirmed_timeout_that_is_not_sent_again(finding, sdrs_server, sdrs_settings):
    sdrs_settings(url=sdrs_server.url, sdrs_timeout=0.3)
    sdrs_server.failures.latency = 1.0
    assert services.token_verification_run(finding_id=finding.pk)["unconfirmed"] is True
    status = _status(finding)
    assert (status.status, status.last_error_code) == ("pending", "sdrs_timeout")
    assert services.token_verification_run(finding_id=finding.pk) == {"skipped": "unconfirmed"}


def test_sdrs_refusing_our_key_is_permanent(finding, sdrs_server, sdrs_settings):
    from tests.support.sdrs import keypair

    sdrs_settings(url=sdrs_server.url, sdrs_jwt_signing_key=keypair()[0])
    with pytest.raises(PermanentError) as caught:
        services.token_verification_run(finding_id=finding.pk)
    assert caught.value.code == "sdrs_auth_rejected"
    assert sdrs_server.rejections["InvalidSignatureError"] == 1


def test_a_429_from_the_local_sdrs_carries_its_retry_after(finding, sdrs_server, sdrs_settings):
    sdrs_settings(url=sdrs_server.url)
    sdrs_server.failures.status, sdrs_server.failures.retry_after = 429, 45
    with pytest.raises(RetryableError) as caught:
        services.token_verification_run(finding_id=finding.pk)
    assert (caught.value.code, caught.value.retry_after) == ("sdrs_rate_limited", 45)
