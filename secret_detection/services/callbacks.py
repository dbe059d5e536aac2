"""SDRS's signed callbacks: authenticate them like webhooks, then apply a result only to
the request it answers. A callback refused because the database was unavailable is noted,
so that the findings whose callback may have been lost are verified again once it is back."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import threading
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError
from django.db.models import Q
from django.utils import timezone

from project.errors import NotFound, Unauthorized, ValidationFailed
from project.models import ApplicationSetting
from secret_detection import metrics
from secret_detection.models import SdrsHealth, TokenStatus
from secret_detection.services import breaker, jobs, statuses

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
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses.
    if not re.fullmatch(r"[0-9]{1,12}", timestamp):
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
        # Beyond the clock skew we tolerate: a wrong clock or a made-up time.
        raise _invalid("verified_at is in the future")


def callback_result_apply(*, finding_id: int, status: str, verified_at: dt.datetime, request_id: str) -> str:
    """Apply one authenticated, parsed result; returns ``applied``, ``duplicate`` or ``stale``.

    The result is applied only to a finding that awaits exactly this request: pending with
    ``request_id`` as its last request (or that request's callback timed out and nothing
    was sent since). A result for an older request, for a finding never sent to SDRS or
    verified locally, or for a value that changed since, is ``stale`` and changes nothing;
    a replay of the result already applied is ``duplicate`` and changes nothing.
    ``verified_at`` is clamped to the time of receipt, so a clock ahead of ours (within
    the tolerated skew) cannot date a verdict in the future. Raises ``NotFound`` for an
    unknown finding.
    """
    received_at = timezone.now()
    _check_result(status, verified_at, request_id)
    outcome = statuses.status_result(
        finding_id=finding_id, status=status, verified_at=min(verified_at, received_at), request_id=request_id
    )
    if outcome == "missing":
        metrics.CALLBACKS.labels(result="not_found").inc()
        raise NotFound("404 Finding Not Found", code="finding_not_found")
    metrics.CALLBACKS.labels(result=outcome).inc()
    extra = {"finding_id": finding_id, "status": status, "sdrs_request_id": request_id}
    if outcome == "stale":
        # Signed by SDRS, yet not the answer to the request the finding awaits: a late
        # answer to a superseded request, or a result for a finding we never sent.
        logger.warning("SDRS callback stale: not the result of the request the finding awaits", extra=extra)
    else:
        logger.info("SDRS callback %s", outcome, extra=extra)
    return outcome


# --- callbacks refused during a database outage -----------------------------------------

_refused_lock = threading.Lock()
#: The latest callback this process refused because the database was unavailable, until
#: it is written to the database (``callback_refusals_flush``).
_refused_at: dt.datetime | None = None


def callback_refused_note() -> None:
    """The callback endpoint could not reach the database: SDRS's callback is refused
    (503), and SDRS may give up on it. Remember when, in this process: the database cannot
    take it now. No query."""
    global _refused_at
    with _refused_lock:
        _refused_at = timezone.now()
    metrics.CALLBACKS.labels(result="database_unavailable").inc()
    logger.warning("SDRS callback refused: the database is unavailable")


def callback_refusals_flush() -> bool:
    """Write the noted refusal to ``SdrsHealth.callbacks_refused_at`` and start the sweep
    that verifies again the findings whose callback it may have lost
    (``verification.callbacks_lost_reverify``), at once. Nothing noted: no query. The
    database still unavailable: the note is kept for the next try. True when written."""
    global _refused_at
    with _refused_lock:
        noted = _refused_at
    if noted is None:
        return False
    try:
        breaker.ensure_row()
        later = Q(callbacks_refused_at__isnull=True) | Q(callbacks_refused_at__lt=noted)
        SdrsHealth.objects.filter(later, pk=1).update(callbacks_refused_at=noted, updated_at=timezone.now())
        jobs.job_get(jobs.EXPIRE_PENDING).enqueue(_dedupe_key="callbacks-lost")
    except DatabaseError:
        return False
    with _refused_lock:
        if _refused_at == noted:
            _refused_at = None
    logger.warning("the database is back: findings whose callback may have been lost are verified again")
    return True


def callback_refusals_flush_on_connect(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: a process that refused a callback opens a new
    connection once the database is back (the broken one is discarded); that is when the
    refusal can be written. No query when nothing was refused."""
    if _refused_at is None or connection.alias != DEFAULT_DB_ALIAS:
        return
    try:
        callback_refusals_flush()
    except Exception:  # never break the connection of the request that opened it
        logger.exception("writing a refused callback failed; kept for the next connection")
