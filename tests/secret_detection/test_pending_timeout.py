"""A pending status whose callback never comes goes back to unknown, with that reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from project.jobs.testing import run_inline
from secret_detection import services, tasks
from secret_detection.models import FindingTokenStatus

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
def pending(project, import_findings):
    def make(ago: float, **extra):
        (finding,) = import_findings(project, [("AWS", f"AKIA{ago}")], prefix=f"p{ago}")
        FindingTokenStatus.objects.filter(pk=finding.pk).update(
            status="pending",
            pending_since=NOW - timedelta(seconds=ago),
            accepted_at=NOW - timedelta(seconds=ago),
            **extra,
        )
        return finding

    return make


def test_pending_past_the_timeout_goes_back_to_unknown_with_the_reason(pending):
    late, recent = pending(901), pending(899)
    sending = pending(2000, sending_until=NOW + timedelta(seconds=5))

    with time_machine.travel(NOW, tick=False):
        assert services.pending_expire() == 1

    status = FindingTokenStatus.objects.get(pk=late.pk)
    assert (status.status, status.last_error_code) == ("unknown", "callback_timeout")
    assert (status.pending_since, status.accepted_at) == (None, None)
    assert status.next_refresh_at == NOW + timedelta(minutes=10)  # the refresher tries again
    assert FindingTokenStatus.objects.get(pk=recent.pk).status == "pending"
    assert FindingTokenStatus.objects.get(pk=sending.pk).status == "pending"  # its request is still in flight


def test_the_sweep_is_a_scheduled_job(pending, settings, no_broker):
    pending(3600)
    assert tasks.expire_pending.cron == settings.SDRS_PENDING_SWEEP_CRON
    with time_machine.travel(NOW, tick=False):
        outcome, run = run_inline(tasks.expire_pending)
    assert (outcome, run.result) == ("succeeded", {"callbacks_lost": 0, "expired": 1})
    assert not FindingTokenStatus.objects.filter(status="pending").exists()


def test_a_late_callback_after_the_timeout_is_still_applied(pending, sdrs_settings):
    from rest_framework.test import APIClient

    from secret_detection.services import callback_signature
    from tests.secret_detection.conftest import CALLBACK_SECRET

    sdrs_settings()
    finding = pending(1000, last_request_id="late")  # the request SDRS answers, late
    with time_machine.travel(NOW, tick=False):
        services.pending_expire()
        body = (
            f'{{"finding_id": {finding.pk}, "status": "inactive", '
            f'"verified_at": "{NOW.isoformat()}", "request_id": "late"}}'
        ).encode()
        timestamp = str(int(NOW.timestamp()))
        response = APIClient().post(
            "/api/v4/internal/token_status/callback",
            data=body,
            content_type="application/json",
            HTTP_X_SDRS_TIMESTAMP=timestamp,
            HTTP_X_SDRS_SIGNATURE=callback_signature(secret=CALLBACK_SECRET, timestamp=timestamp, body=body),
        )
    assert response.status_code == 200
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.last_error_code, status.next_refresh_at) == ("inactive", "", None)
