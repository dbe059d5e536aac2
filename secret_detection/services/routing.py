"""Which verifier a token type has, and the routing job (GitLab's UpdateTokenStatus) that
sends each new finding to it."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from project import services as core
from project.models import ApplicationSetting
from secret_detection.models import FindingTokenStatus, PartnerTokenType, TokenStatus, Verifier

logger = logging.getLogger(__name__)

ROUTING_BATCH_SIZE = 100
#: Our own token format (the product's personal access tokens, ``glpat-…``), checked
#: locally like GitLab's TokenLookupService does for its tokens.
LOCAL_TOKEN_TYPES = frozenset({"gitlab_personal_access_token", "gitlab_personal_access_token_routable"})


@dataclass(frozen=True)
class Route:
    verifier: str
    partner: str = ""
    #: Why nothing can verify it now (``no_verifier``, ``verification_disabled``).
    reason: str = ""


def partner_types_enabled() -> dict[str, str]:
    """Enabled partner token types (lower-cased rule id → partner)."""
    return {
        token_type.lower(): partner
        for token_type, partner in PartnerTokenType.objects.filter(enabled=True).values_list("token_type", "partner")
    }


def verifier_resolve(*, token_type: str, partner_types: dict[str, str], sdrs_enabled: bool) -> Route:
    lowered = token_type.lower()
    if lowered in LOCAL_TOKEN_TYPES:
        return Route(Verifier.LOCAL)
    partner = partner_types.get(lowered)
    if partner is None:
        return Route(Verifier.NONE, reason="no_verifier")
    if not sdrs_enabled:
        return Route(Verifier.PARTNER, partner, reason="verification_disabled")
    return Route(Verifier.PARTNER, partner)


def local_token_status(*, value: str) -> str:
    """Active when the value is a live personal access token of ours, inactive otherwise."""
    if value and core.access_token_find_live(value=value) is not None:
        return TokenStatus.ACTIVE
    return TokenStatus.INACTIVE


def local_result_fields(*, status: str, now) -> dict:
    """The status fields after a local check (shared by routing, the refresher and "verify now")."""
    return {
        "status": status,
        "verifier": Verifier.LOCAL,
        "last_verified_at": now,
        "attempts": 1,
        "last_error_code": "",
        "pending_since": None,
        "accepted_at": None,
        "next_refresh_at": now + timedelta(seconds=settings.TOKEN_REFRESH_ACTIVE_AFTER)
        if status == TokenStatus.ACTIVE
        else None,
        "updated_at": now,
    }


def token_statuses_route(*, project_id: int) -> dict[str, int]:
    """Route the project's findings that no routing run has handled yet, 100 at a time.

    Partner types are enqueued for partner verification (in bulk, after each batch
    commits); our own tokens are checked here; any other type stays unknown and is backed
    off, so that enabling its type later gets it verified by the refresher. Rows are
    claimed with SKIP LOCKED and marked routed in the same transaction, so two runs never
    route a finding twice.
    """
    from secret_detection import tasks

    counts: Counter[str] = Counter()
    after = 0
    while True:
        with transaction.atomic():
            batch = list(
                FindingTokenStatus.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("finding")
                .filter(project_id=project_id, routed_at__isnull=True, finding_id__gt=after)
                .order_by("finding_id")[:ROUTING_BATCH_SIZE]
            )
            if not batch:
                break
            after = batch[-1].finding_id
            counts += _route_batch(batch, tasks)
    logger.info("token statuses routed", extra={"project_id": project_id, **counts})
    return dict(counts)


def _route_batch(batch: list[FindingTokenStatus], tasks) -> Counter[str]:
    counts: Counter[str] = Counter()
    now = timezone.now()
    partner_types = partner_types_enabled()
    sdrs_enabled = ApplicationSetting.current().sdrs_enabled
    backoff = now + timedelta(seconds=settings.TOKEN_REFRESH_NO_VERIFIER_BACKOFF)
    to_verify: list[dict] = []
    for row in batch:
        finding = row.finding
        route = verifier_resolve(token_type=finding.token_type, partner_types=partner_types, sdrs_enabled=sdrs_enabled)
        fields: dict = {"verifier": route.verifier, "routed_at": now, "updated_at": now}
        if route.verifier == Verifier.LOCAL:
            if finding.raw_value:
                fields.update(local_result_fields(status=local_token_status(value=finding.raw_value), now=now))
            else:
                fields.update(last_error_code="finding_without_token")
            counts[f"local_{fields.get('status', 'unknown')}"] += 1
        elif route.reason:
            # Nothing can verify it now: look again after the back-off, not every tick.
            fields.update(last_error_code=route.reason, next_refresh_at=backoff)
            counts[route.reason] += 1
        else:
            to_verify.append({"finding_id": finding.pk, "user_id": finding.imported_by_id})
            counts["partner_enqueued"] += 1
        FindingTokenStatus.objects.filter(pk=row.pk).update(**fields)
    if to_verify:
        tasks.verify_partner_token.enqueue_many(to_verify)
    return counts


def token_statuses_verify_now(*, finding_ids: list[int], user_id: int | None) -> dict[str, int]:
    """Verify the given findings now, whatever their refresh time (admin "Verify now"):
    partner types are enqueued (forcing a new request even if one is awaiting its
    callback), our own tokens are checked here, and the rest are counted as unverifiable."""
    from secret_detection import tasks

    counts: Counter[str] = Counter()
    now = timezone.now()
    partner_types = partner_types_enabled()
    sdrs_enabled = ApplicationSetting.current().sdrs_enabled
    to_verify: list[dict] = []
    with transaction.atomic():
        for row in FindingTokenStatus.objects.select_related("finding").filter(pk__in=finding_ids):
            finding = row.finding
            route = verifier_resolve(
                token_type=finding.token_type, partner_types=partner_types, sdrs_enabled=sdrs_enabled
            )
            if route.verifier == Verifier.LOCAL and finding.raw_value:
                status = local_token_status(value=finding.raw_value)
                FindingTokenStatus.objects.filter(pk=row.pk).update(**local_result_fields(status=status, now=now))
                counts["checked_locally"] += 1
            elif route.verifier == Verifier.PARTNER and not route.reason:
                to_verify.append({"finding_id": row.pk, "user_id": user_id, "force": True})
                counts["enqueued"] += 1
            else:
                counts[route.reason or "finding_without_token"] += 1
        if to_verify:
            tasks.verify_partner_token.enqueue_many(to_verify)
    return dict(counts)
