"""API authentication. Kept apart from ``project.api`` because DRF imports these classes
while ``rest_framework.views`` is still loading."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.request import Request

from project import services
from project.errors import AppError, RateLimited
from project.middleware import client_address
from project.models import AccessToken, RateLimitCounter
from project.ratelimit import rate_limit_hit


class AccessTokenAuthentication(BaseAuthentication):
    """``PRIVATE-TOKEN: <token>`` or ``Authorization: Bearer <token>``.

    Failed attempts are counted per client address (GitLab's fail2ban for credentials):
    past ``API_AUTH_FAILURE_LIMIT`` failures in ``API_AUTH_FAILURE_PERIOD`` seconds, every
    token from that address, valid or not, is answered 429 for ``API_AUTH_BAN_TIME``
    seconds, so guessing cannot go on and a guess that happens to be right is not revealed.
    """

    def authenticate(self, request: Request) -> tuple[Any, AccessToken] | None:
        value = request.headers.get("Private-Token")
        if value is None:
            header = request.headers.get("Authorization", "")
            if not header.lower().startswith("bearer "):
                return None
            value = header[7:]
        address = client_address(request) or "unknown"
        auth_ban_check(address)
        try:
            token = services.access_token_authenticate(value=value)
        except AppError as exc:
            auth_failure_record(address)
            raise exceptions.AuthenticationFailed(exc.message) from None
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class CsrfSessionAuthentication(SessionAuthentication):
    """The browser's session, with CSRF enforced on unsafe methods (DRF's behaviour)."""


# --- failed-authentication throttle (counted in PostgreSQL: rate_limit_counters) -----------


def _failures_key(address: str) -> str:
    return f"api_auth_failures:{address}"


def _ban_key(address: str) -> str:
    return f"api_auth_ban:{address}"


def auth_ban_check(address: str) -> None:
    """Raise the 429 while ``address`` is banned for failed authentications."""
    from project.api import AuthThrottled

    if settings.API_AUTH_FAILURE_LIMIT <= 0:
        return
    now = timezone.now()
    ban_time = settings.API_AUTH_BAN_TIME
    since = (
        RateLimitCounter.objects.filter(key=_ban_key(address), window_start__gt=now - timedelta(seconds=ban_time))
        .order_by("-window_start")
        .values_list("window_start", flat=True)
        .first()
    )
    if since is not None:
        raise AuthThrottled(wait=math.ceil(ban_time - (now - since).total_seconds()))


def auth_failure_record(address: str) -> None:
    """Count one failed authentication from ``address``; past the limit, ban the address
    (one row under its ban key, from now) and raise the 429."""
    from project.api import AuthThrottled

    try:
        rate_limit_hit(
            key=_failures_key(address),
            limit=settings.API_AUTH_FAILURE_LIMIT,
            period=settings.API_AUTH_FAILURE_PERIOD,
        )
    except RateLimited:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO rate_limit_counters (key, window_start, hits) VALUES (%s, %s, 1) "
                "ON CONFLICT (key, window_start) DO NOTHING",
                [_ban_key(address), timezone.now()],
            )
        raise AuthThrottled(wait=settings.API_AUTH_BAN_TIME) from None
