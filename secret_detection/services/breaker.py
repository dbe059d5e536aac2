"""A circuit breaker in front of SDRS, and the state of the one ``SdrsHealth`` row.

Closed (the normal state), every verification is sent. Each attempt that finds SDRS
unavailable (connection refused or reset, connect timeout, 5xx: ``UNAVAILABLE_CODES``)
counts one failure; any answer from SDRS resets the count. At SDRS_BREAKER_THRESHOLD
consecutive failures, or as soon as a verification ends failed as unavailable (its
retries spent), the circuit **opens**: verification jobs and the refresher send nothing
and park their findings (``sdrs_down``), instead of spending 84 s of retries per finding
against a service that is down.

While open, the probe job (``secret_detection.probe_sdrs``) sends **one** request every
SDRS_PROBE_INTERVAL seconds (the half-open state): a verify request that carries no token
(``connection.sdrs_probe``). The first answer closes the circuit and makes every status
that failed as unavailable or was parked due at once, and starts a refresher tick: the
findings are verified within seconds of SDRS answering again, not after the refresher's
TOKEN_REFRESH_RETRY_AFTER (600 s). A request already in flight that gets an answer closes
it too. The per-minute schedule of the probe job is the safety net of that chain.

Each change is one conditional UPDATE of the row (missing row: closed, no failures; the
row is created by the migration and again on first failure).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.utils import timezone

from secret_detection import metrics
from secret_detection.models import SdrsHealth
from secret_detection.services import jobs, statuses

logger = logging.getLogger(__name__)

#: What an attempt that found SDRS unavailable records (the client's error codes).
UNAVAILABLE_CODES = frozenset({"sdrs_unavailable", "sdrs_timeout", "sdrs_server_error"})
#: A finding not sent because the circuit was open.
DOWN_CODE = "sdrs_down"
#: The statuses made due at once when the circuit closes.
REQUEUED_CODES = UNAVAILABLE_CODES | {DOWN_CODE}

_TABLE = SdrsHealth._meta.db_table
OPEN = SdrsHealth.Circuit.OPEN
CLOSED = SdrsHealth.Circuit.CLOSED


_ENSURE_ROW = f"""
    INSERT INTO {_TABLE} (id, circuit, failures, last_failure_code, probe_result, updated_at)
    VALUES (1, 'closed', 0, '', '', %s) ON CONFLICT (id) DO NOTHING
"""


def ensure_row() -> None:
    """Create the row if a flush of the tables removed it (the migration creates it)."""
    with connection.cursor() as cursor:
        cursor.execute(_ENSURE_ROW, [timezone.now()])


def breaker_is_open() -> bool:
    """Whether verifications must not be sent now."""
    return SdrsHealth.objects.filter(pk=1, circuit=OPEN).exists()


def breaker_record_failure(*, code: str) -> bool:
    """An attempt found SDRS unavailable (other codes are ignored: SDRS answered). Opens
    the circuit at the threshold; True when this failure opened it."""
    if code not in UNAVAILABLE_CODES:
        return False
    ensure_row()
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {_TABLE} SET failures = failures + 1, last_failure_code = %s, updated_at = %s,
                    opened_at = CASE WHEN circuit = 'closed' AND failures + 1 >= %s THEN %s ELSE opened_at END,
                    circuit = CASE WHEN circuit = 'closed' AND failures + 1 >= %s THEN 'open' ELSE circuit END
                WHERE id = 1 RETURNING circuit = 'open' AND opened_at = %s""",
            [code, now, settings.SDRS_BREAKER_THRESHOLD, now, settings.SDRS_BREAKER_THRESHOLD, now],
        )
        row = cursor.fetchone()
    opened = bool(row and row[0])
    if opened:
        _opened(code, reason=f"{settings.SDRS_BREAKER_THRESHOLD} attempts in a row found SDRS unavailable")
    return opened


def breaker_open(*, code: str) -> bool:
    """A verification ended failed as unavailable: open the circuit now, whatever the count,
    so that the probe brings the finding back as soon as SDRS answers. True when it opened."""
    if code not in UNAVAILABLE_CODES:
        return False
    ensure_row()
    now = timezone.now()
    opened = SdrsHealth.objects.filter(pk=1, circuit=CLOSED).update(
        circuit=OPEN, opened_at=now, last_failure_code=code, updated_at=now
    )
    if opened:
        _opened(code, reason="a verification ended failed as unavailable")
    return bool(opened)


def breaker_record_success() -> bool:
    """SDRS answered (any HTTP answer but a 5xx): no failures, circuit closed. On the
    closing, the parked findings are made due and a refresher tick starts. True when this
    answer closed it. Costs one UPDATE that matches nothing while all is well."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {_TABLE} SET failures = 0, updated_at = %s,
                    closed_at = CASE WHEN circuit = 'open' THEN %s ELSE closed_at END, circuit = 'closed'
                WHERE id = 1 AND (failures > 0 OR circuit = 'open') RETURNING closed_at = %s""",
            [now, now, now],
        )
        row = cursor.fetchone()
    closed = bool(row and row[0])
    if closed:
        requeued = statuses.status_requeue_unavailable(codes=REQUEUED_CODES)
        metrics.CIRCUIT_CHANGES.labels(to="closed").inc()
        logger.warning("SDRS answers again: circuit closed", extra={"requeued": requeued})
        if requeued:
            jobs.job_get(jobs.REFRESH).enqueue(_dedupe_key="refresh-now")
    return closed


def breaker_probe_recorded(*, result: str) -> None:
    """Note the half-open probe's outcome on the row (shown in the admin and the logs)."""
    now = timezone.now()
    SdrsHealth.objects.filter(pk=1).update(probed_at=now, probe_result=result[:64], updated_at=now)


def breaker_probe_later() -> None:
    """The next half-open probe, SDRS_PROBE_INTERVAL seconds from now (one queued at a time)."""
    jobs.job_get(jobs.PROBE).enqueue(_delay=settings.SDRS_PROBE_INTERVAL, _dedupe_key="sdrs-probe")


def _opened(code: str, *, reason: str) -> None:
    metrics.CIRCUIT_CHANGES.labels(to="open").inc()
    logger.warning("SDRS unavailable: circuit open (%s)", reason, extra={"error_code": code})
    breaker_probe_later()
