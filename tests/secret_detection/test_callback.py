"""POST /api/v4/internal/token_status/callback: signed like a webhook, idempotent, and
applied only to the request the finding awaits."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from rest_framework.test import APIClient

from project.errors import NotFound, ValidationFailed
from secret_detection.models import Finding, FindingTokenStatus
from secret_detection.services import callback_signature, statuses
from tests.secret_detection.conftest import CALLBACK_SECRET

pytestmark = pytest.mark.django_db

URL = "/api/v4/internal/token_status/callback"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def sent(finding: Finding, request_id: str = "req-1") -> Finding:
    """The finding as after SDRS accepted the request ``request_id`` for it."""
    FindingTokenStatus.objects.filter(pk=finding.pk).update(
        status="pending",
        pending_since=NOW - timedelta(seconds=5),
        accepted_at=NOW - timedelta(seconds=5),
        last_request_id=request_id,
    )
    return finding


@pytest.fixture
def finding(project, import_findings, sdrs_settings) -> Finding:
    """A finding whose request ``req-1`` SDRS accepted and has not answered yet."""
    sdrs_settings()
    (created,) = import_findings(project, [("AWS", "AKIAZQ3EXAMPLE7Q4VNB")])
    return sent(created)


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture(autouse=True)
def schema_checked(api, monkeypatch):
    """The clients of this module check every response against the served schema too."""
    monkeypatch.setattr(f"{__name__}.APIClient", lambda: api())


def body_for(finding_id: int, status: str = "active", verified_at: datetime = NOW, request_id: str = "req-1") -> bytes:
    return json.dumps(
        {"finding_id": finding_id, "status": status, "verified_at": verified_at.isoformat(), "request_id": request_id}
    ).encode()


def post(body: bytes, *, timestamp: int | None = None, secret: str = CALLBACK_SECRET, signature: str | None = None):
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {"HTTP_X_SDRS_TIMESTAMP": str(timestamp)}
    headers["HTTP_X_SDRS_SIGNATURE"] = signature or callback_signature(
        secret=secret, timestamp=str(timestamp), body=body
    )
    return APIClient().post(URL, data=body, content_type="application/json", **headers)


def error_of(response) -> tuple[str, str]:
    """An error's message and our code: the code travels in ``X-Error-Code`` with GitLab's
    ``{"message": …}`` body (formerly in the body's ``error`` key, read too)."""
    body = response.json()
    return body["message"], response.get("X-Error-Code") or body.get("error")


def snapshot(finding: Finding) -> dict:
    return FindingTokenStatus.objects.filter(pk=finding.pk).values().get()


def test_signed_result_is_applied(finding):
    response = post(body_for(finding.pk, "active", request_id="req-1"))
    assert response.status_code == 200, response.content
    assert response.json()["result"] == "applied"
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.last_verified_at, status.last_request_id) == ("active", NOW, "req-1")
    assert (status.pending_since, status.accepted_at, status.last_error_code) == (None, None, "")
    assert status.next_refresh_at == NOW + timedelta(hours=24)  # active tokens are re-checked a day later


def test_inactive_is_final_and_unknown_is_retried_later(finding, project, import_findings):
    post(body_for(finding.pk, "inactive"))
    assert FindingTokenStatus.objects.get(pk=finding.pk).next_refresh_at is None
    (other,) = import_findings(project, [("AWS", "AKIA2")], prefix="other")
    post(body_for(sent(other).pk, "unknown"))
    assert FindingTokenStatus.objects.get(pk=other.pk).next_refresh_at == NOW + timedelta(minutes=10)


def test_a_repeat_of_the_same_result_is_a_no_op(finding):
    body = body_for(finding.pk, "active")
    assert post(body).json()["result"] == "applied"
    before = snapshot(finding)
    repeat = post(body)
    assert repeat.status_code == 200
    assert repeat.json()["result"] == "duplicate"
    assert snapshot(finding) == before


def test_another_result_for_an_answered_request_changes_nothing(finding):
    post(body_for(finding.pk, "inactive", verified_at=NOW))
    before = snapshot(finding)
    late = post(body_for(finding.pk, "active", verified_at=NOW - timedelta(minutes=3)))
    assert late.status_code == 200
    assert late.json()["result"] == "stale"
    assert snapshot(finding) == before


def test_the_result_of_an_older_request_is_stale_and_the_newer_one_applies(finding):
    sent(finding, "req-2")  # "Verify now" sent a newer request before req-1 was answered
    older = post(body_for(finding.pk, "active", verified_at=NOW - timedelta(seconds=1), request_id="req-1"))
    assert older.json()["result"] == "stale"
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.last_request_id) == ("pending", "req-2")  # still awaiting req-2
    assert post(body_for(finding.pk, "inactive", request_id="req-2")).json()["result"] == "applied"
    assert FindingTokenStatus.objects.get(pk=finding.pk).status == "inactive"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"secret": "not-the-secret"}, "signature_invalid"),
        ({"signature": "sha256=" + "0" * 64}, "signature_invalid"),
        ({"signature": "md5=abc"}, "signature_invalid"),
        ({"timestamp": int(NOW.timestamp()) - 301}, "timestamp_expired"),
        ({"timestamp": int(NOW.timestamp()) + 301}, "timestamp_expired"),
    ],
)
def test_forged_or_stale_callbacks_get_401_and_change_nothing(finding, kwargs, error):
    before = snapshot(finding)
    response = post(body_for(finding.pk, "inactive"), **kwargs)
    assert response.status_code == 401
    assert error_of(response) == ("401 Unauthorized", error)
    assert snapshot(finding) == before


def test_a_timestamp_within_300_seconds_is_accepted(finding):
    assert post(body_for(finding.pk), timestamp=int(NOW.timestamp()) - 299).status_code == 200


def test_a_signature_for_another_body_does_not_verify_this_one(finding):
    timestamp = str(int(NOW.timestamp()))
    signed = callback_signature(secret=CALLBACK_SECRET, timestamp=timestamp, body=body_for(finding.pk, "active"))
    response = post(body_for(finding.pk, "inactive"), timestamp=int(timestamp), signature=signed)
    assert response.status_code == 401
    assert FindingTokenStatus.objects.get(pk=finding.pk).status == "pending"


def test_missing_signature_headers_get_401(finding):
    before = snapshot(finding)
    response = APIClient().post(URL, data=body_for(finding.pk), content_type="application/json")
    assert response.status_code == 401
    assert error_of(response)[1] == "signature_missing"
    response = APIClient().post(
        URL, data=body_for(finding.pk), content_type="application/json", HTTP_X_SDRS_TIMESTAMP="yesterday"
    )
    assert response.status_code == 401
    assert snapshot(finding) == before


def test_callbacks_are_refused_while_no_secret_is_configured(finding, sdrs_settings):
    sdrs_settings(sdrs_callback_secret="")
    response = post(body_for(finding.pk), secret="")
    assert response.status_code == 401
    assert error_of(response)[1] == "callback_secret_missing"


def test_a_replayed_old_result_after_a_newer_one_changes_nothing(finding, clock):
    old = body_for(finding.pk, "active", verified_at=NOW)
    old_timestamp = int(NOW.timestamp())
    post(old, timestamp=old_timestamp)
    clock.move_to(NOW + timedelta(minutes=2))
    sent(finding, "req-2")
    post(body_for(finding.pk, "inactive", verified_at=NOW + timedelta(minutes=2), request_id="req-2"))
    before = snapshot(finding)
    # An attacker replays the first, genuinely signed, callback within the skew window.
    replay = post(old, timestamp=old_timestamp)
    assert replay.status_code == 200
    assert replay.json()["result"] == "stale"
    assert snapshot(finding) == before
    clock.move_to(NOW + timedelta(minutes=6))
    assert post(old, timestamp=old_timestamp).status_code == 401


def test_unknown_finding_gets_404(finding):
    response = post(body_for(finding.pk + 1000))
    assert response.status_code == 404
    assert error_of(response) == ("404 Finding Not Found", "finding_not_found")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        ({"status": "revoked"}, "status must be one of active, inactive, unknown"),
        ({"status": "pending"}, "status must be one of active, inactive, unknown"),
        ({"finding_id": "1"}, "finding_id must be a positive integer"),
        ({"finding_id": True}, "finding_id must be a positive integer"),
        ({"verified_at": "yesterday"}, "verified_at must be an ISO-8601 time with a time zone"),
        ({"verified_at": "2026-11-21T12:00:00"}, "verified_at must be an ISO-8601 time with a time zone"),
        ({"verified_at": "2026-11-21T13:00:00Z"}, "verified_at is in the future"),
        ({"request_id": ""}, "request_id must be a string of 1 to 64 characters"),
    ],
)
def test_malformed_callbacks_get_400_and_change_nothing(finding, payload, message):
    if isinstance(payload, dict):
        base = json.loads(body_for(finding.pk))
        payload = json.dumps({**base, **payload}).encode()
    before = snapshot(finding)
    response = post(payload)
    assert response.status_code == 400
    assert error_of(response) == (message, "invalid_callback")
    assert snapshot(finding) == before


def test_the_callback_needs_no_user_token_and_ignores_one(finding, api, developer):
    body = body_for(finding.pk)
    timestamp = str(int(NOW.timestamp()))
    client = api(developer)
    response = client.post(
        URL,
        data=body,
        content_type="application/json",
        HTTP_X_SDRS_TIMESTAMP=timestamp,
        HTTP_X_SDRS_SIGNATURE=callback_signature(secret=CALLBACK_SECRET, timestamp=timestamp, body=body),
    )
    assert response.status_code == 200
    assert api(developer).post(URL, data=body, content_type="application/json").status_code == 401


def test_a_parsed_result_is_applied_by_the_service_the_view_calls(finding):
    from secret_detection import services

    apply = services.callback_result_apply
    assert apply(finding_id=finding.pk, status="inactive", verified_at=NOW, request_id="req-1") == "applied"
    assert apply(finding_id=finding.pk, status="inactive", verified_at=NOW, request_id="req-1") == "duplicate"
    assert apply(finding_id=finding.pk, status="active", verified_at=NOW - timedelta(minutes=1), request_id="r0") == (
        "stale"
    )
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.last_request_id, status.next_refresh_at) == ("inactive", "req-1", None)


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"finding_id": 987654}, NotFound, "404 Finding Not Found"),
        ({"status": "pending"}, ValidationFailed, "status must be one of active, inactive, unknown"),
        ({"verified_at": NOW + timedelta(hours=1)}, ValidationFailed, "verified_at is in the future"),
        (
            {"verified_at": NOW.replace(tzinfo=None)},
            ValidationFailed,
            "verified_at must be an ISO-8601 time with a time zone",
        ),
        ({"request_id": "x" * 65}, ValidationFailed, "request_id must be a string of 1 to 64 characters"),
    ],
)
def test_the_result_service_keeps_the_rules_whoever_parsed_the_body(finding, fields, error, message):
    from secret_detection import services

    before = snapshot(finding)
    arguments = {"finding_id": finding.pk, "status": "active", "verified_at": NOW, "request_id": "r1", **fields}
    with pytest.raises(error) as caught:
        services.callback_result_apply(**arguments)
    assert caught.value.message == message
    assert snapshot(finding) == before


# --- a result applies only to the request the finding awaits (security issue, part 6) -----


def test_a_result_whose_request_id_does_not_match_the_request_sent_changes_nothing(finding):
    before = snapshot(finding)
    response = post(body_for(finding.pk, "inactive", request_id="not-the-request-we-sent"))
    assert (response.status_code, response.json()) == (200, {"message": "200 OK", "result": "stale"})
    assert snapshot(finding) == before
    # The genuine result still applies afterwards.
    assert post(body_for(finding.pk, "active", request_id="req-1")).json()["result"] == "applied"


def test_a_result_for_a_finding_never_sent_to_sdrs_changes_nothing(project, import_findings, sdrs_settings):
    sdrs_settings()
    (never,) = import_findings(project, [("AWS", "AKIANEVERSENT0000000")], prefix="never")
    before = snapshot(never)
    assert (before["status"], before["last_request_id"]) == ("unknown", "")
    response = post(body_for(never.pk, "active", request_id="req-1"))
    assert (response.status_code, response.json()["result"]) == (200, "stale")
    assert snapshot(never) == before


def test_a_result_for_a_finding_verified_locally_changes_nothing(finding):
    # SDRS's earlier request req-1 was answered, then our own check settled the finding.
    assert post(body_for(finding.pk, "active", request_id="req-1")).json()["result"] == "applied"
    assert statuses.status_checked_locally(finding_id=finding.pk, status="inactive")
    before = snapshot(finding)
    assert before["last_request_id"] == ""
    for status in ("active", "unknown"):
        response = post(body_for(finding.pk, status, request_id="req-1"))
        assert (response.status_code, response.json()["result"]) == (200, "stale")
    assert snapshot(finding) == before


def test_a_replay_of_the_applied_result_gives_the_same_answer_every_time(finding, clock):
    body = body_for(finding.pk, "inactive")
    assert post(body).json()["result"] == "applied"
    after = snapshot(finding)
    for seconds in (1, 60, 250):
        clock.move_to(NOW + timedelta(seconds=seconds))
        replay = post(body)
        assert (replay.status_code, replay.json()) == (200, {"message": "200 OK", "result": "duplicate"})
    assert snapshot(finding) == after


def test_verified_at_ahead_of_our_clock_is_clamped_to_the_time_of_receipt(finding, clock):
    """Before: a verified_at 299 s ahead was stored as is, and the genuine result of the
    next request (verified earlier than that) was then refused as stale."""
    ahead = post(body_for(finding.pk, "inactive", verified_at=NOW + timedelta(seconds=299)))
    assert ahead.json()["result"] == "applied"
    assert FindingTokenStatus.objects.get(pk=finding.pk).last_verified_at == NOW
    clock.move_to(NOW + timedelta(seconds=30))
    sent(finding, "req-2")
    genuine = post(body_for(finding.pk, "active", verified_at=NOW + timedelta(seconds=20), request_id="req-2"))
    assert genuine.json()["result"] == "applied"
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.last_verified_at) == ("active", NOW + timedelta(seconds=20))


def test_a_late_callback_for_a_value_that_changed_since_cannot_apply(finding, project, import_findings):
    """The finding's value changed (a re-import at the same place): the request sent for
    the old value is forgotten, and its callback matches nothing."""
    import_findings(project, [("AWS", "AKIAZQ3EXAMPLE7Q4VNB-rotated")])  # same place, new value
    reset = snapshot(finding)
    assert (reset["status"], reset["last_request_id"], reset["sending_until"]) == ("unknown", "", None)
    response = post(body_for(finding.pk, "active", request_id="req-1"))
    assert response.json()["result"] == "stale"
    assert snapshot(finding) == reset


def test_a_late_callback_for_the_request_sent_still_applies_after_the_pending_timeout(finding, clock, settings):
    from secret_detection import services

    clock.move_to(NOW + timedelta(seconds=settings.SDRS_PENDING_TIMEOUT + 60))
    assert services.pending_expire() == 1
    expired = snapshot(finding)
    assert (expired["status"], expired["last_error_code"]) == ("unknown", "callback_timeout")
    assert post(body_for(finding.pk, "active", verified_at=NOW, request_id="req-2")).json()["result"] == "stale"
    assert post(body_for(finding.pk, "active", verified_at=NOW, request_id="req-1")).json()["result"] == "applied"
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.last_error_code) == ("active", "")
