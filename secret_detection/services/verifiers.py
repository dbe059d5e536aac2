"""The verifier interface: how routing, "Verify now" and the refresher start a token's
verification without knowing who answers.

Two kinds implement it. SDRS (``Verifier.PARTNER``) accepts the token and calls back
later (``services.verification`` sends, ``services.callbacks`` applies the result); a
direct partner client (``Verifier.DIRECT``, ``secret_detection.partners``) answers within
the call (``services.direct``). Both move the status through the same transitions:
``status_claim`` → pending, then ``status_result`` with the verdict.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from secret_detection import partners
from secret_detection.models import Finding, Verifier
from secret_detection.services import jobs, pacing

# Runs whose reserved slots fall in the same window are due together.
_WINDOW = 0.1


@dataclass(frozen=True)
class TokenVerifier:
    """One kind of verifier: its name on the status row and the job that does the work
    (taking ``finding_id``, ``user_id`` and ``force``; ids only, never a value)."""

    name: str
    job: str
    #: True: the verdict arrives later by callback; False: within the job's call.
    asynchronous: bool

    def start(self, asks: Iterable[dict[str, Any]]) -> int:
        """Enqueue one verification per ask, after the surrounding transaction commits."""
        asks = list(asks)
        if not asks:
            return 0
        job = jobs.job_get(self.job)
        if self.asynchronous:
            job.enqueue_many(asks)
            return len(asks)
        # One statement for all of them, each due at its slot (a run per statement took
        # routing 2.2 ms a finding with a 4/s partner, whose slots are all apart).
        planned = [(delay, ask) for delay, group in _paced(asks) for ask in group]
        job.enqueue_many([ask for _, ask in planned], _delays=[delay for delay, _ in planned])
        return len(asks)


def _paced(asks: list[dict[str, Any]]) -> list[tuple[float, list[dict[str, Any]]]]:
    """Direct verifications, each due at a slot of its project's limit with its partner,
    reserved here in one upsert per limit: a run never starts only to find it must wait
    (``paced``), so a 4/s partner does not cost a worker a run per token to pace it."""
    rows = Finding.objects.filter(pk__in=[ask["finding_id"] for ask in asks]).values_list(
        "pk", "project_id", "token_type"
    )
    keys: dict[int, tuple[str, float]] = {}
    limits: dict[str, tuple[str, str]] = {}  # key → (partner, rate-limit key), for the hit counts
    for pk, project_id, token_type in rows:
        entry = partners.entry_for(token_type)
        if entry is not None:
            keys[pk] = (f"{entry.rate_limit_key}:{project_id}", entry.per_second)
            limits[keys[pk][0]] = (entry.partner, entry.rate_limit_key)
    by_key: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    unpaced: list[dict[str, Any]] = []
    for ask in asks:
        limit = keys.get(ask["finding_id"])
        (by_key[limit] if limit else unpaced).append(ask)
    windows: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for (key, per_second), group in by_key.items():
        delays = pacing.rate_slots_reserve(key=key, per_second=per_second, count=len(group))
        partner, limit_key = limits[key]
        # A run made to wait for our limit is a hit of it (the job console counts them).
        pacing.partner_rate_limit_record(partner=partner, limit=limit_key, hits=sum(d > _WINDOW for d in delays))
        window = max(_WINDOW, 1.0 / per_second) if per_second > 0 else _WINDOW
        for ask, delay in zip(group, delays, strict=True):
            # (The epsilon: a slot computed a few microseconds short stays in its window.)
            windows[math.floor(delay / window + 0.01) * window].append({**ask, "paced": True})
    planned = sorted(windows.items())
    if unpaced:
        planned.insert(0, (0.0, unpaced))  # the job itself says why it cannot verify them
    return planned


#: A routing batch hands its fresh findings of one verifier to the pool from this many on;
#: fewer keep one job each (spread over the workers at once, each shown in the console).
POOL_MIN_FINDINGS = 20
#: Routing starts a tick once this many fresh findings are due, and at its end.
POOL_START_EVERY = 1000


def pool_tick_start() -> None:
    """Start a tick for the fresh findings routing made due (after the surrounding
    transaction commits); it waits for a running tick rather than skipping."""
    jobs.job_get(jobs.REFRESH).enqueue(_dedupe_key="refresh-fresh", fresh=True)


SDRS = TokenVerifier(Verifier.PARTNER, jobs.VERIFY, asynchronous=True)
DIRECT = TokenVerifier(Verifier.DIRECT, jobs.DIRECT_VERIFY, asynchronous=False)
VERIFIERS = {verifier.name: verifier for verifier in (SDRS, DIRECT)}


def verifier_get(name: str) -> TokenVerifier:
    return VERIFIERS[name]
