"""SDRS's signed callbacks: authenticate them like webhooks, then apply results in order."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from project.errors import NotFound, Unauthorized, ValidationFailed
from project.models import ApplicationSetting
from secret_detection import metrics
from secret_detection.models import TokenStatus
from secret_detection.services import statuses

logger = logging.getLogger(__name__)

SIGNATURE_PREFIX = "sha256="
MAX_BODY_BYTES = 64 * 1024
RESULT_STATUSES = (TokenStatus.ACTIVE, TokenStatus.INACTIVE, TokenStatus.UNKNOWN)


def callback_signature(*, secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``timestamp + "." + body`` under the shared secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def _rejected(reason: str, message: str) -> Unauthorized:
    metrics.CALLBACKS.labels(result=reason).inc()
    logger.warning("SDRS callback rejected: %s", message, extra={"reason": reason})
    return Unauthorized("401 Unauthorized", code=reason)


def callback_authenticate(*, body: bytes, timestamp: str | None, signature: str | None) -> None:
    """Raise ``Unauthorized`` unless ``signature`` is ours for ``timestamp`` and the raw
    ``body``, and the timestamp is within SDRS_CALLBACK_MAX_SKEW of now."""
    secret = ApplicationSetting.current().effective_sdrs().callback_secret
    if not secret:
        raise _rejected("callback_secret_missing", "no SDRS callback secret is configured")
    if not timestamp or not signature:
        raise _rejected("signature_missing", "X-SDRS-Timestamp or X-SDRS-Signature is missing")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise _rejected("timestamp_invalid", "X-SDRS-Timestamp is not unix seconds")
    expected = callback_signature(secret=secret, timestamp=timestamp, body=body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise _rejected("signature_invalid", "the signature does not match")
    # Checked after the signature, so an unsigned request learns nothing about our clock.
    skew = abs(timezone.now().timestamp() - int(timestamp))
    if skew > settings.SDRS_CALLBACK_MAX_SKEW:
        raise _rejected("timestamp_expired", f"the timestamp is {skew:.0f} s off")


def _invalid(message: str) -> ValidationFailed:
    metrics.CALLBACKS.labels(result="invalid").inc()
    return ValidationFailed(message, code="invalid_callback")


def _check_result(status: str, verified_at: dt.datetime, request_id: str) -> None:
    """The rules of a result, checked again here whoever parsed it (the view's serializer),
    so that a caller of the service cannot apply an impossible result."""
    if status not in RESULT_STATUSES:
        raise _invalid(f"status must be one of {', '.join(RESULT_STATUSES)}")
    if not 0 < len(request_id) <= 64:
        raise _invalid("request_id must be a string of 1 to 64 characters")
    if verified_at.tzinfo is None:
        raise _invalid("verified_at must be an ISO-8601 time with a time zone")
    if verified_at > timezone.now() + timedelta(seconds=settings.SDRS_CALLBACK_MAX_SKEW):
        # A time in the future would block every later result.
        raise _invalid("verified_at is in the future")


def callback_result_apply(*, finding_id: int, status: str, verified_at: dt.datetime, request_id: str) -> str:
    """Apply one authenticated, parsed result; returns ``applied``, ``duplicate`` or ``stale``.

    A repeat of the stored result is a no-op, and a result verified before the stored
    ``last_verified_at`` never replaces it, so replays and late deliveries change nothing.
    Raises ``NotFound`` for an unknown finding.
    """
    _check_result(status, verified_at, request_id)
    outcome = statuses.status_result(
        finding_id=finding_id, status=status, verified_at=verified_at, request_id=request_id
    )
    if outcome == "missing":
        metrics.CALLBACKS.labels(result="not_found").inc()
        raise NotFound("404 Finding Not Found", code="finding_not_found")
    metrics.CALLBACKS.labels(result=outcome).inc()
    logger.info(
        "SDRS callback %s",
        outcome,
        extra={"finding_id": finding_id, "status": status, "sdrs_request_id": request_id},
    )
    return outcome
