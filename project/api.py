"""REST API plumbing: authentication, scopes, and the one place errors become JSON.

Every API error has the shape ``{"message": ..., "error": "<code>"}``; GitLab clients read
``message``. GitLab's own bodies are kept where clients depend on them (for example the
429 body, whose ``message`` is an object). ``project.schema`` documents these shapes
(``ErrorSerializer``, ``RateLimitedSerializer``): keep the two in step.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, permissions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, set_rollback

from project.errors import AppError, RateLimited
from project.models import AccessToken
from project.serializers import error_messages

logger = logging.getLogger(__name__)

READ_SCOPES = ("api", "read_api")
WRITE_SCOPES = ("api",)


class TokenScopes(permissions.BasePermission):
    """Reads need ``api`` or ``read_api`` (or the view's ``read_scopes``); writes need ``api``."""

    message = "403 Forbidden - insufficient scope"

    def has_permission(self, request: Request, view: APIView) -> bool:
        token = request.auth
        if not isinstance(token, AccessToken):
            return True
        if request.method in permissions.SAFE_METHODS:
            needed = getattr(view, "read_scopes", READ_SCOPES)
        else:
            needed = getattr(view, "write_scopes", WRITE_SCOPES)
        if any(scope in token.scopes for scope in needed):
            return True
        raise InsufficientScope(needed)


class InsufficientScope(exceptions.PermissionDenied):
    def __init__(self, needed: tuple[str, ...]) -> None:
        super().__init__("403 Forbidden - insufficient scope")
        self.needed = needed


class ApiView(APIView):
    """Base of every API view: authenticated, scope-checked."""

    permission_classes = [permissions.IsAuthenticated, TokenScopes]


def _body(message: Any, code: str) -> dict[str, Any]:
    return {"message": message, "error": code}


def error_response(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception raised while serving an API request."""
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(int(exc.retry_after or 60))}
        return 429, {"message": exc.message}, headers
    if isinstance(exc, AppError):
        return exc.http_status, _body(exc.message, exc.code), {}
    if isinstance(exc, Http404):
        return 404, _body("404 Not Found", "not_found"), {}
    if isinstance(exc, InsufficientScope):
        return 403, {**_body(str(exc.detail), "insufficient_scope"), "scope": " ".join(exc.needed)}, {}
    if isinstance(exc, (PermissionDenied, exceptions.PermissionDenied)):
        return 403, _body("403 Forbidden", "forbidden"), {}
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return 401, _body("401 Unauthorized", "unauthorized"), {"WWW-Authenticate": 'Bearer realm="api"'}
    if isinstance(exc, exceptions.ValidationError):
        # Input serializers raise ValidationFailed themselves; this is DRF's own, whose
        # detail is a structure: joined into one message, so ``message`` is always a string.
        return 400, _body(", ".join(error_messages(exc.detail)), "invalid"), {}
    if isinstance(exc, exceptions.Throttled):
        return 429, {"message": {"error": str(exc.detail)}}, {}
    if isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "error"
        return exc.status_code, _body(f"{exc.status_code} {exc.detail}", code), {}
    return 500, _body("500 Internal Server Error", "internal_error"), {}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    status, body, headers = error_response(exc)
    if status >= 500:
        logger.exception("API request failed", exc_info=exc)
    set_rollback()
    return Response(body, status=status, headers=headers)


def json_error_view(status: int, message: str, code: str):
    def view(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
        return JsonResponse(_body(message, code), status=status)

    return view
