"""Partner token verification through SDRS: one request per finding and its attempt log
line (GitLab's TokenVerificationRequestService). The status moves through the transitions
of ``statuses``; the retry policy is the one declared on the job (``tasks``)."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from project import crypto
from project.errors import AppError, PermanentError
from project.jobs import Defer, current_run
from project.models import ApplicationSetting
from secret_detection import metrics
from secret_detection.clients import SdrsClient, SdrsConfig, SdrsError, VerifyRequest
from secret_detection.models import Finding, SdrsHealth
from secret_detection.services import breaker, jobs, statuses
from secret_detection.services.routing import partner_types_enabled

logger = logging.getLogger(__name__)

CALLBACK_PATH = "/api/v4/internal/token_status/callback"


def callback_url() -> str:
    return f"{settings.EXTERNAL_URL}{CALLBACK_PATH}"


def _system_user_id(finding: Finding) -> int:
    # The JWT's subject: who asked (the importer, or the admin behind "verify now").
    # 0 stands for the instance itself when that user is gone.
    return finding.imported_by_id or finding.project.creator_id or 0


def log_attempt(
    *,
    finding: Finding,
    attempt: int,
    request_id: str,
    decision: str,
    http_status: int | None = None,
    error: BaseException | None = None,
    elapsed: float | None = None,
) -> None:
    """The one log line of a verification attempt. The token appears only as its stored
    fingerprint (the masked prefix and a keyed digest, see ``crypto.fingerprint``)."""
    token = finding.value_fingerprint or (crypto.fingerprint(finding.raw_value) if finding.raw_value else "")
    extra = {
        "finding_id": finding.pk,
        "project_id": finding.project_id,
        "token": token,
        "token_type": finding.token_type,
        "attempt": attempt,
        "sdrs_request_id": request_id,
        "http_status": http_status,
        "error_class": error.__class__.__name__ if error else None,
        "error_code": getattr(error, "code", None) if error else None,
        "decision": decision,
    }
    if elapsed is not None:
        extra["duration_ms"] = round(elapsed * 1000, 1)
    level = logging.INFO if decision == "accepted" or decision.startswith("skipped") else logging.WARNING
    logger.log(level, "SDRS verification attempt: %s", decision, extra=extra)


def _unconfirmed_decision() -> str:
    return f"unconfirmed: no answer, SDRS may hold the request; no resend before {settings.SDRS_PENDING_TIMEOUT} s"


def _decision_after(error: AppError, attempt: int) -> str:
    if error.retryable:
        # The policy declared on the job (secret_detection.tasks), read from its registry.
        delay = jobs.verify_retry().delay_after(attempt)
        if delay is not None:
            if error.retry_after is not None:
                delay = max(delay, float(error.retry_after))
            return f"retry in {delay:g} s"
    return f"failed: {error.code}"


def token_verification_run(
    *, finding_id: int, user_id: int | None = None, force: bool = False, attempts_before: int = 0
) -> dict[str, Any]:
    """The PartnerTokenVerification job: send one finding's token to SDRS.

    Guards, in order: a missing finding is skipped; disabled verification is skipped;
    missing configuration or a finding without token is a permanent failure. Then the
    status goes pending and the request is sent. A 202 leaves it pending until the
    callback; transport errors, connect timeouts, 429 and 5xx raise retryable errors (the
    toolkit retries per SDRS_RETRY_DELAYS); 400/401/403/422 raise permanent ones. A read
    timeout (the request was written: SDRS may hold it) is *unconfirmed*: the status stays
    pending for that request and the job ends without a retry, so the token is not sent
    again while its callback can still come (the pending sweep ends the wait). A re-run
    after SDRS accepted, may have accepted, or answered the run's request sends nothing
    (``force`` overrides only requests made before the run was asked for).
    ``attempts_before``: attempts made before this job's first (the refresher pool's).
    """
    run = current_run()
    attempt = (run.attempt if run else 1) + attempts_before
    # When this verification was asked for: a result received since then answers it.
    since = run.created_at if run else None
    request_id = uuid.uuid4().hex
    finding = Finding.objects.select_related("project").filter(pk=finding_id).first()
    if finding is None or finding.project is None:
        logger.warning("verification skipped: the finding no longer exists", extra={"finding_id": finding_id})
        return {"skipped": "finding_missing"}
    row = ApplicationSetting.current()
    partner = partner_types_enabled().get(finding.token_type.lower())
    if not row.sdrs_enabled or (finding.token_type and partner is None):
        # The type's switch may have been turned off since the finding was routed.
        reason = "verification_disabled" if not row.sdrs_enabled else "partner_type_disabled"
        statuses.status_back_off(
            finding_ids=[finding.pk], code=reason, seconds=settings.TOKEN_REFRESH_NO_VERIFIER_BACKOFF
        )
        log_attempt(finding=finding, attempt=attempt, request_id=request_id, decision=f"skipped: {reason}")
        return {"skipped": reason}
    try:
        client = SdrsClient(SdrsConfig.from_settings(row))  # checks the URL and the key
        if not finding.raw_value or not finding.token_type:
            raise PermanentError("the finding has no token value or no token type", code="finding_without_token")
    except AppError as exc:
        log_attempt(finding=finding, attempt=attempt, request_id=request_id, decision=f"failed: {exc.code}", error=exc)
        metrics.VERIFICATION_REQUESTS.labels(partner=partner or "none", outcome="permanent").inc()
        raise
    if breaker.breaker_is_open():
        # SDRS is down: park the finding instead of spending retries on it; the probe
        # makes it due, for the refresher, as soon as SDRS answers again.
        _park(finding.pk)
        log_attempt(finding=finding, attempt=attempt, request_id=request_id, decision=f"skipped: {breaker.DOWN_CODE}")
        return {"skipped": breaker.DOWN_CODE}
    claim = statuses.status_claim(
        finding_id=finding.pk, request_id=request_id, attempt=attempt, lease=_lease(client), force=force, since=since
    )
    if claim.outcome == "in_flight":
        raise Defer(max(claim.wait_seconds, 1.0), "another attempt is sending this finding")
    if claim.outcome != "claimed":
        log_attempt(finding=finding, attempt=attempt, request_id=request_id, decision=f"skipped: {claim.outcome}")
        return {"skipped": claim.outcome}
    assert partner is not None  # a finding with a token type and no enabled partner returned above
    outcome = verification_send(
        finding=finding,
        client=client,
        request_id=request_id,
        attempt=attempt,
        user_id=user_id,
        partner=partner,
        decide=_decision_after,
    )
    if isinstance(outcome, AppError):
        if _may_be_accepted(outcome):
            # Recorded by verification_send; a retry would send the token a second time.
            return {"unconfirmed": True, "sdrs_request_id": request_id}
        statuses.status_send_failed(finding_id=finding.pk, request_id=request_id, code=outcome.code)
        raise outcome
    return {"accepted": True, "sdrs_request_id": request_id}


def _may_be_accepted(error: AppError) -> bool:
    return isinstance(error, SdrsError) and error.may_be_accepted


def _park(finding_id: int) -> None:
    # A pending row of this run's earlier attempt (nothing written) goes back to unknown;
    # one SDRS may hold keeps awaiting its callback; any other keeps its verdict.
    with transaction.atomic():
        if not statuses.status_failed(finding_id=finding_id, code=breaker.DOWN_CODE):
            statuses.status_back_off(
                finding_ids=[finding_id], code=breaker.DOWN_CODE, seconds=settings.TOKEN_REFRESH_RETRY_AFTER
            )


def _lease(client: SdrsClient) -> float:
    connect, read = client.timeout
    return connect + read + 5


def verification_send(
    *,
    finding: Finding,
    client: SdrsClient,
    request_id: str,
    attempt: int,
    user_id: int | None,
    partner: str,
    decide: Callable[[AppError, int], str],
) -> AppError | None:
    """Send a claimed finding's token. On 202 the status records the acceptance. When the
    request was written but no answer came, the status records it as unconfirmed (SDRS
    may hold it; nothing resends it before the callback or SDRS_PENDING_TIMEOUT) and the
    error is returned; on other failures the error is returned (not raised) for the caller
    to act on. Logs the attempt."""
    started = time.perf_counter()
    try:
        http_status = client.verify(
            VerifyRequest(
                token_type=finding.token_type,
                token_value=finding.raw_value,
                finding_id=finding.pk,
                project_id=finding.project_id,
                user_id=user_id if user_id is not None else _system_user_id(finding),
                callback_url=callback_url(),
                request_id=request_id,
            )
        )
    except AppError as exc:
        elapsed = time.perf_counter() - started
        metrics.SDRS_REQUEST_SECONDS.observe(elapsed)
        if _may_be_accepted(exc):
            statuses.status_unconfirmed(finding_id=finding.pk, request_id=request_id, code=exc.code)
            outcome, decision = "unconfirmed", _unconfirmed_decision()
        else:
            outcome, decision = ("retryable" if exc.retryable else "permanent"), decide(exc, attempt)
            if exc.code in breaker.UNAVAILABLE_CODES:
                breaker.breaker_record_failure(code=exc.code)
            elif isinstance(exc, SdrsError):
                breaker.breaker_record_success()  # it answered (4xx, 429)
        metrics.VERIFICATION_REQUESTS.labels(partner=partner, outcome=outcome).inc()
        log_attempt(
            finding=finding,
            attempt=attempt,
            request_id=request_id,
            decision=decision,
            http_status=exc.upstream_status if isinstance(exc, SdrsError) else None,
            error=exc,
            elapsed=elapsed,
        )
        return exc
    elapsed = time.perf_counter() - started
    metrics.SDRS_REQUEST_SECONDS.observe(elapsed)
    metrics.VERIFICATION_REQUESTS.labels(partner=partner, outcome="accepted").inc()
    statuses.status_accepted(finding_id=finding.pk, request_id=request_id)
    breaker.breaker_record_success()
    log_attempt(
        finding=finding,
        attempt=attempt,
        request_id=request_id,
        decision="accepted",
        http_status=http_status,
        elapsed=elapsed,
    )
    return None


def token_verification_failed(*, finding_id: int, code: str) -> None:
    """The job ended failed (retries spent or a permanent error): a pending status goes
    back to unknown with the reason, and the refresher tries again later. A status no
    longer pending keeps its verdict but records the reason and the retry time too."""
    with transaction.atomic():
        if not statuses.status_failed(finding_id=finding_id, code=code):
            statuses.status_back_off(finding_ids=[finding_id], code=code, seconds=settings.TOKEN_REFRESH_RETRY_AFTER)
    logger.warning("partner verification failed", extra={"finding_id": finding_id, "error_code": code})
    # Failed as unavailable: the circuit opens, so the probe brings the finding back as
    # soon as SDRS answers rather than after TOKEN_REFRESH_RETRY_AFTER.
    breaker.breaker_open(code=code)


def pending_expire(*, limit: int = 1000) -> int:
    """Pending statuses whose callback never came within SDRS_PENDING_TIMEOUT go back to
    unknown (``callback_timeout``), so nothing stays pending for ever."""
    expired = 0
    while True:
        batch = statuses.status_expire(limit=limit)
        if not batch:
            break
        expired += batch
    if expired:
        logger.warning("pending token statuses expired without a callback", extra={"expired": expired})
    return expired


def _callback_outage_point() -> dt.datetime | None:
    """The latest moment a callback may have been lost because we could not take it: the
    latest callback refused while the database was unavailable (written once it was back,
    ``callbacks.callback_refusals_flush``), or the database server's start, when it
    restarted within SDRS_PENDING_TIMEOUT (a refusal answered before our code ran leaves
    no note). The start is read as an age on the database's clock, so clock skew between
    the hosts does not move it."""
    points = [
        refused
        for refused in SdrsHealth.objects.filter(pk=1).values_list("callbacks_refused_at", flat=True)
        if refused is not None
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXTRACT(EPOCH FROM (now() - pg_postmaster_start_time()))")
        row = cursor.fetchone()
    age = float(row[0]) if row and row[0] is not None else None
    if age is not None and age < settings.SDRS_PENDING_TIMEOUT:
        points.append(timezone.now() - timedelta(seconds=age))
    return max(points) if points else None


def callbacks_lost_reverify(*, limit: int = 1000) -> int:
    """After an outage of our callback endpoint, verify again the findings whose callback
    it may have lost: pending for a request SDRS accepted (or may have) before the outage,
    and not sending now. They go back to unknown (``callback_lost``, the request id kept so
    that a late callback still applies) and are due at once; a refresher tick starts. This
    sends such a token a second time, by design: SDRS offers no status query, and without a
    callback the status would wait for SDRS_PENDING_TIMEOUT (15 min)."""
    before = _callback_outage_point()
    if before is None:
        return 0
    lost = 0
    while True:
        batch = statuses.status_callbacks_lost(before=before, limit=limit)
        if not batch:
            break
        lost += len(batch)
    if lost:
        metrics.LOST_CALLBACKS.inc(lost)
        logger.warning("callbacks may have been lost during an outage: verifying again", extra={"findings": lost})
        jobs.job_get(jobs.REFRESH).enqueue(_dedupe_key="refresh-now")
    return lost
