"""Direct partner verification: the job that asks a partner's own API about one finding's
token (``secret_detection.verify_direct_token``), and its failure hook.

The partner answers within the call, so the status goes pending → verdict in one run,
through the same ``statuses`` transitions as SDRS's callback (``status_claim`` then
``status_result``): nothing stays pending waiting for a callback.

* format mismatch: unknown (``format_mismatch``), no call;
* our per-project limit: the verifier reserved the run's slot and made it due then (a
  run started otherwise reserves one and is re-enqueued for it); where it sends, the run
  also takes a slot of the send limit, deferred until one is free, so runs that start late
  together never burst past the limit (pacing, not a failure: every token gets through
  at the partner's rate);
* the partner's 429 (AWS: 429/503) or its pause: re-enqueued after
  PARTNER_RATE_LIMIT_DELAY, at most PARTNER_RATE_LIMIT_MAX_RESCHEDULES times, then left
  with its previous verdict and ``rate_limited_gave_up`` (the refresher tries later);
* network errors, timeouts, 500/502/504: raised, so the toolkit retries per
  PARTNER_RETRY_DELAYS (4/16/64 s); when they are spent the hook makes it unknown;
* an answer we cannot read: unknown (``partner_response_invalid``) at once, not retried.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from project import crypto, db
from project.jobs import Defer, current_run
from secret_detection import partners
from secret_detection.models import Finding, FindingTokenStatus, TokenStatus, Verifier
from secret_detection.partners import PartnerNetworkError, PartnerRateLimited, PartnerResponseError
from secret_detection.services import jobs, pacing, statuses

logger = logging.getLogger(__name__)

# Below this, waiting for a reserved slot is not worth a round trip through the queue.
_PACE_TOLERANCE = 0.05
# A deferred run woken within this many seconds of its due time still holds its send slot.
_ON_TIME = 1.0


@dataclass(frozen=True)
class _Target:
    """What a direct verification reads of its finding and its status, in one statement:
    the ORM's query of both models was a fifth of the cluster's CPU in the benchmark."""

    pk: int
    project_id: int
    token_type: str
    raw_value: str = field(repr=False)  # never in a log line or a traceback's repr
    value_fingerprint: str = ""
    #: The status it had (None without a status row): kept if the partner limits us.
    previous: str | None = None


_FINDINGS, _STATUSES = Finding._meta, FindingTokenStatus._meta
_TARGET_SQL = (
    f"SELECT f.project_id, f.token_type, f.raw_value, f.value_fingerprint, s.status FROM {_FINDINGS.db_table} f"
    f" LEFT JOIN {_STATUSES.db_table} s ON s.{_STATUSES.pk.column} = f.{_FINDINGS.pk.column}"
    f" WHERE f.{_FINDINGS.pk.column} = %s"
)


def _target(finding_id: int) -> _Target | None:
    connection = transaction.get_connection()
    with db.prepared_cursor(connection) as cursor:
        cursor.execute(_TARGET_SQL, [finding_id])
        row = cursor.fetchone()
    if row is None:
        return None
    project_id, token_type, stored, fingerprint, previous = row
    raw_value = _FINDINGS.get_field("raw_value").from_db_value(stored, None, connection)  # decrypted
    return _Target(finding_id, project_id, token_type, raw_value or "", fingerprint, previous)


def _log(finding: _Target, partner: str, decision: str, **extra: Any) -> None:
    token = finding.value_fingerprint or (crypto.fingerprint(finding.raw_value) if finding.raw_value else "")
    level = logging.WARNING if decision.startswith(("failed", "retry", "unknown:", "gave up")) else logging.INFO
    logger.log(
        level,
        "direct verification: %s",
        decision,
        extra={
            "finding_id": finding.pk,
            "project_id": finding.project_id,
            "token": token,
            "token_type": finding.token_type,
            "partner": partner,
            "decision": decision,
            **extra,
        },
    )


def _reschedule(*, finding: _Target, delay: float, kwargs: dict[str, Any]) -> None:
    jobs.job_get(jobs.DIRECT_VERIFY).enqueue(_delay=delay, finding_id=finding.pk, **kwargs)


def token_direct_verify_run(
    *, finding_id: int, user_id: int | None = None, force: bool = False, reschedules: int = 0, paced: bool = False
) -> dict[str, Any]:
    """Verify one finding's token with the partner that issued it (see the module's doc).
    ``reschedules`` counts the partner's rate limits met so far; ``paced`` says this run
    already holds a slot of our own limit."""
    run = current_run()
    attempt = run.attempt if run else 1
    finding = _target(finding_id)
    if finding is None:
        logger.warning("direct verification skipped: the finding no longer exists", extra={"finding_id": finding_id})
        return {"skipped": "finding_missing"}
    entry = partners.entry_for(finding.token_type)
    if entry is None or not finding.raw_value:
        reason = "no_direct_client" if entry is None else "finding_without_token"
        statuses.status_back_off(
            finding_ids=[finding.pk], code=reason, seconds=settings.TOKEN_REFRESH_NO_VERIFIER_BACKOFF
        )
        _log(finding, entry.partner if entry else "", f"skipped: {reason}")
        return {"skipped": reason}
    partner = entry.partner
    state = pacing.partner_state(partner=partner)
    if not state.enabled:
        statuses.status_back_off(
            finding_ids=[finding.pk], code="partner_disabled", seconds=settings.TOKEN_REFRESH_NO_VERIFIER_BACKOFF
        )
        _log(finding, partner, "skipped: partner_disabled")
        return {"skipped": "partner_disabled"}
    client = partners.client_for(partner)
    base = {"user_id": user_id, "force": force}

    if client.matches(finding.raw_value):
        if state.paused_for > 0:
            return _rate_limited(finding, partner, state.paused_for, reschedules, base, code="partner_paused")
        if not paced:
            wait = pacing.rate_slot_reserve(
                key=f"{entry.rate_limit_key}:{finding.project_id}", per_second=entry.per_second
            )
            if wait > _PACE_TOLERANCE:
                pacing.partner_rate_limit_record(partner=partner, limit=entry.rate_limit_key)
                with transaction.atomic():
                    _reschedule(finding=finding, delay=wait, kwargs={**base, "reschedules": reschedules, "paced": True})
                return {"paced": round(wait, 3)}
        # A run deferred before woke up for the send slot it reserved then, unless it woke
        # later than the toolkit's delivery goal (1 s after its due time): others due around
        # then would send in the same moment. Stricter than that, ordinary delivery jitter
        # makes runs give up their slots and the rate falls short (measured: 1.2x the time).
        holds_slot = run is not None and run.deferrals > 0 and _late(run) <= _ON_TIME
        if not holds_slot:
            key = f"{entry.rate_limit_key}:{finding.project_id}"
            wait = pacing.rate_send_take(key=key, per_second=entry.per_second)
            if wait > 0:
                # Started late with others (a backlog drained at once): wait for the slot
                # reserved now rather than burst past the limit; a deferral spends no attempt.
                raise Defer(wait, f"{entry.rate_limit_key} limit")

    previous = finding.previous
    request_id = uuid.uuid4().hex
    claim = statuses.status_claim(
        finding_id=finding.pk,
        request_id=request_id,
        attempt=attempt,
        lease=client.timeout + 5,
        since=run.created_at if run else None,
        verifier=Verifier.DIRECT,
    )
    if claim.outcome == "in_flight":
        raise Defer(max(claim.wait_seconds, 1.0), "another attempt is verifying this finding")
    if claim.outcome != "claimed":
        _log(finding, partner, f"skipped: {claim.outcome}")
        return {"skipped": claim.outcome}

    started = time.perf_counter()
    try:
        verdict = client.verify(finding.raw_value)
    except PartnerRateLimited as exc:
        delay = max(float(settings.PARTNER_RATE_LIMIT_DELAY), exc.retry_after or 0.0)
        statuses.status_refresh_failed(
            finding_id=finding.pk,
            request_id=request_id,
            code=exc.code,
            status=_settled(previous),
            retry_in=settings.TOKEN_REFRESH_RETRY_AFTER,
        )
        pacing.partner_rate_limit_record(partner=partner, limit=f"{partner}_429", pause=delay)
        return _rate_limited(finding, partner, delay, reschedules, base, code=exc.code, http_status=exc.upstream_status)
    except PartnerNetworkError as exc:
        statuses.status_send_failed(finding_id=finding.pk, request_id=request_id, code=exc.code)
        next_delay = jobs.job_get(jobs.DIRECT_VERIFY).retry.delay_after(attempt)
        decision = f"retry in {next_delay:g} s" if next_delay is not None else f"failed: {exc.code}"
        _log(finding, partner, decision, attempt=attempt, error_code=exc.code, http_status=exc.upstream_status)
        raise
    except PartnerResponseError as exc:
        verdict = partners.Verdict(TokenStatus.UNKNOWN, code=exc.code, http_status=exc.upstream_status)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    applied = statuses.status_result(
        finding_id=finding.pk,
        status=verdict.status,
        verified_at=timezone.now(),
        request_id=request_id,
        code=verdict.code,
        partner=partner,
    )
    decision = verdict.status if not verdict.code else f"{verdict.status}: {verdict.code}"
    _log(finding, partner, decision, attempt=attempt, http_status=verdict.http_status, duration_ms=elapsed_ms)
    return {"status": verdict.status, "code": verdict.code, "applied": applied}


def _late(run: Any) -> float:
    return (timezone.now() - run.due_at).total_seconds() if run.due_at else 0.0


def _settled(previous: str | None) -> str:
    # A row claimed by this run was not pending before (the claim's guard).
    return previous if previous and previous != TokenStatus.PENDING else TokenStatus.UNKNOWN


def _rate_limited(
    finding: _Target,
    partner: str,
    delay: float,
    reschedules: int,
    base: dict[str, Any],
    *,
    code: str,
    http_status: int | None = None,
) -> dict[str, Any]:
    if reschedules >= settings.PARTNER_RATE_LIMIT_MAX_RESCHEDULES:
        # Left as it was, with a reason; the refresher tries again after its back-off.
        statuses.status_back_off(
            finding_ids=[finding.pk], code="rate_limited_gave_up", seconds=settings.TOKEN_REFRESH_RETRY_AFTER
        )
        _log(finding, partner, f"gave up: rate limited {reschedules + 1} times", http_status=http_status)
        return {"gave_up": "rate_limited", "reschedules": reschedules}
    with transaction.atomic():
        _reschedule(finding=finding, delay=delay, kwargs={**base, "reschedules": reschedules + 1})
    _log(finding, partner, f"rate limited ({code}): again in {delay:g} s", http_status=http_status)
    return {"rescheduled": reschedules + 1, "delay": delay}


def token_direct_verification_failed(*, finding_id: int, code: str) -> None:
    """The job ended failed (network errors past the retries, or an unexpected error):
    pending → unknown with the reason, due again after TOKEN_REFRESH_RETRY_AFTER."""
    with transaction.atomic():
        if not statuses.status_failed(finding_id=finding_id, code=code):
            statuses.status_back_off(finding_ids=[finding_id], code=code, seconds=settings.TOKEN_REFRESH_RETRY_AFTER)
    logger.warning("direct verification failed", extra={"finding_id": finding_id, "error_code": code})
