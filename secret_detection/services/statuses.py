"""Every change of a token status row (``FindingTokenStatus``), as named transitions.

This is the only module that writes the row. Each transition is one conditional UPDATE
whose WHERE clause is its guard: from the wrong state it changes nothing and says so
(``False``, or a count of 0), so concurrent workers, callbacks and sweeps cannot undo each
other's work. A single UPDATE is atomic on its own; the two that first pick rows with
``FOR UPDATE SKIP LOCKED`` hold the lock and the UPDATE in one transaction, and the
routing job holds the lock of ``status_lock_unrouted`` until it has marked them routed.

::

    status_create          new finding            → unknown, unrouted
    status_reset           any (value changed)    → unknown, unrouted, no verdict
    status_lock_unrouted   (no write) locks unrouted rows for the routing job's transaction
    status_routed          unrouted               → routed to its verifier
    status_checked_locally not pending            → active / inactive (our own token)
    status_back_off        not pending            → error code, due again later
    status_claim           not sending, and not awaiting an accepted callback (unless forced)
                                                  → pending, leased to this request
    status_accepted        pending, this request  → SDRS accepted it (awaits the callback)
    status_send_failed     pending, this request  → stays pending, error code (a retry follows)
    status_refresh_failed  pending, this request  → the verdict it had, error code, due later
    status_result          older result or none   → active / inactive / unknown (SDRS's verdict)
    status_failed          pending                → unknown (the verification job failed)
    status_expire          pending too long, not sending → unknown (callback_timeout)
    status_claim_due       due, not pending       → leased to a refresher tick
    status_make_due        not pending            → due now
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from project.models import Project
from secret_detection.models import Finding, FindingTokenStatus, TokenStatus, Verifier

MAX_CODE_LENGTH = 64


def _rows(**lookups: Any) -> QuerySet[FindingTokenStatus]:
    return FindingTokenStatus.objects.filter(**lookups)


def _update(rows: QuerySet[FindingTokenStatus], now: dt.datetime, **fields: Any) -> int:
    return rows.update(updated_at=now, **fields)


def _next_refresh(status: str, now: dt.datetime) -> dt.datetime | None:
    """When a verdict is checked again: an active token a day later, an unknown one after
    the retry delay, an inactive one never (a revoked token does not come back)."""
    if status == TokenStatus.ACTIVE:
        return now + timedelta(seconds=settings.TOKEN_REFRESH_ACTIVE_AFTER)
    if status == TokenStatus.UNKNOWN:
        return now + timedelta(seconds=settings.TOKEN_REFRESH_RETRY_AFTER)
    return None


def _back_to_unknown(*, code: str, now: dt.datetime) -> dict[str, Any]:
    """pending → unknown: no request in flight any more, tried again after the retry delay."""
    return {
        "status": TokenStatus.UNKNOWN,
        "pending_since": None,
        "accepted_at": None,
        "sending_until": None,
        "last_error_code": code[:MAX_CODE_LENGTH],
        "next_refresh_at": now + timedelta(seconds=settings.TOKEN_REFRESH_RETRY_AFTER),
    }


# --- creation and routing ------------------------------------------------------------


def status_create(*, project: Project, findings: Iterable[Finding]) -> int:
    """One unknown, unrouted status per new finding."""
    now = timezone.now()
    created = FindingTokenStatus.objects.bulk_create(
        [FindingTokenStatus(finding=finding, project=project, created_at=now, updated_at=now) for finding in findings],
        batch_size=500,
    )
    return len(created)


def status_reset(*, finding_ids: list[int]) -> int:
    """Any state → unknown and unrouted, with no verdict. Guard: none, on purpose: the
    finding's value changed, so whatever we knew was about another secret."""
    if not finding_ids:
        return 0
    return _update(
        _rows(pk__in=finding_ids),
        timezone.now(),
        status=TokenStatus.UNKNOWN,
        verifier="",
        routed_at=None,
        last_verified_at=None,
        attempts=0,
        last_error_code="",
        next_refresh_at=None,
        pending_since=None,
        accepted_at=None,
    )


def status_lock_unrouted(*, project_id: int, after: int, limit: int) -> list[FindingTokenStatus]:
    """Up to ``limit`` of the project's unrouted statuses after ``after`` (by finding id,
    their findings loaded), locked until the caller's transaction ends; rows another
    routing run holds are skipped. The caller marks them ``status_routed`` in the same
    transaction, so two runs never route a finding twice."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("status_lock_unrouted holds its locks for the caller's transaction: call it in one")
    return list(
        FindingTokenStatus.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("finding")
        .filter(project_id=project_id, routed_at__isnull=True, finding_id__gt=after)
        .order_by("finding_id")[:limit]
    )


def status_routed(*, finding_ids: list[int], verifier: str) -> int:
    """Unrouted → routed to ``verifier``. Guard: not routed yet."""
    if not finding_ids:
        return 0
    now = timezone.now()
    return _update(_rows(pk__in=finding_ids, routed_at__isnull=True), now, verifier=verifier, routed_at=now)


def status_checked_locally(*, finding_id: int, status: str) -> bool:
    """Our own token checked here: active or inactive. Guard: not pending (a partner
    request in flight owns the row)."""
    now = timezone.now()
    return bool(
        _update(
            _rows(pk=finding_id).exclude(status=TokenStatus.PENDING),
            now,
            status=status,
            verifier=Verifier.LOCAL,
            last_verified_at=now,
            attempts=1,
            last_error_code="",
            pending_since=None,
            accepted_at=None,
            next_refresh_at=_next_refresh(status, now),
        )
    )


def status_back_off(*, finding_ids: list[int], code: str, seconds: float) -> int:
    """Record why the status cannot be verified now and make it due again in ``seconds``,
    keeping its verdict. Guard: not pending."""
    if not finding_ids:
        return 0
    now = timezone.now()
    return _update(
        _rows(pk__in=finding_ids).exclude(status=TokenStatus.PENDING),
        now,
        last_error_code=code[:MAX_CODE_LENGTH],
        next_refresh_at=now + timedelta(seconds=seconds),
    )


# --- one verification request ----------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    outcome: str  # claimed, missing, already_accepted, in_flight
    wait_seconds: float = 0.0


def status_claim(*, finding_id: int, request_id: str, attempt: int, lease: float, force: bool = False) -> Claim:
    """→ pending, leased for ``lease`` seconds to the request ``request_id``.

    Guard: no other attempt is sending it right now (its lease has not run out), and,
    unless ``force``, SDRS has not accepted a request for it that still awaits its callback
    (then nothing is sent again)."""
    now = timezone.now()
    claimable = _rows(pk=finding_id).filter(Q(sending_until__isnull=True) | Q(sending_until__lte=now))
    if not force:
        recent = now - timedelta(seconds=settings.SDRS_PENDING_TIMEOUT)
        claimable = claimable.exclude(status=TokenStatus.PENDING, accepted_at__gt=recent)
    claimed = _update(
        claimable,
        now,
        status=TokenStatus.PENDING,
        verifier=Verifier.PARTNER,
        pending_since=now,
        sending_until=now + timedelta(seconds=lease),
        last_request_id=request_id,
        attempts=attempt,
        accepted_at=None,
    )
    if claimed:
        return Claim("claimed")
    # Say why: this is the rare path.
    row = _rows(pk=finding_id).values("sending_until").first()
    if row is None:
        return Claim("missing")
    if row["sending_until"] and row["sending_until"] > now:
        return Claim("in_flight", wait_seconds=(row["sending_until"] - now).total_seconds())
    return Claim("already_accepted")


def _ours(finding_id: int, request_id: str) -> QuerySet[FindingTokenStatus]:
    # A newer request (another attempt, "verify now") or a callback has taken over otherwise.
    return _rows(pk=finding_id, last_request_id=request_id, status=TokenStatus.PENDING)


def status_accepted(*, finding_id: int, request_id: str) -> bool:
    """SDRS accepted our request: pending until its callback. Guard: pending for this request."""
    now = timezone.now()
    return bool(_update(_ours(finding_id, request_id), now, sending_until=None, accepted_at=now, last_error_code=""))


def status_send_failed(*, finding_id: int, request_id: str, code: str) -> bool:
    """Our request failed and the job decides what follows (a retry, or its failure hook):
    the status stays pending, the lease is released. Guard: pending for this request."""
    return bool(
        _update(
            _ours(finding_id, request_id), timezone.now(), sending_until=None, last_error_code=code[:MAX_CODE_LENGTH]
        )
    )


def status_refresh_failed(*, finding_id: int, request_id: str, code: str, status: str, retry_in: float) -> bool:
    """A refresh could not be made: back to the verdict it had (``status``; an active token
    stays active), with the error code, due again in ``retry_in`` seconds. Guard: pending
    for this request."""
    now = timezone.now()
    return bool(
        _update(
            _ours(finding_id, request_id),
            now,
            status=status,
            sending_until=None,
            pending_since=None,
            last_error_code=code[:MAX_CODE_LENGTH],
            next_refresh_at=now + timedelta(seconds=retry_in),
        )
    )


def status_result(*, finding_id: int, status: str, verified_at: dt.datetime, request_id: str) -> str:
    """SDRS's verdict (active, inactive or unknown, verified at ``verified_at``).

    Guard: newer than the stored verdict (none stored, an older one, or the same time with
    another status), so concurrent and replayed deliveries cannot reorder. Returns
    ``applied``, ``duplicate`` (the stored verdict again), ``stale`` (older than the stored
    one) or ``missing`` (no such status)."""
    now = timezone.now()
    newer = (
        Q(last_verified_at__isnull=True)
        | Q(last_verified_at__lt=verified_at)
        | (Q(last_verified_at=verified_at) & ~Q(status=status))
    )
    applied = _update(
        _rows(pk=finding_id).filter(newer),
        now,
        status=status,
        last_verified_at=verified_at,
        last_request_id=request_id,
        last_error_code="",
        pending_since=None,
        accepted_at=None,
        result_received_at=now,
        next_refresh_at=_next_refresh(status, now),
    )
    if applied:
        return "applied"
    stored = _rows(pk=finding_id).values("last_verified_at").first()
    if stored is None:
        return "missing"
    return "duplicate" if stored["last_verified_at"] == verified_at else "stale"


def status_failed(*, finding_id: int, code: str) -> bool:
    """The verification job ended failed (retries spent or a permanent error): pending →
    unknown with the reason, due again after TOKEN_REFRESH_RETRY_AFTER. Guard: pending."""
    now = timezone.now()
    return bool(_update(_rows(pk=finding_id, status=TokenStatus.PENDING), now, **_back_to_unknown(code=code, now=now)))


def status_expire(*, limit: int) -> int:
    """Up to ``limit`` statuses pending for longer than SDRS_PENDING_TIMEOUT → unknown
    (``callback_timeout``), due again after TOKEN_REFRESH_RETRY_AFTER. Guard: pending since
    before the cutoff and no attempt sending it now; rows another sweep holds are skipped."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.SDRS_PENDING_TIMEOUT)
    expired = _rows(status=TokenStatus.PENDING, pending_since__lt=cutoff).exclude(sending_until__gt=now)
    with transaction.atomic():
        ids = list(expired.select_for_update(skip_locked=True).values_list("pk", flat=True)[:limit])
        if not ids:
            return 0
        return _update(expired.filter(pk__in=ids), now, **_back_to_unknown(code="callback_timeout", now=now))


# --- the refresher ----------------------------------------------------------------------


def status_claim_due(*, batch_size: int, lease: float) -> list[int]:
    """Up to ``batch_size`` due statuses (oldest due first) for one refresher tick: their
    next refresh moves ``lease`` seconds ahead, so a tick that dies only delays them.
    Guard: due and not pending; rows another tick holds are skipped."""
    now = timezone.now()
    due = _rows(next_refresh_at__lte=now).exclude(status=TokenStatus.PENDING)
    with transaction.atomic():
        ids = list(
            due.select_for_update(skip_locked=True)
            .order_by("next_refresh_at")
            .values_list("pk", flat=True)[:batch_size]
        )
        if ids:
            _update(due.filter(pk__in=ids), now, next_refresh_at=now + timedelta(seconds=lease))
    return ids


def status_make_due(*, finding_ids: list[int]) -> int:
    """Due now (the admin's "Refresh now"). Guard: not pending."""
    if not finding_ids:
        return 0
    now = timezone.now()
    return _update(_rows(pk__in=finding_ids).exclude(status=TokenStatus.PENDING), now, next_refresh_at=now)
