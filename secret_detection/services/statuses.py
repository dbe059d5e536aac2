"""Every change of a token status row (``FindingTokenStatus``), as named transitions.

This is the only module that writes the row. Each transition is one conditional UPDATE
whose WHERE clause is its guard: from the wrong state it changes nothing and says so
(``False``, or a count of 0), so concurrent workers, callbacks and sweeps cannot undo each
other's work. A single UPDATE is atomic on its own; the two that first pick rows with
``FOR UPDATE SKIP LOCKED`` hold the lock and the UPDATE in one transaction, and the
routing job holds the lock of ``status_lock_unrouted`` until it has marked them routed.

::

    status_create          new finding            → unknown, unrouted
    status_reset           any (value changed)    → unknown, unrouted, no verdict, no request
    status_lock_unrouted   (no write) locks unrouted rows for the routing job's transaction
    status_routed          unrouted               → routed to its verifier
    status_checked_locally not pending            → active / inactive (our own token)
    status_back_off        not pending            → error code, due again later
    status_claim           not sending; not held by SDRS (unless forced); no result since
                           the caller's request   → pending, leased to this request
    status_accepted        pending, this request  → SDRS accepted it (awaits the callback)
    status_unconfirmed     pending, this request  → written, no answer: SDRS may hold it (awaits
                                                    the callback like an accepted one)
    status_send_failed     pending, this request  → stays pending, error code (a retry follows)
    status_refresh_failed  pending, this request  → the verdict it had, error code, due later
    status_result          awaiting this request  → active / inactive / unknown (SDRS's callback
                                                    or a partner's direct answer)
    status_failed          pending, not held by SDRS → unknown (the verification job failed)
    status_expire          pending too long, not sending → unknown (callback_timeout)
    status_callbacks_lost  held by SDRS, asked before a callback outage, not sending
                                                  → unknown (callback_lost), due now
    status_claim_due       due, not pending       → leased to a refresher tick, naming its run
    status_release_claims  claimed by a dead tick's run → due now (in flight: stays pending)
    status_handed_over     claimed by a tick          → a job of its own holds it (direct partners)
    status_make_due        not pending            → due now
    status_requeue_unavailable  not pending, failed as unavailable → due now (SDRS is back)

"Held by SDRS" is the one fact that stops a resend: the row is pending for a request that
was written, or may have been (``accepted_at``, or a lease recorded and not released by a
"not written" outcome). Every transition that could let the token be sent again checks it;
only ``status_expire`` (SDRS_PENDING_TIMEOUT), ``status_callbacks_lost`` (our callback
endpoint was down after SDRS accepted) and a forced "Verify now" end it.
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

from project import db
from project.models import Project
from secret_detection.models import Finding, FindingTokenStatus, TokenStatus, Verifier

MAX_CODE_LENGTH = 64


def _rows(**lookups: Any) -> QuerySet[FindingTokenStatus]:
    return FindingTokenStatus.objects.filter(**lookups)


def _update(rows: QuerySet[FindingTokenStatus], now: dt.datetime, **fields: Any) -> int:
    # Any change but a claim ends a refresher tick's hold on the row (``claimed_by_run``):
    # what happens next is recorded, so a take-over has nothing left to redo.
    fields.setdefault("claimed_by_run", None)
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
    """One unknown, unrouted status per new finding: one INSERT of the model's defaults
    for every id (building a model instance per row took a third of a large import)."""
    ids = [finding.pk for finding in findings]
    if not ids:
        return 0
    now = timezone.now()
    template = FindingTokenStatus(project=project, created_at=now, updated_at=now)
    return len(db.rows_insert_like(template, {"finding": ids}))


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
        # The request sent for the old value is forgotten, so its late callback matches
        # nothing, and its lease no longer holds the row.
        last_request_id="",
        sending_until=None,
        result_received_at=None,
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
    request in flight owns the row). No SDRS request stands for the row afterwards, so a
    callback for an earlier one is not applied."""
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
            last_request_id="",
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


_TABLE = FindingTokenStatus._meta.db_table

# The transitions every request makes (a claim, SDRS's acceptance, a result) are written
# in SQL: building them with the ORM cost about 1 ms of CPU each, a sixth of a direct
# verification's, and the refresher's threads share one process. Their guards are those
# of the docstrings; ``NOT COALESCE(..., false)`` is what Django's ``exclude()`` writes for
# a condition on nullable columns.

# "Held by SDRS": pending with a request SDRS holds, or may hold, and whose callback can
# still come (asked for after %(recent)s, SDRS_PENDING_TIMEOUT ago): accepted (202), or
# unconfirmed: the request was written and no outcome was recorded before its lease ended
# (a read timeout, see ``status_unconfirmed``, or a worker that died while sending). Used
# with a guard that the lease has ended: a lease still running is an attempt sending now.
_HELD_SQL = """status = 'pending' AND (accepted_at > %(recent)s
    OR (accepted_at IS NULL AND sending_until IS NOT NULL AND pending_since > %(recent)s))"""

# claimed_by_run is left as it is: a tick's row stays its until the request's outcome is
# recorded, so if the tick dies in between, its take-over finds the row in flight
# (``status_release_claims``).
_CLAIM = """UPDATE {table} SET status = 'pending', verifier = %(verifier)s, pending_since = %(now)s,
    sending_until = %(until)s, last_request_id = %(request_id)s, attempts = %(attempt)s,
    accepted_at = NULL, updated_at = %(now)s
WHERE finding_id = %(finding_id)s
    AND (sending_until IS NULL OR sending_until <= %(now)s)
    AND {held}
    AND NOT COALESCE(result_received_at >= %(since)s, false)"""
# By what the SDRS hold guard is: none, held, or held by a request made since ``since``.
_CLAIMS = {
    guard: _CLAIM.format(table=_TABLE, held=held)
    for guard, held in (
        ("none", "true"),
        ("held", f"NOT COALESCE({_HELD_SQL}, false)"),
        ("held_since", f"NOT COALESCE({_HELD_SQL} AND pending_since >= %(since)s, false)"),
    )
}

# As ``_ours``: pending for this request.
_ACCEPTED = f"""UPDATE {_TABLE} SET sending_until = NULL, accepted_at = %(now)s, last_error_code = '',
    claimed_by_run = NULL, updated_at = %(now)s
WHERE finding_id = %(finding_id)s AND last_request_id = %(request_id)s AND status = 'pending'"""

_RESULT = f"""UPDATE {_TABLE} SET status = %(status)s, last_verified_at = %(verified_at)s,
    last_error_code = %(code)s, partner = %(partner)s, pending_since = NULL, accepted_at = NULL,
    sending_until = NULL, result_received_at = %(now)s, next_refresh_at = %(next_refresh_at)s,
    claimed_by_run = NULL, updated_at = %(now)s
WHERE finding_id = %(finding_id)s AND last_request_id = %(request_id)s AND last_request_id <> ''
    AND (status = 'pending' OR (status = 'unknown' AND last_error_code = ANY(%(late)s)))"""


def _execute(sql: str, params: dict[str, Any]) -> int:
    with db.prepared_cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


@dataclass(frozen=True)
class Claim:
    outcome: str  # claimed, missing, in_flight, already_verified, already_accepted, unconfirmed
    wait_seconds: float = 0.0


def _request_written() -> Q:
    """Pending for a request that reached SDRS or may have: accepted (202), or leased and
    not released by a "not written" outcome (``status_send_failed`` clears the lease; a
    read timeout, a worker that died or was stopped while sending, leave it)."""
    return Q(status=TokenStatus.PENDING) & (Q(accepted_at__isnull=False) | Q(sending_until__isnull=False))


def status_claim(
    *,
    finding_id: int,
    request_id: str,
    attempt: int,
    lease: float,
    force: bool = False,
    since: dt.datetime | None = None,
    verifier: str = Verifier.PARTNER,
) -> Claim:
    """→ pending, leased for ``lease`` seconds to the request ``request_id``.

    Guards: no other attempt is sending it right now (its lease has not run out); SDRS
    does not hold a request for it whose callback can still come (``_HELD_SQL``), so
    the token is never sent again while its result may arrive; and, when the caller says
    ``since`` when its verification was asked for (a job run's creation), no result has
    been received since then (that verification is done: a re-run after its worker died
    sends nothing). ``force`` ("Verify now") overrides the second guard for requests made
    before ``since`` only, so a forced run that is re-run does not send twice either.

    ``verifier`` direct: a partner's API answers within the call, so no request is ever
    "held" (nothing calls back); only the lease and ``since`` guards apply."""
    now = timezone.now()
    if verifier == Verifier.DIRECT:
        guard = "none"
    elif not force:
        guard = "held"
    else:
        guard = "held_since" if since is not None else "none"
    params = {
        "finding_id": finding_id,
        "now": now,
        "until": now + timedelta(seconds=lease),
        "verifier": verifier,
        "request_id": request_id,
        "attempt": attempt,
        "since": since,
        "recent": now - timedelta(seconds=settings.SDRS_PENDING_TIMEOUT),
    }
    if _execute(_CLAIMS[guard], params):
        return Claim("claimed")
    # Say why: this is the rare path.
    row = _rows(pk=finding_id).values("sending_until", "accepted_at", "result_received_at").first()
    if row is None:
        return Claim("missing")
    if row["sending_until"] and row["sending_until"] > now:
        return Claim("in_flight", wait_seconds=(row["sending_until"] - now).total_seconds())
    if since is not None and row["result_received_at"] and row["result_received_at"] >= since:
        return Claim("already_verified")
    if row["accepted_at"]:
        return Claim("already_accepted")
    return Claim("unconfirmed")


def _ours(finding_id: int, request_id: str) -> QuerySet[FindingTokenStatus]:
    # A newer request (another attempt, "verify now") or a callback has taken over otherwise.
    return _rows(pk=finding_id, last_request_id=request_id, status=TokenStatus.PENDING)


def status_accepted(*, finding_id: int, request_id: str) -> bool:
    """SDRS accepted our request: pending until its callback. Guard: pending for this request."""
    params = {"finding_id": finding_id, "request_id": request_id, "now": timezone.now()}
    return bool(_execute(_ACCEPTED, params))


def status_unconfirmed(*, finding_id: int, request_id: str, code: str) -> bool:
    """Our request was written but no answer came (a read timeout): SDRS may have accepted
    it and may still call back. The status stays pending for this request; its lease ends
    now and stays recorded (``sending_until`` in the past, ``accepted_at`` empty), which
    ``status_claim`` reads as "held by SDRS" until SDRS_PENDING_TIMEOUT: nothing sends the
    token again before the callback or the pending sweep. Guard: pending for this request."""
    now = timezone.now()
    return bool(_update(_ours(finding_id, request_id), now, sending_until=now, last_error_code=code[:MAX_CODE_LENGTH]))


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


def status_result(
    *, finding_id: int, status: str, verified_at: dt.datetime, request_id: str, code: str = "", partner: str = ""
) -> str:
    """The verdict on the request ``request_id`` (active, inactive or unknown, verified at
    ``verified_at``): SDRS's callback, or a partner's direct answer (``partner`` names it;
    ``code`` says why an answer is unknown). Both verifiers end here.

    Guard: the status awaits exactly this request: it is pending with ``request_id`` as its
    request, or that request's callback timed out (``callback_timeout``) and no request was
    made since. A result for an older request, for a finding never sent to SDRS, verified
    locally, reset since, or already answered changes nothing. Returns ``applied``,
    ``duplicate`` (this request's result, already applied), ``stale`` (not the result of
    the request the status awaits) or ``missing`` (no such status)."""
    now = timezone.now()
    params = {
        "finding_id": finding_id,
        "request_id": request_id,
        "now": now,
        "status": status,
        "verified_at": verified_at,
        "code": code[:MAX_CODE_LENGTH],
        "partner": partner,
        "next_refresh_at": _next_refresh(status, now),
        # A late callback for the request we sent still counts after the pending timeout
        # or a re-verification started by a callback outage, until a newer request is made.
        "late": ["callback_timeout", "callback_lost"],
    }
    if _execute(_RESULT, params):
        return "applied"
    stored = _rows(pk=finding_id).values("status", "last_request_id", "result_received_at").first()
    if stored is None:
        return "missing"
    same = stored["last_request_id"] == request_id and stored["status"] == status
    return "duplicate" if same and stored["result_received_at"] is not None else "stale"


def status_failed(*, finding_id: int, code: str) -> bool:
    """The verification job ended failed (retries spent or a permanent error): pending →
    unknown with the reason, due again after TOKEN_REFRESH_RETRY_AFTER.

    Guard: pending, and not for a request SDRS may hold (``_request_written``). A run that
    fails while its request may have been accepted (its worker died on the last attempt,
    it was stopped at its time budget or cancelled while sending) leaves the status pending
    for that request: its callback is still applied, and nothing sends the token again
    before the callback, a callback outage or SDRS_PENDING_TIMEOUT. Going back to unknown
    here made the refresher send it a second time and the callback "stale"."""
    now = timezone.now()
    failed = _rows(pk=finding_id, status=TokenStatus.PENDING).exclude(_request_written())
    return bool(_update(failed, now, **_back_to_unknown(code=code, now=now)))


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


def status_callbacks_lost(*, before: dt.datetime, limit: int) -> list[int]:
    """Up to ``limit`` statuses whose callback may have been lost: held by SDRS for a
    request made before ``before`` (when our callback endpoint refused a callback, or the
    database restarted), and not sending now → unknown (``callback_lost``), due at once for
    the refresher. The request id is kept, so the lost callback is still applied if SDRS
    sends it after all, until the new request is made. Rows another sweep holds are
    skipped. Returns their ids."""
    now = timezone.now()
    lost = (
        _rows(pending_since__lt=before)
        .filter(_request_written())
        .filter(Q(sending_until__isnull=True) | Q(sending_until__lte=now))
    )
    with transaction.atomic():
        ids = list(lost.select_for_update(skip_locked=True).values_list("pk", flat=True)[:limit])
        if ids:
            fields = _back_to_unknown(code="callback_lost", now=now)
            _update(lost.filter(pk__in=ids), now, **{**fields, "next_refresh_at": now})
    return ids


# --- the refresher ----------------------------------------------------------------------


def status_claim_due(*, batch_size: int, lease: float, run_id: int | None = None) -> list[int]:
    """Up to ``batch_size`` due statuses (oldest due first) for one refresher tick: their
    next refresh moves ``lease`` seconds ahead, so a tick that dies only delays them, and
    they name the tick's run (``run_id``), whose next attempt or failure hook gives them
    back at once (``status_release_claims``). Guard: due and not pending; rows another
    tick holds are skipped."""
    now = timezone.now()
    due = _rows(next_refresh_at__lte=now).exclude(status=TokenStatus.PENDING)
    with transaction.atomic():
        ids = list(
            due.select_for_update(skip_locked=True)
            .order_by("next_refresh_at")
            .values_list("pk", flat=True)[:batch_size]
        )
        if ids:
            _update(due.filter(pk__in=ids), now, next_refresh_at=now + timedelta(seconds=lease), claimed_by_run=run_id)
    return ids


def status_release_claims(*, run_id: int) -> tuple[int, int]:
    """The rows a refresher tick's run claimed and did not finish, given back after that
    run died (its next attempt, or its failure hook, calls this): those it had not started
    are due now; those it left pending (a request in flight when it died) stay pending for
    that request (SDRS may hold it), and only the hold is cleared. Returns both counts.
    Guard: still claimed by ``run_id``."""
    now = timezone.now()
    with transaction.atomic():
        claimed = _rows(claimed_by_run=run_id)
        released = _update(claimed.exclude(status=TokenStatus.PENDING), now, next_refresh_at=now)
        in_flight = claimed.update(claimed_by_run=None)  # pending: its request decides what follows
    return released, in_flight


def status_handed_over(*, finding_ids: list[int]) -> int:
    """A tick's claimed rows handed to jobs of their own (direct partners): the tick's hold
    ends, so its take-over does not make them due again. Guard: none needed (the hold only)."""
    if not finding_ids:
        return 0
    return _rows(pk__in=finding_ids).exclude(claimed_by_run=None).update(claimed_by_run=None)


def status_make_due(*, finding_ids: list[int]) -> int:
    """Due now (the admin's "Refresh now"). Guard: not pending."""
    if not finding_ids:
        return 0
    now = timezone.now()
    return _update(_rows(pk__in=finding_ids).exclude(status=TokenStatus.PENDING), now, next_refresh_at=now)


def status_requeue_unavailable(*, codes: Iterable[str]) -> int:
    """SDRS answers again: every status whose last attempt failed as unavailable (one of
    ``codes``) is due now instead of after its back-off. Guard: not pending, and due later
    than now (a verdict received since cleared the code)."""
    now = timezone.now()
    waiting = _rows(last_error_code__in=list(codes), next_refresh_at__gt=now).exclude(status=TokenStatus.PENDING)
    return _update(waiting, now, next_refresh_at=now)
