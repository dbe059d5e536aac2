"""What secret detection shows in the job console: statuses waiting for a callback, the
rate limits direct partners met, a switch per partner token type and per direct partner."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Count, Min
from django.urls import reverse
from django.utils import timezone

from project.errors import NotFound
from project.jobs import Backlog, Switch
from secret_detection.models import FindingTokenStatus, PartnerTokenType, TokenStatus
from secret_detection.services.partner_admin import direct_partner_switch, direct_partners_ensure


def token_status_backlog() -> list[Backlog]:
    now = timezone.now()
    pending = FindingTokenStatus.objects.filter(status=TokenStatus.PENDING).aggregate(
        n=Count("pk"), oldest=Min("pending_since")
    )
    age = (now - pending["oldest"]).total_seconds() if pending["oldest"] else None
    return [
        Backlog(
            "Token statuses pending a callback",
            pending["n"],
            oldest_age_seconds=age,
            url=reverse("admin:secret_detection_findingtokenstatus_changelist") + "?status__exact=pending",
            warn=age is not None and age > 600,
        )
    ]


def partner_type_switches() -> list[Switch]:
    return [
        Switch(
            key=f"partner_type.{row.pk}",
            label=f"{row.token_type} ({row.get_partner_display()})",
            on=row.enabled,
            group="Partner token types",
            permission="secret_detection.change_partnertokentype",
            changed_by=row.updated_by,
            changed_at=row.updated_at if row.updated_by else None,
        )
        for row in PartnerTokenType.objects.all()
    ]


def partner_type_switch(*, type_id: int, enabled: bool, by: str) -> str:
    """Turn verification of one partner token type on or off, recording who did."""
    with transaction.atomic():
        row = PartnerTokenType.objects.select_for_update().filter(pk=type_id).first()
        if row is None:
            raise NotFound(f"Partner token type #{type_id} does not exist.")
        if row.enabled == enabled:
            return f"{row.token_type} was already {'on' if enabled else 'off'}."
        row.enabled, row.updated_by = enabled, by[:150]
        row.save(update_fields=["enabled", "updated_by", "updated_at"])
    return f"{row.token_type} is now {'on' if enabled else 'off'}."


def partner_type_switch_flip(key: str, on: bool, by: str) -> str:
    return partner_type_switch(type_id=int(key.removeprefix("partner_type.")), enabled=on, by=by)


def direct_partner_backlog() -> list[Backlog]:
    """Rate limits met per direct partner (ours and its 429s), highlighted while a 429
    pauses it."""
    now = timezone.now()
    url = reverse("admin:secret_detection_directpartner_changelist")
    figures = []
    for row in direct_partners_ensure():
        paused = row.paused_until is not None and row.paused_until > now
        label = f"Rate-limit hits: {row.partner}" + (f" (paused until {row.paused_until:%H:%M:%S})" if paused else "")
        age = (now - row.last_rate_limit_at).total_seconds() if row.last_rate_limit_at else None
        figures.append(Backlog(label, row.rate_limit_hits, oldest_age_seconds=age, url=url, warn=paused))
    return figures


def direct_partner_switches() -> list[Switch]:
    return [
        Switch(
            key=f"direct_partner.{row.partner}",
            label=f"Direct verification: {row.partner}",
            on=row.enabled,
            group="Direct partners",
            permission="secret_detection.change_directpartner",
            changed_by=row.updated_by,
            changed_at=row.updated_at if row.updated_by else None,
        )
        for row in direct_partners_ensure()
    ]


def direct_partner_switch_flip(key: str, on: bool, by: str) -> str:
    return direct_partner_switch(partner=key.removeprefix("direct_partner."), enabled=on, by=by)
