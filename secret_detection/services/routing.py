"""Which verifier a token has (the one routing decision, shared by the routing job, "verify
now" and the refresher), and the routing job (GitLab's UpdateTokenStatus) that sends each
new finding to it."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from project import services as core
from project.models import ApplicationSetting
from secret_detection import partners
from secret_detection.models import DirectPartner, FindingTokenStatus, PartnerTokenType, TokenStatus, Verifier
from secret_detection.services import statuses
from secret_detection.services.verifiers import (
    POOL_MIN_FINDINGS,
    POOL_START_EVERY,
    pool_tick_start,
    verifier_get,
)

logger = logging.getLogger(__name__)

ROUTING_BATCH_SIZE = 100
#: Our own token format (the product's personal access tokens, ``glpat-…``), checked
#: locally like GitLab's TokenLookupService does for its tokens.
LOCAL_TOKEN_TYPES = frozenset({"gitlab_personal_access_token", "gitlab_personal_access_token_routable"})
#: The outcome of a row whose token goes to SDRS (the caller sends it).
TO_PARTNER = "partner"
#: The outcome of a row whose token goes to its partner's API (the caller starts the job).
TO_DIRECT = "direct"


@dataclass(frozen=True)
class Route:
    verifier: str
    partner: str = ""
    #: Why nothing can verify it now (``finding_without_token``, ``no_verifier``,
    #: ``verification_disabled``, or why the SDRS client cannot be built).
    reason: str = ""


def partner_types_enabled() -> dict[str, str]:
    """Enabled partner token types (lower-cased rule id → partner)."""
    return {
        token_type.lower(): partner
        for token_type, partner in PartnerTokenType.objects.filter(enabled=True).values_list("token_type", "partner")
    }


@dataclass(frozen=True)
class RoutingTable:
    """What one routing decision reads, loaded once per batch."""

    partner_types: dict[str, str]
    #: lower-cased rule id → the admin's choice (auto, sdrs, direct, none).
    choices: dict[str, str]
    sdrs_on: bool
    partners_off: frozenset[str]


def routing_table() -> RoutingTable:
    rows = PartnerTokenType.objects.filter(enabled=True).values_list("token_type", "partner", "verifier")
    types = {token_type.lower(): (partner, choice) for token_type, partner, choice in rows}
    return RoutingTable(
        partner_types={key: partner for key, (partner, _) in types.items()},
        choices={key: choice for key, (_, choice) in types.items()},
        sdrs_on=ApplicationSetting.current().sdrs_enabled,
        partners_off=frozenset(DirectPartner.objects.filter(enabled=False).values_list("partner", flat=True)),
    )


def sdrs_unavailable_reason() -> str:
    """Why partner verification cannot be used now (empty when it can), as far as the
    routing decision is concerned: the refresher also knows whether its client works."""
    return "" if ApplicationSetting.current().sdrs_enabled else "verification_disabled"


def token_route(
    *,
    token_type: str,
    has_value: bool,
    partner_types: dict[str, str],
    unavailable: str = "",
    choice: str = "auto",
    sdrs_on: bool = True,
    partners_off: frozenset[str] = frozenset(),
) -> Route:
    """The verifier of a token, and why it cannot verify it now (``reason``):

    * no token value: nothing to verify (``finding_without_token``);
    * our own format: checked here (local);
    * an enabled partner type: to the verifier the admin chose for it (``choice``). The
      default (auto) is SDRS while SDRS is on, else the partner's API when we have a
      client for the type. Through SDRS it waits while SDRS is ``unavailable`` (that
      reason: disabled, misconfigured); directly, while the partner is switched off
      (``partner_disabled``); "none" is ``verification_off_for_type``;
    * anything else: no verifier (``no_verifier``).
    """
    lowered = token_type.lower()
    if lowered in LOCAL_TOKEN_TYPES:
        route = Route(Verifier.LOCAL)
    elif lowered in partner_types:
        route = _partner_route(lowered, partner_types[lowered], choice, sdrs_on, partners_off, unavailable)
    else:
        route = Route(Verifier.NONE, reason="no_verifier")
    if not has_value:
        return Route(route.verifier, route.partner, reason="finding_without_token")
    return route


def _partner_route(
    lowered: str, partner: str, choice: str, sdrs_on: bool, partners_off: frozenset[str], unavailable: str
) -> Route:
    entry = partners.entry_for(lowered)
    if choice == "auto":
        choice = "sdrs" if sdrs_on or entry is None else "direct"
    if choice == "none":
        return Route(Verifier.NONE, partner, reason="verification_off_for_type")
    if choice == "direct":
        if entry is None:
            return Route(Verifier.DIRECT, partner, reason="no_direct_client")
        return Route(Verifier.DIRECT, entry.partner, reason="partner_disabled" if entry.partner in partners_off else "")
    return Route(Verifier.PARTNER, partner, reason=unavailable)


def local_token_status(*, value: str) -> str:
    """Active when the value is a live personal access token of ours, inactive otherwise."""
    if value and core.access_token_find_live(value=value) is not None:
        return TokenStatus.ACTIVE
    return TokenStatus.INACTIVE


def statuses_dispatch(
    rows: Iterable[FindingTokenStatus], *, unavailable: str, back_off: bool = True
) -> list[tuple[FindingTokenStatus, Route, str]]:
    """Route each status (its ``finding`` loaded) and do what needs no partner: our own
    tokens are checked here, and rows nothing can verify now are backed off
    TOKEN_REFRESH_NO_VERIFIER_BACKOFF (unless ``back_off`` is False: "verify now" only
    reports them). Returns ``(row, route, outcome)``: ``local_active`` / ``local_inactive``,
    the reason it cannot be verified, ``TO_PARTNER`` for the caller to send to SDRS, or
    ``TO_DIRECT`` for the caller to start the direct verifier."""
    table = routing_table()
    routed: list[tuple[FindingTokenStatus, Route, str]] = []
    unverifiable: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        finding = row.finding
        route = token_route(
            token_type=finding.token_type,
            has_value=bool(finding.raw_value),
            partner_types=table.partner_types,
            unavailable=unavailable,
            choice=table.choices.get(finding.token_type.lower(), "auto"),
            sdrs_on=table.sdrs_on,
            partners_off=table.partners_off,
        )
        if route.reason:
            unverifiable[route.reason].append(row.pk)
            outcome = route.reason
        elif route.verifier == Verifier.LOCAL:
            status = local_token_status(value=finding.raw_value)
            statuses.status_checked_locally(finding_id=row.pk, status=status)
            outcome = f"local_{status}"
        elif route.verifier == Verifier.DIRECT:
            outcome = TO_DIRECT
        else:
            outcome = TO_PARTNER
        routed.append((row, route, outcome))
    if back_off:
        for code, ids in unverifiable.items():
            # Nothing can verify them now: look again after the back-off, not every tick.
            statuses.status_back_off(finding_ids=ids, code=code, seconds=settings.TOKEN_REFRESH_NO_VERIFIER_BACKOFF)
    return routed


def token_statuses_route(*, project_id: int) -> dict[str, int]:
    """Route the project's findings that no routing run has handled yet, 100 at a time.

    Partner types are enqueued for partner verification (in bulk, after each batch
    commits); our own tokens are checked here; any other type stays unknown and is backed
    off, so that enabling its type later gets it verified by the refresher. Rows are
    claimed with SKIP LOCKED and marked routed in the same transaction, so two runs never
    route a finding twice.
    """
    counts: Counter[str] = Counter()
    after = 0
    waiting = 0  # pooled findings made due since the last tick was started
    while True:
        with transaction.atomic():
            batch = statuses.status_lock_unrouted(project_id=project_id, after=after, limit=ROUTING_BATCH_SIZE)
            if not batch:
                break
            after = batch[-1].finding_id
            routed = _route_batch(batch)
            counts += routed
            waiting += sum(n for outcome, n in routed.items() if outcome.endswith("_pooled"))
            if waiting >= POOL_START_EVERY:
                # A long import: the pool starts on the first thousand while routing goes on.
                pool_tick_start()
                waiting = 0
    if waiting:
        # One tick for the rest, once they are all due: a tick started after the first batch
        # would drain it and end before the next, and a tick in between costs a gap.
        pool_tick_start()
    logger.info("token statuses routed", extra={"project_id": project_id, **counts})
    return dict(counts)


def _route_batch(batch: list[FindingTokenStatus]) -> Counter[str]:
    counts: Counter[str] = Counter()
    by_verifier: dict[str, list[int]] = defaultdict(list)
    to_verify: dict[str, list[tuple[FindingTokenStatus, str]]] = defaultdict(list)
    for row, route, outcome in statuses_dispatch(batch, unavailable=sdrs_unavailable_reason()):
        by_verifier[route.verifier].append(row.pk)
        if outcome in (TO_PARTNER, TO_DIRECT):
            to_verify[route.verifier].append((row, outcome))
        else:
            counts[outcome] += 1
    for verifier, ids in by_verifier.items():
        statuses.status_routed(finding_ids=ids, verifier=verifier)
    pooled: list[int] = []
    for verifier, rows in to_verify.items():
        # Many fresh SDRS findings: the refresher's pool (one job, a bounded set of threads).
        # A few, and every direct partner's: one job each. A direct verification costs
        # its CPU (signing, the send-time limit's bookkeeping) in the caller's process, and
        # the pool's threads share one process's GIL: measured at 2.2x the ideal in the pool
        # against 1.4-1.6x as runs spread over the workers' processes (docs/benchmarks.md).
        poolable = rows if verifier == Verifier.PARTNER and len(rows) >= POOL_MIN_FINDINGS else []
        in_pool = {row.pk for row, _ in poolable}
        pooled += in_pool
        for row, outcome in rows:
            counts[f"{outcome}_pooled" if row.pk in in_pool else f"{outcome}_enqueued"] += 1
        verifier_get(verifier).start(
            {"finding_id": row.pk, "user_id": row.finding.imported_by_id} for row, _ in rows if row.pk not in in_pool
        )
    if pooled:
        statuses.status_make_due(finding_ids=pooled)  # the caller starts the tick
    return counts


def token_statuses_verify_now(*, finding_ids: list[int], user_id: int | None) -> dict[str, int]:
    """Verify the given findings now, whatever their refresh time (admin "Verify now"):
    partner types are enqueued (forcing a new request even if one is awaiting its
    callback), our own tokens are checked here, and the rest are counted as unverifiable."""
    counts: Counter[str] = Counter()
    to_verify: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with transaction.atomic():
        rows = FindingTokenStatus.objects.select_related("finding").filter(pk__in=finding_ids)
        for row, route, outcome in statuses_dispatch(rows, unavailable=sdrs_unavailable_reason(), back_off=False):
            if outcome in (TO_PARTNER, TO_DIRECT):
                to_verify[route.verifier].append({"finding_id": row.pk, "user_id": user_id, "force": True})
                counts["enqueued"] += 1
            elif outcome.startswith("local_"):
                counts["checked_locally"] += 1
            else:
                counts[outcome] += 1
        for verifier, asks in to_verify.items():
            verifier_get(verifier).start(asks)
    return dict(counts)
