"""POST /api/v4/internal/token_status/callback: signed like a webhook, idempotent, ordered."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from rest_framework.test import APIClient

from project.errors import NotFound, ValidationFailed
from secret_detection.models import Finding, FindingTokenStatus
from secret_detection.services import callback_signature
from tests.secret_detection.conftest import CALLBACK_SECRET

pytestmark = pytest.mark.django_db

URL = "/api/v4/internal/token_status/callback"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def finding(project, import_findings, sdrs_settings) -> Finding:
    sdrs_settings()
    (created,) = import_findings(project, [("AWS", "AKIAZQ3EXAMPLE7Q4VNB")])
    FindingTokenStatus.objects.filter(pk=created.pk).update(
        status="pending", pending_since=NOW - timedelta(seconds=5), accepted_at=NOW - timedelta(seconds=5)
    )
    return created


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


def snapshot(finding: Finding) -> dict:
    return FindingTokenStatus.objects.filter(pk=finding.pk).values().get()


def test_signed_result_is_applied(finding):
    response = post(body_for(finding.pk, "active", request_id="abc123"))
    assert response.status_code == 200, response.content
    assert response.json()["result"] == "applied"
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.last_verified_at, status.last_request_id) == ("active", NOW, "abc123")
    assert (status.pending_since, status.accepted_at, status.last_error_code) == (None, None, "")
    assert status.next_refresh_at == NOW + timedelta(hours=24)  # active tokens are re-checked a day later


def test_inactive_is_final_and_unknown_is_retried_later(finding, project, import_findings):
    post(body_for(finding.pk, "inactive"))
    assert FindingTokenStatus.objects.get(pk=finding.pk).next_refresh_at is None
    (other,) = import_findings(project, [("AWS", "AKIA2")], prefix="other")
    post(body_for(other.pk, "unknown"))
    assert FindingTokenStatus.objects.get(pk=other.pk).next_refresh_at == NOW + timedelta(minutes=10)


def test_a_repeat_of_the_same_result_is_a_no_op(finding):
    body = body_for(finding.pk, "active")
    assert post(body).json()["result"] == "applied"
    before = snapshot(finding)
    repeat = post(body)
    assert repeat.status_code == 200
    assert repeat.json()["result"] == "duplicate"
    assert snapshot(finding) == before


def test_an_older_result_never_overwrites_a_newer_one(finding):
    post(body_for(finding.pk, "inactive", verified_at=NOW))
    before = snapshot(finding)
    late = post(body_for(finding.pk, "active", verified_at=NOW - timedelta(minutes=3)))
    assert late.status_code == 200
    assert late.json()["result"] == "stale"
    assert snapshot(finding) == before


def test_a_newer_result_replaces_an_older_one(finding):
    post(body_for(finding.pk, "active", verified_at=NOW - timedelta(minutes=3)))
    post(body_for(finding.pk, "inactive", verified_at=NOW))
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
    assert response.json() == {"message": "401 Unauthorized", "error": error}
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
    assert response.json()["error"] == "signature_missing"
    response = APIClient().post(
        URL, data=body_for(finding.pk), content_type="application/json", HTTP_X_SDRS_TIMESTAMP="yesterday"
    )
    assert response.status_code == 401
    assert snapshot(finding) == before


def test_callbacks_are_refused_while_no_secret_is_configured(finding, sdrs_settings):
    sdrs_settings(sdrs_callback_secret="")
    response = post(body_for(finding.pk), secret="")
    assert response.status_code == 401
    assert response.json()["error"] == "callback_secret_missing"


def test_a_replayed_old_result_after_a_newer_one_changes_nothing(finding, clock):
    old = body_for(finding.pk, "active", verified_at=NOW)
    old_timestamp = int(NOW.timestamp())
    post(old, timestamp=old_timestamp)
    clock.move_to(NOW + timedelta(minutes=2))
    post(body_for(finding.pk, "inactive", verified_at=NOW + timedelta(minutes=2)))
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
    assert response.json() == {"message": "404 Finding Not Found", "error": "finding_not_found"}


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
    assert response.json() == {"message": message, "error": "invalid_callback"}
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
    assert apply(finding_id=finding.pk, status="inactive", verified_at=NOW, request_id="r1") == "applied"
    assert apply(finding_id=finding.pk, status="inactive", verified_at=NOW, request_id="r1") == "duplicate"
    assert apply(finding_id=finding.pk, status="active", verified_at=NOW - timedelta(minutes=1), request_id="r0") == (
        "stale"
    )
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.last_request_id, status.next_refresh_at) == ("inactive", "r1", None)


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
