"""API authentication. Kept apart from ``project.api`` because DRF imports these classes
while ``rest_framework.views`` is still loading."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.request import Request

from project import services
from project.errors import AppError
from project.models import AccessToken


class AccessTokenAuthentication(BaseAuthentication):
    """``PRIVATE-TOKEN: <token>`` or ``Authorization: Bearer <token>``."""

    def authenticate(self, request: Request) -> tuple[Any, AccessToken] | None:
        value = request.headers.get("Private-Token")
        if value is None:
            header = request.headers.get("Authorization", "")
            if not header.lower().startswith("bearer "):
                return None
            value = header[7:]
        try:
            token = services.access_token_authenticate(value=value)
        except AppError as exc:
            raise exceptions.AuthenticationFailed(exc.message) from None
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class CsrfSessionAuthentication(SessionAuthentication):
    """The browser's session, with CSRF enforced on unsafe methods (DRF's behaviour)."""
