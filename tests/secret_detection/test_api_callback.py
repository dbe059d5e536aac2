"""The callback's input: JSON only, parsed by one serializer after the signature is checked."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
import time_machine
from django.utils import timezone

from secret_detection.models import Finding, FindingTokenStatus
from secret_detection.services import callback_signature
from tests.secret_detection.conftest import CALLBACK_SECRET

pytestmark = pytest.mark.django_db

URL = "/api/v4/internal/token_status/callback"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def finding(project, import_findings, sdrs_settings) -> Finding:
    sdrs_settings()
    (created,) = import_findings(project, [("AWS", "AKIAZQ3EXAMPLE7Q4VNB")])
    return created


def _signed(body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {
        "HTTP_X_SDRS_TIMESTAMP": timestamp,
        "HTTP_X_SDRS_SIGNATURE": callback_signature(secret=CALLBACK_SECRET, timestamp=timestamp, body=body),
    }


def _result(finding_id: int, **overrides) -> dict:
    return {
        "finding_id": finding_id,
        "status": "inactive",
        "verified_at": NOW.isoformat(),
        "request_id": "req-1",
        **overrides,
    }


def test_a_signed_form_body_is_refused_with_415_and_changes_nothing(api, finding) -> None:
    body = urlencode(_result(finding.pk)).encode()
    response = api().post(URL, data=body, content_type="application/x-www-form-urlencoded", **_signed(body))
    assert response.status_code == 415
    assert response["X-Error-Code"] == "unsupported_media_type"
    assert FindingTokenStatus.objects.get(pk=finding.pk).status == "unknown"


def test_a_signed_body_without_a_media_type_is_refused_with_415(api, finding) -> None:
    body = json.dumps(_result(finding.pk)).encode()
    response = api().generic("POST", URL, data=body, content_type="", **_signed(body))
    assert response.status_code == 415


def test_the_signature_is_checked_before_the_body_is_parsed(api, finding) -> None:
    body = b"{not json"
    response = api().post(URL, data=body, content_type="application/json", HTTP_X_SDRS_TIMESTAMP="1")
    assert response.status_code == 401
    assert response["X-Error-Code"] == "signature_missing"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the body is not valid JSON"),
        (b"null", "the body must be a JSON object"),
        (b'"text"', "the body must be a JSON object"),
        (b"NaN", "the body is not valid JSON"),
        (json.dumps({"finding_id": 2**63}).encode(), "finding_id must be a positive integer"),
        (json.dumps({"finding_id": 1.0}).encode(), "finding_id must be a positive integer"),
        (json.dumps({"finding_id": 0}).encode(), "finding_id must be a positive integer"),
        (json.dumps({"finding_id": 1}).encode(), "status must be one of active, inactive, unknown"),
        (json.dumps({"finding_id": 1, "status": "active", "request_id": 7}).encode(), "request_id must be"),
        (json.dumps({"finding_id": 1, "status": "active", "request_id": "x" * 65}).encode(), "request_id must be"),
        (
            json.dumps({"finding_id": 1, "status": "active", "request_id": "r", "verified_at": 1}).encode(),
            "verified_at must be an ISO-8601 time with a time zone",
        ),
    ],
)
def test_malformed_bodies_name_the_first_problem(api, finding, body, message) -> None:
    response = api().post(URL, data=body, content_type="application/json", **_signed(body))
    assert response.status_code == 400
    assert response["X-Error-Code"] == "invalid_callback"
    assert response.json()["message"].startswith(message)


def test_unknown_fields_are_ignored_and_whitespace_in_the_request_id_is_kept(api, finding) -> None:
    # The request SDRS answers (a callback applies only to the request we sent).
    FindingTokenStatus.objects.filter(pk=finding.pk).update(
        status="pending", last_request_id=" r 1 ", pending_since=timezone.now()
    )
    body = json.dumps(_result(finding.pk, request_id=" r 1 ", extra={"ignored": True})).encode()
    response = api().post(URL, data=body, content_type="application/json; charset=utf-8", **_signed(body))
    assert response.status_code == 200
    assert response.json() == {"message": "200 OK", "result": "applied"}
    assert FindingTokenStatus.objects.get(pk=finding.pk).last_request_id == " r 1 "


def test_invalid_callbacks_are_counted(api, finding) -> None:
    from secret_detection import metrics

    before = metrics.CALLBACKS.labels(result="invalid")._value.get()
    body = json.dumps(_result(finding.pk, status="revoked")).encode()
    assert api().post(URL, data=body, content_type="application/json", **_signed(body)).status_code == 400
    assert metrics.CALLBACKS.labels(result="invalid")._value.get() == before + 1


@pytest.mark.parametrize("timestamp", ["\u00b2", "\uff11\uff12\uff13", "12.5", "-1", "1" * 13, " 1"])
def test_a_timestamp_that_is_not_ascii_unix_seconds_is_a_401_not_a_500(api, finding, timestamp) -> None:
    body = json.dumps(_result(finding.pk)).encode()
    signature = callback_signature(secret=CALLBACK_SECRET, timestamp=timestamp, body=body)
    response = api().post(
        URL,
        data=body,
        content_type="application/json",
        HTTP_X_SDRS_TIMESTAMP=timestamp,
        HTTP_X_SDRS_SIGNATURE=signature,
    )
    assert response.status_code == 401
    assert response["X-Error-Code"] == "timestamp_invalid"
