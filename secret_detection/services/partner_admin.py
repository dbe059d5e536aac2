"""What the admin and the job console do to direct partners: the per-partner switch, the
per-type routing choice, and "Check connection" (a well-formed value that cannot exist,
sent to the partner's API; the answer and its latency are shown and recorded)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from project.errors import NotFound, ValidationFailed
from secret_detection import partners
from secret_detection.models import DirectPartner, PartnerTokenType
from secret_detection.partners import PartnerNetworkError, PartnerRateLimited, PartnerResponseError

logger = logging.getLogger(__name__)

VERIFIER_CHOICES = ("auto", "sdrs", "direct", "none")


def direct_partners_ensure() -> list[DirectPartner]:
    """One row per partner we have a client for (a row holds its switch and its state)."""
    for partner in partners.CLIENTS:
        DirectPartner.objects.get_or_create(partner=partner)
    return list(DirectPartner.objects.filter(partner__in=list(partners.CLIENTS)))


def direct_partner_switch(*, partner: str, enabled: bool, by: str) -> str:
    """Turn direct verification with one partner on or off, recording who did."""
    if partner not in partners.CLIENTS:
        raise NotFound(f"No direct client for partner {partner!r}.")
    with transaction.atomic():
        direct_partners_ensure()
        row = DirectPartner.objects.select_for_update().get(partner=partner)
        if row.enabled == enabled:
            return f"{partner} was already {'on' if enabled else 'off'}."
        row.enabled, row.updated_by = enabled, by[:150]
        row.save(update_fields=["enabled", "updated_by", "updated_at"])
    return f"Direct verification with {partner} is now {'on' if enabled else 'off'}."


def partner_type_route(*, type_id: int, verifier: str, by: str) -> str:
    """Route one partner token type to a verifier (auto, sdrs, direct, none). New findings
    follow at once; existing statuses at their next refresh."""
    if verifier not in VERIFIER_CHOICES:
        raise ValidationFailed(f"Unknown verifier {verifier!r}.")
    with transaction.atomic():
        row = PartnerTokenType.objects.select_for_update().filter(pk=type_id).first()
        if row is None:
            raise NotFound(f"Partner token type #{type_id} does not exist.")
        if verifier == "direct" and partners.entry_for(row.token_type) is None:
            raise ValidationFailed(f"No direct client verifies {row.token_type!r}.")
        row.verifier, row.updated_by = verifier, by[:150]
        row.save(update_fields=["verifier", "updated_by", "updated_at"])
    return f"{row.token_type} is now verified by: {row.get_verifier_display()}."


@dataclass(frozen=True)
class PartnerCheck:
    partner: str
    #: reachable, unexpected, rate_limited, unreachable, garbage
    result: str
    message: str
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.result in ("reachable", "rate_limited")


def direct_partner_check(*, partner: str) -> PartnerCheck:
    """Send the partner's "cannot exist" value and say what came back, and how fast. A
    live partner answers inactive; anything else is worth a look."""
    client = partners.client_for(partner)
    started = time.perf_counter()
    try:
        verdict = client.verify(client.probe_value)
    except PartnerRateLimited:
        result, message = "rate_limited", "reachable, but rate limiting us right now"
    except PartnerNetworkError as exc:
        status = f" (HTTP {exc.upstream_status})" if exc.upstream_status else ""
        result, message = "unreachable", f"unreachable: {exc.code}{status}"
    except PartnerResponseError as exc:
        result, message = "garbage", f"answered something unreadable (HTTP {exc.upstream_status})"
    else:
        if verdict.status == "inactive":
            result, message = "reachable", f"reachable: answered inactive (HTTP {verdict.http_status}), as expected"
        elif verdict.status == "active":
            result, message = "unexpected", "answered active for a value that cannot exist: is the URL right?"
        else:
            result, message = "unexpected", f"unexpected answer: {verdict.code}"
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    check = PartnerCheck(partner, result, f"{partner}: {message} in {elapsed:g} ms ({client.url})", elapsed)
    direct_partners_ensure()
    DirectPartner.objects.filter(partner=partner).update(
        last_check_at=timezone.now(), last_check_result=check.message[:255], last_check_ms=int(elapsed)
    )
    logger.info("direct partner connection check", extra={"partner": partner, "result": result, "duration_ms": elapsed})
    return check
