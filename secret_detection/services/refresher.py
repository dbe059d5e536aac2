"""The status refresher, on the pattern of coder's gitsync worker.

Each tick claims statuses whose ``next_refresh_at`` has passed, in batches, with
``FOR UPDATE SKIP LOCKED``; the claim itself pushes ``next_refresh_at`` forward by the
tick's time budget, so a tick that dies only delays its rows. Outbound calls run on a
bounded pool of threads. A 429 pauses that partner for the rest of the tick (its rows wait
for ``Retry-After``); SDRS being unreachable or refusing our key pauses every partner.
Rows that nothing can verify back off instead of coming back every tick.
"""

from __future__ import annotations

import contextvars
import logging
import math
import queue
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import chain, zip_longest
from typing import Any

from django.conf import settings
from django.db import connections, transaction

from project import locks
from project.errors import AppError
from project.jobs import Defer, current_run
from project.models import ApplicationSetting
from secret_detection import metrics
from secret_detection.clients import SdrsClient, SdrsConfig, SdrsMisconfigured, SdrsRateLimited
from secret_detection.models import FindingTokenStatus
from secret_detection.services import breaker, jobs, pacing, statuses
from secret_detection.services.routing import TO_DIRECT, TO_PARTNER, statuses_dispatch
from secret_detection.services.verification import verification_send
from secret_detection.services.verifiers import DIRECT

logger = logging.getLogger(__name__)

# One tick at a time across the cluster: a tick that outlives its interval makes the next
# one return at once instead of doubling the outbound concurrency.
_TICK_LOCK = "secret_detection.refresh"
# How often a tick started for fresh findings looks whether the running tick has ended.
_FRESH_WAIT = 1.0
_PAUSE_ALL_CODES = {"sdrs_unavailable", "sdrs_timeout", "sdrs_auth_rejected"}


class _Pool:
    """A fixed set of threads for one tick. Each thread keeps its database connection for
    the whole tick and closes it when the tick ends."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.outcomes: Counter[str] = Counter()
        #: (the submitter's context, the function, its argument), or None: stop.
        self._queue: queue.Queue[tuple[contextvars.Context, Callable[[Any], str], Any] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pending = 0
        self._done = threading.Condition()

    def _worker(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                ctx, fn, arg = item
                try:
                    outcome = ctx.run(fn, arg)
                except Exception:
                    # The row keeps the lease its claim gave it, so it comes back later.
                    logger.exception("refreshing a token status failed")
                    outcome = "error"
                metrics.REFRESH_ROWS.labels(outcome=outcome).inc()
                with self._done:
                    self.outcomes[outcome] += 1
                    self._pending -= 1
                    self._done.notify_all()
        finally:
            connections.close_all()  # this thread's connections only

    def submit(self, fn: Callable[[Any], str], items: list[Any]) -> None:
        while len(self._threads) < min(self.size, len(items) + self._pending):
            thread = threading.Thread(target=self._worker, name=f"token-refresh-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)
        with self._done:
            self._pending += len(items)
        for item in items:
            # Each task runs in a copy of this context, so its log lines carry the job's.
            self._queue.put((contextvars.copy_context(), fn, item))

    @property
    def busy(self) -> bool:
        with self._done:
            return self._pending > 0

    def wait(self, *, at_most: int = 0) -> None:
        """Until no more than ``at_most`` rows are waiting or in flight."""
        with self._done:
            self._done.wait_for(lambda: self._pending <= at_most)

    def close(self) -> None:
        self.wait()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)


class _TickState:
    """Partners paused in this tick, shared by the pool's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paused: dict[str, tuple[str, float]] = {}
        self._all: tuple[str, float] | None = None

    def pause(self, partner: str, code: str, seconds: float) -> None:
        with self._lock:
            self._paused.setdefault(partner, (code, seconds))

    def pause_all(self, code: str, seconds: float) -> None:
        with self._lock:
            if self._all is None:
                self._all = (code, seconds)

    def paused(self, partner: str) -> tuple[str, float] | None:
        with self._lock:
            return self._all or self._paused.get(partner)


def _claim_due(*, batch_size: int, run_id: int | None = None) -> list[FindingTokenStatus]:
    ids = statuses.status_claim_due(batch_size=batch_size, lease=settings.TOKEN_REFRESH_TICK_TIMEOUT, run_id=run_id)
    if not ids:
        return []
    rows = FindingTokenStatus.objects.filter(pk__in=ids).select_related("finding", "finding__project")
    order = {pk: position for position, pk in enumerate(ids)}  # oldest due first
    return sorted(rows, key=lambda row: order[row.pk])


def _interleave(groups: dict[str, list[FindingTokenStatus]]) -> list[tuple[str, Any]]:
    # Alternate partners so that one paused (rate limited) partner does not hold a run
    # of the pool's slots while the others wait.
    lanes = [[(partner, row) for row in rows] for partner, rows in groups.items()]
    return [item for item in chain.from_iterable(zip_longest(*lanes)) if item is not None]


class _Batch:
    def __init__(self, client: SdrsClient, state: _TickState) -> None:
        self.client = client
        self.state = state

    def decide(self, partner: str) -> Callable[[AppError, int], str]:
        def decision(error: AppError, attempt: int) -> str:
            if isinstance(error, SdrsRateLimited):
                return f"rate limited: {partner} paused for this tick, retry in {error.retry_after:g} s"
            if error.code in _PAUSE_ALL_CODES:
                return f"failed: {error.code}; every partner paused for this tick"
            return f"failed: {error.code}; retry in {settings.TOKEN_REFRESH_RETRY_AFTER} s"

        return decision

    def refresh_one(self, item: tuple[str, FindingTokenStatus]) -> str:
        partner, row = item
        paused = self.state.paused(partner)
        if paused is not None:
            code, seconds = paused
            statuses.status_back_off(finding_ids=[row.pk], code=code, seconds=seconds)
            return "skipped_paused"
        finding = row.finding
        request_id = uuid.uuid4().hex
        lease = sum(self.client.timeout) + 5
        previous_status = row.status  # as claimed by this tick; pending rows are never claimed
        fresh = _fresh(row)
        claim = statuses.status_claim(finding_id=row.pk, request_id=request_id, attempt=1, lease=lease)
        if claim.outcome != "claimed":
            return "skipped_busy"
        error = verification_send(
            finding=finding,
            client=self.client,
            request_id=request_id,
            attempt=1,
            user_id=None,
            partner=partner,
            decide=self.decide(partner),
        )
        if error is None:
            return "accepted"
        delay = float(settings.TOKEN_REFRESH_RETRY_AFTER)
        if getattr(error, "may_be_accepted", False):
            # Written, no answer: verification_send left it pending for this request (SDRS
            # may hold it and call back). Going back to the old verdict would make it due
            # again, and resent, before its callback could arrive.
            self.state.pause_all(error.code, delay)
            return "unconfirmed"
        if isinstance(error, SdrsRateLimited):
            delay = float(error.retry_after or delay)
            self.state.pause(partner, error.code, delay)
        elif error.code in _PAUSE_ALL_CODES:
            self.state.pause_all(error.code, delay)
        if fresh and error.retryable:
            # A fresh finding (handed over by routing) keeps the job path's retries: its
            # next attempt is a job of its own, after the policy's first delay.
            first = jobs.verify_retry().delay_after(1)
            if first is not None:
                statuses.status_send_failed(finding_id=row.pk, request_id=request_id, code=error.code)
                retry_in = max(first, float(getattr(error, "retry_after", None) or 0.0))
                jobs.job_get(jobs.VERIFY_RETRY).enqueue(_delay=retry_in, finding_id=row.pk, user_id=None)
                # Not the end of its verification: the failure counts towards the breaker's
                # threshold (``verification_send``), as a job's first failed attempt does.
                return "retry_enqueued"
        # A refresh that could not be made keeps what we knew (an active token stays
        # active); the error code and the back-off say what happened.
        statuses.status_refresh_failed(
            finding_id=row.pk, request_id=request_id, code=error.code, status=previous_status, retry_in=delay
        )
        # Failed as unavailable: the circuit opens, so that the probe makes the row due as
        # soon as SDRS answers rather than TOKEN_REFRESH_RETRY_AFTER later.
        breaker.breaker_open(code=error.code)
        return "rate_limited" if isinstance(error, SdrsRateLimited) else "failed"


def _refresh_batch(rows: list[FindingTokenStatus], pool: _Pool, state: _TickState) -> Counter[str]:
    counts: Counter[str] = Counter()
    app = ApplicationSetting.current()
    client: SdrsClient | None = None
    unavailable = "verification_disabled"
    if app.sdrs_enabled:
        try:
            client = SdrsClient(SdrsConfig.from_settings(app))
            unavailable = ""
        except SdrsMisconfigured as exc:
            unavailable = exc.code
    groups: dict[str, list[FindingTokenStatus]] = defaultdict(list)
    direct: dict[str, list[FindingTokenStatus]] = defaultdict(list)
    for row, route, outcome in statuses_dispatch(rows, unavailable=unavailable):
        if outcome == TO_PARTNER:
            groups[route.partner].append(row)
        elif outcome == TO_DIRECT:
            direct[route.partner].append(row)
        elif outcome.startswith("local_"):
            counts[outcome] += 1
        else:
            counts["no_verifier"] += 1  # backed off by the routing
    counts += _refresh_direct(direct)
    for outcome, number in counts.items():
        metrics.REFRESH_ROWS.labels(outcome=outcome).inc(number)
    if groups and client is not None:
        # Sent by the pool; their outcomes are counted there.
        pool.submit(_Batch(client, state).refresh_one, _interleave(groups))
    return counts


def _refresh_direct(groups: dict[str, list[FindingTokenStatus]]) -> Counter[str]:
    """Direct partners answer within their own job: start one per row (each due at a slot
    of its partner's limit), except for a partner that a 429 paused (its rows wait for the
    pause, as SDRS's do in a tick). The rows are the jobs' from then on: the tick's hold on
    them ends in the same transaction."""
    counts: Counter[str] = Counter()
    for partner, rows in groups.items():
        ids = [row.pk for row in rows]
        paused = pacing.partner_paused_for(partner=partner)
        if paused > 0:
            statuses.status_back_off(finding_ids=ids, code="partner_paused", seconds=paused)
            counts["skipped_paused"] += len(ids)
            continue
        with transaction.atomic():
            DIRECT.start({"finding_id": pk, "user_id": None} for pk in ids)
            statuses.status_handed_over(finding_ids=ids)
        counts["direct_enqueued"] += len(ids)
    return counts


def _fresh(row: FindingTokenStatus) -> bool:
    """Never tried: handed over by routing (or backed off before any attempt)."""
    return row.attempts == 0 and row.last_verified_at is None


def _claim_budget() -> float:
    """Seconds after which a tick stops claiming, so that its last batch still finishes
    within the job's time budget (TOKEN_REFRESH_TICK_TIMEOUT)."""
    per_call = 2 * min(ApplicationSetting.current().effective_sdrs().timeout, 60.0)
    rounds = math.ceil(settings.TOKEN_REFRESH_BATCH_SIZE / settings.TOKEN_REFRESH_CONCURRENCY) + 1
    return max(0.0, settings.TOKEN_REFRESH_TICK_TIMEOUT - rounds * per_call)


def token_statuses_refresh(*, fresh: bool = False) -> dict[str, Any]:
    """One refresher tick: claim due statuses batch after batch and re-verify them.
    ``fresh``: started for findings routing just handed over; while another tick runs it
    waits for it (that tick may have stopped claiming) instead of leaving them for the
    schedule."""
    started = time.monotonic()
    run = current_run()
    run_id = run.pk if run is not None else None
    if run is not None and run.attempt > 1:
        # An earlier attempt of this run died: what it claimed is ours to finish now,
        # not in TOKEN_REFRESH_TICK_TIMEOUT when its lease ends.
        token_statuses_claims_release(run_id=run.pk)
    with locks.session_lock(_TICK_LOCK) as locked:
        if not locked and fresh:
            raise Defer(_FRESH_WAIT, "a refresher tick is running")
        if not locked:
            logger.info("token refresh tick skipped: the previous tick is still running")
            return {"skipped": "previous tick still running"}
        budget = _claim_budget()
        totals: Counter[str] = Counter()
        pool = _Pool(settings.TOKEN_REFRESH_CONCURRENCY)
        state = _TickState()
        if breaker.breaker_is_open():
            # SDRS is marked down: nothing is sent; the probe makes these rows due again
            # as soon as it answers.
            state.pause_all(breaker.DOWN_CODE, float(settings.TOKEN_REFRESH_RETRY_AFTER))
        try:
            while True:
                rows = _claim_due(batch_size=settings.TOKEN_REFRESH_BATCH_SIZE, run_id=run_id)
                if not rows and pool.busy:
                    # Rows in flight may fail and be due again at once (a short
                    # Retry-After): look once more when the pool is idle.
                    pool.wait()
                    rows = _claim_due(batch_size=settings.TOKEN_REFRESH_BATCH_SIZE, run_id=run_id)
                if not rows:
                    break
                totals["claimed"] += len(rows)
                totals += _refresh_batch(rows, pool, state)
                # Claim the next batch while the last rows of this one are still in flight,
                # so the pool never idles between batches.
                pool.wait(at_most=pool.size)
                if time.monotonic() - started >= budget:
                    break
        finally:
            pool.close()
        totals += pool.outcomes
    result = {**totals, "duration_s": round(time.monotonic() - started, 3)}
    if totals:
        logger.info("token refresh tick finished", extra=result)
    return result


def token_statuses_claims_release(*, run_id: int) -> dict[str, int]:
    """Give back what a dead tick's run claimed (its next attempt, or its failure hook
    once no attempt is left): rows it had not started are due at once. A row it left in
    flight at SDRS stays pending: SDRS may hold its token and call back, so it is never
    sent again; the callback or the pending sweep ends it. (Direct partners' rows are
    handed to jobs of their own when claimed, so none is left in flight here.)"""
    released, in_flight = statuses.status_release_claims(run_id=run_id)
    counts = {"released": released, "in_flight": in_flight}
    if released or in_flight:
        logger.info("token refresh claims of a dead tick released", extra={"run_id": run_id, **counts})
    return counts


def token_statuses_refresh_now(*, finding_ids: list[int]) -> int:
    """Make statuses due now and start a tick (admin "Refresh now")."""
    with transaction.atomic():
        due = statuses.status_make_due(finding_ids=finding_ids)
        if due:
            jobs.job_get(jobs.REFRESH).enqueue(_dedupe_key="refresh-now")
    return due
