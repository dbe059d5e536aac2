"""Partner token verification through SDRS: one request per finding, its attempt log line,
and the states a status moves through (GitLab's TokenVerificationRequestService)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from project import crypto
from project.errors import AppError, PermanentError
from project.jobs import Defer, RetryPolicy, current_run
from project.models import ApplicationSetting
from secret_detection import metrics
from secret_detection.clients import SdrsClient, SdrsConfig, SdrsError, SdrsMisconfigured, VerifyRequest
from secret_detection.models import Finding, FindingTokenStatus, TokenStatus, Verifier
from secret_detection.services.routing import partner_types_enabled

logger = logging.getLogger(__name__)

VERIFY_RETRY = RetryPolicy(setting="SDRS_RETRY_DELAYS")
CALLBACK_PATH = "/api/v4/internal/token_status/callback"


def callback_url() -> str:
    return f"{settings.EXTERNAL_URL}{CALLBACK_PATH}"


def _system_user_id(finding: Finding) -> int:
    # The JWT's subject: who asked (the importer, or the admin behind "verify now").
    # 0 stands for the instance itself when that user is gone.
    return finding.imported_by_id or finding.project.creator_id or 0


@dataclass(frozen=True)
class Claim:
    outcome: str  # claimed, missing, already_accepted, in_flight
    wait_seconds: float = 0.0


def _claim(*, finding_id: int, request_id: str, attempt: int, lease: float, force: bool) -> Claim:
    """Mark the status pending for this request, in one conditional UPDATE, unless a
    request for it is being sent right now or SDRS already accepted one that still awaits
    its callback (then nothing is sent)."""
    now = timezone.now()
    claimable = FindingTokenStatus.objects.filter(pk=finding_id).filter(
        Q(sending_until__isnull=True) | Q(sending_until__lte=now)
    )
    if not force:
        recent = now - timedelta(seconds=settings.SDRS_PENDING_TIMEOUT)
        claimable = claimable.exclude(status=TokenStatus.PENDING, accepted_at__gt=recent)
    claimed = claimable.update(
        status=TokenStatus.PENDING,
        verifier=Verifier.PARTNER,
        pending_since=now,
        sending_until=now + timedelta(seconds=lease),
        last_request_id=request_id,
        attempts=attempt,
        accepted_at=None,
        updated_at=now,
    )
    if claimed:
        return Claim("claimed")
    # Say why: this is the rare path.
    row = FindingTokenStatus.objects.filter(pk=finding_id).values("sending_until").first()
    if row is None:
        return Claim("missing")
    if row["sending_until"] and row["sending_until"] > now:
        return Claim("in_flight", wait_seconds=(row["sending_until"] - now).total_seconds())
    return Claim("already_accepted")


def _record(*, finding_id: int, request_id: str, **fields) -> bool:
    """Record the outcome of our request, unless a newer request or a callback took over."""
    return bool(
        FindingTokenStatus.objects.filter(pk=finding_id, last_request_id=request_id, status=TokenStatus.PENDING).update(
            sending_until=None, updated_at=timezone.now(), **fields
        )
    )


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
    """The one log line of a verification attempt. The token appears only as a fingerprint."""
    extra = {
        "finding_id": finding.pk,
        "project_id": finding.project_id,
        "token": crypto.fingerprint(finding.raw_value) if finding.raw_value else "",
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


def _decision_after(error: AppError, attempt: int) -> str:
    if error.retryable:
        delay = VERIFY_RETRY.delay_after(attempt)
        if delay is not None:
            if error.retry_after is not None:
                delay = max(delay, float(error.retry_after))
            return f"retry in {delay:g} s"
    return f"failed: {error.code}"


def _note(*, finding_id: int, code: str, backoff: float) -> None:
    now = timezone.now()
    FindingTokenStatus.objects.filter(pk=finding_id).exclude(status=TokenStatus.PENDING).update(
        last_error_code=code, next_refresh_at=now + timedelta(seconds=backoff), updated_at=now
    )


def token_verification_run(*, finding_id: int, user_id: int | None = None, force: bool = False) -> dict:
    """The PartnerTokenVerification job: send one finding's token to SDRS.

    Guards, in order: a missing finding is skipped; disabled verification is skipped;
    missing configuration or a finding without token is a permanent failure. Then the
    status goes pending and the request is sent. A 202 leaves it pending until the
    callback; transport errors, timeouts, 429 and 5xx raise retryable errors (the toolkit
    retries per SDRS_RETRY_DELAYS); 400/401/403/422 raise permanent ones. A re-run after
    SDRS accepted the request does not send the token again (unless ``force``).
    """
    run = current_run()
    attempt = run.attempt if run else 1
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
        _note(finding_id=finding.pk, code=reason, backoff=settings.TOKEN_REFRESH_NO_VERIFIER_BACKOFF)
        log_attempt(finding=finding, attempt=attempt, request_id=request_id, decision=f"skipped: {reason}")
        return {"skipped": reason}
    try:
        if not row.sdrs_url:
            raise SdrsMisconfigured("no SDRS URL is configured", code="sdrs_not_configured")
        if not row.sdrs_jwt_signing_key:
            raise SdrsMisconfigured("no SDRS JWT signing key is configured", code="signing_key_missing")
        if not finding.raw_value or not finding.token_type:
            raise PermanentError("the finding has no token value or no token type", code="finding_without_token")
        client = SdrsClient(SdrsConfig.from_settings(row))
    except AppError as exc:
        log_attempt(finding=finding, attempt=attempt, request_id=request_id, decision=f"failed: {exc.code}", error=exc)
        metrics.VERIFICATION_REQUESTS.labels(partner=partner or "none", outcome="permanent").inc()
        raise
    claim = _claim(finding_id=finding.pk, request_id=request_id, attempt=attempt, lease=_lease(client), force=force)
    if claim.outcome == "in_flight":
        raise Defer(max(claim.wait_seconds, 1.0), "another attempt is sending this finding")
    if claim.outcome != "claimed":
        log_attempt(finding=finding, attempt=attempt, request_id=request_id, decision=f"skipped: {claim.outcome}")
        return {"skipped": claim.outcome}
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
        _record(finding_id=finding.pk, request_id=request_id, last_error_code=outcome.code)
        raise outcome
    return {"accepted": True, "sdrs_request_id": request_id}


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
    """Send a claimed finding's token. On 202 the status records the acceptance; on
    failure the error is returned (not raised) for the caller to act on. Logs the attempt."""
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
        metrics.VERIFICATION_REQUESTS.labels(
            partner=partner, outcome="retryable" if exc.retryable else "permanent"
        ).inc()
        log_attempt(
            finding=finding,
            attempt=attempt,
            request_id=request_id,
            decision=decide(exc, attempt),
            http_status=exc.upstream_status if isinstance(exc, SdrsError) else None,
            error=exc,
            elapsed=elapsed,
        )
        return exc
    elapsed = time.perf_counter() - started
    metrics.SDRS_REQUEST_SECONDS.observe(elapsed)
    metrics.VERIFICATION_REQUESTS.labels(partner=partner, outcome="accepted").inc()
    _record(finding_id=finding.pk, request_id=request_id, accepted_at=timezone.now(), last_error_code="")
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
    back to unknown with the reason, and the refresher tries again later."""
    now = timezone.now()
    retry_at = now + timedelta(seconds=settings.TOKEN_REFRESH_RETRY_AFTER)
    FindingTokenStatus.objects.filter(pk=finding_id, status=TokenStatus.PENDING).update(
        status=TokenStatus.UNKNOWN,
        pending_since=None,
        accepted_at=None,
        sending_until=None,
        last_error_code=code[:64],
        next_refresh_at=retry_at,
        updated_at=now,
    )
    FindingTokenStatus.objects.filter(pk=finding_id).exclude(status=TokenStatus.PENDING).update(
        last_error_code=code[:64], next_refresh_at=retry_at, updated_at=now
    )
    logger.warning("partner verification failed", extra={"finding_id": finding_id, "error_code": code})


def pending_expire(*, limit: int = 1000) -> int:
    """Pending statuses whose callback never came within SDRS_PENDING_TIMEOUT go back to
    unknown (``callback_timeout``), so nothing stays pending for ever."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.SDRS_PENDING_TIMEOUT)
    expired = 0
    while True:
        with transaction.atomic():
            ids = list(
                FindingTokenStatus.objects.select_for_update(skip_locked=True)
                .filter(status=TokenStatus.PENDING, pending_since__lt=cutoff)
                .exclude(sending_until__gt=now)
                .values_list("pk", flat=True)[:limit]
            )
            if not ids:
                break
            expired += FindingTokenStatus.objects.filter(pk__in=ids).update(
                status=TokenStatus.UNKNOWN,
                pending_since=None,
                accepted_at=None,
                sending_until=None,
                last_error_code="callback_timeout",
                next_refresh_at=now + timedelta(seconds=settings.TOKEN_REFRESH_RETRY_AFTER),
                updated_at=now,
            )
    if expired:
        logger.warning("pending token statuses expired without a callback", extra={"expired": expired})
    return expired
