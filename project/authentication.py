"""API authentication. Kept apart from ``project.api`` because DRF imports these classes
while ``rest_framework.views`` is still loading."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.request import Request

from project import db, services, sqlrows
from project.errors import AppError, RateLimited
from project.middleware import client_address
from project.models import AccessToken, RateLimitCounter, User
from project.ratelimit import rate_limit_hit


def signed_in_user(request: Request) -> User:
    """The user of a request that ``ApiView`` let through: its ``IsAuthenticated``
    permission has refused anonymous ones already (DRF types ``request.user`` as either)."""
    user = request.user
    if not user.is_authenticated:
        raise exceptions.NotAuthenticated()
    return user


def request_token(request: HttpRequest) -> str | None:
    """The token a request sends, stripped (``""`` when the header is there but empty), or
    None when it sends none (GitLab's two headers)."""
    value = request.headers.get("Private-Token")
    if value is None:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return None
        value = header[7:]
    return value.strip()


class AccessTokenAuthentication(BaseAuthentication):
    """``PRIVATE-TOKEN: <token>`` or ``Authorization: Bearer <token>``.

    Failed attempts are counted per client address (GitLab's fail2ban for credentials):
    past ``API_AUTH_FAILURE_LIMIT`` failures in ``API_AUTH_FAILURE_PERIOD`` seconds, every
    token from that address, valid or not, is answered 429 for ``API_AUTH_BAN_TIME``
    seconds, so guessing cannot go on and a guess that happens to be right is not revealed.
    """

    def authenticate(self, request: Request) -> tuple[Any, AccessToken] | None:
        value = request_token(request)
        if value is None:
            return None
        address = client_address(request) or "unknown"
        token, banned_since = _token_read(value, address) if value else (None, None)
        if token is None:
            auth_ban_check(address)
        else:
            _ban_raise(banned_since)  # a banned address is refused whatever it sent
        try:
            token = services.access_token_accept(token=token)
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


def _bans(address: str) -> QuerySet[RateLimitCounter]:
    """The start of ``address``'s ban in force, if any (one row at most: the latest)."""
    since = timezone.now() - timedelta(seconds=settings.API_AUTH_BAN_TIME)
    return RateLimitCounter.objects.filter(key=_ban_key(address), window_start__gt=since).order_by("-window_start")


class TokenRead:
    """The token read: the live token of a value (as ``AccessToken.objects.live()``: not
    revoked, not expired) with its user, and the start of the client address's ban, if any.

    As parts of a statement, so that a poll can read more in the same round trip
    (``exports.status.export_status_poll``): select ``columns`` from ``TABLES`` where (or
    LEFT JOIN on) ``MATCH``, with ``params``; ``split`` takes them back out of a row. The
    ban's column is read either way. Fields left out are deferred.
    """

    TABLES = "personal_access_tokens AS t JOIN users AS u ON u.id = t.user_id"
    MATCH = "t.digest = %(digest)s AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > %(today)s)"

    def __init__(self, token_fields: list[str], user_fields: list[str]) -> None:
        self.token = sqlrows.Columns(AccessToken, "t", token_fields)
        self.user = sqlrows.Columns(User, "u", user_fields)
        self.columns = f"""{self.token.sql}, {self.user.sql},
           (SELECT max(b.window_start) FROM rate_limit_counters AS b
            WHERE b.key = %(ban_key)s AND b.window_start > %(ban_since)s)"""
        self.width = self.token.width + self.user.width + 1

    @staticmethod
    def params(value: str, address: str) -> dict[str, Any]:
        """The parameters of ``MATCH`` and of the ban's column, for the token ``value``
        sent from ``address``."""
        banning = settings.API_AUTH_FAILURE_LIMIT > 0
        return {
            "ban_key": _ban_key(address) if banning else None,
            "ban_since": timezone.now() - timedelta(seconds=settings.API_AUTH_BAN_TIME),
            "digest": services.token_digest(value),
            "today": timezone.localdate(),
        }

    def split(self, row: Sequence[Any]) -> tuple[AccessToken | None, datetime | None, Sequence[Any]]:
        """The token (with its user) and the ban's start at the head of ``row``, and the rest."""
        token, user, banned_since = sqlrows.split(row[: self.width], self.token, self.user)
        if token is not None:
            token.user = user
        return token, banned_since, row[self.width :]


# Every API request starts here, so this is one hand-written statement (``project.sqlrows``),
# reading the whole token and user: they become ``request.auth`` and ``request.user``.
_READ = TokenRead(
    ["id", "user", "name", "digest", "prefix", "scopes", "expires_at", "last_used_at", "revoked_at", "created_at"],
    [
        "id", "password", "last_login", "is_superuser", "username", "first_name", "last_name", "email", "is_staff",
        "is_active", "date_joined",
    ],
)  # fmt: skip
_TOKEN_SQL = f"SELECT {_READ.columns} FROM {TokenRead.TABLES} WHERE {TokenRead.MATCH}"


def _token_read(value: str, address: str) -> tuple[AccessToken | None, datetime | None]:
    """The live token of ``value`` with its user, and the start of ``address``'s ban (None
    without a token: ``auth_ban_check`` then reads the ban alone)."""
    with db.prepared_cursor(connection) as cursor:
        cursor.execute(_TOKEN_SQL, TokenRead.params(value, address))
        row = cursor.fetchone()
    if row is None:
        return None, None
    token, banned_since, _ = _READ.split(row)
    return token, banned_since


def token_accept_found(*, token: AccessToken | None, banned_since: datetime | None) -> AccessToken | None:
    """A token read along with other data that signs in as ``AccessTokenAuthentication``
    would let it (found, live, its address not banned, its user active), with its use
    recorded. None for any other: the request must then go through that authentication,
    which answers it, counts the failure and bans the address past the limit."""
    if token is None or banned_since is not None or not token.user.is_active:
        return None
    return services.access_token_accept(token=token)


def _ban_raise(since: datetime | None) -> None:
    from project.api import AuthThrottled

    if since is not None:
        elapsed = (timezone.now() - since).total_seconds()
        raise AuthThrottled(wait=math.ceil(settings.API_AUTH_BAN_TIME - elapsed))


def auth_ban_check(address: str) -> None:
    """Raise the 429 while ``address`` is banned for failed authentications."""
    if settings.API_AUTH_FAILURE_LIMIT <= 0:
        return
    _ban_raise(_bans(address).values_list("window_start", flat=True).first())


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
