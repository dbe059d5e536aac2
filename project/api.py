"""REST API plumbing: authentication, scopes, malformed input, and the one place errors
become JSON.

Error bodies are GitLab's, exactly, because GitLab clients read them (python-gitlab shows
``message``, or ``error`` when the body has one):

* ``{"message": "404 Project Not Found"}``: most errors;
* ``{"error": "page is invalid"}``: a parameter grape's validation refuses (missing, of
  the wrong type, not an allowed value, too long);
* ``{"error": "insufficient_scope", "error_description": …, "scope": "api"}``: a token
  without the needed scope (GitLab's OAuth 2 bearer-token error);
* 429: ``{"message": {"error": "This endpoint has been requested too many times…"}}`` for
  an application rate limit, ``{"message": "Retry later"}`` for too many failed token
  authentications from the client's address; both with ``Retry-After``;
* 503: ``{"message": "503 Service Unavailable"}`` with ``Retry-After`` while the database is
  unreachable, on every endpoint (the API through DRF's exception handler, everything else,
  the admin and the middleware included, through ``server_error``, the ``handler500``).

Our own stable code (``not_found``, ``invalid``, ``auth_throttled``…) travels in the
``X-Error-Code`` response header, which no GitLab client reads. ``project.schema``
documents these shapes (``Error``, ``TooManyRequests``): keep the two in step.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, parsers, permissions
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, set_rollback

from project.errors import AppError, DatabaseUnavailable, RateLimited
from project.models import AccessToken
from project.ratelimit import GITLAB_MESSAGE
from project.schema import ApiAutoSchema
from project.serializers import error_messages

logger = logging.getLogger(__name__)

READ_SCOPES = ("api", "read_api")
WRITE_SCOPES = ("api",)

INSUFFICIENT_SCOPE_DESCRIPTION = "The request requires higher privileges than provided by the access token."
#: GitLab's ValidationFailed codes that are grape's parameter validation (``{"error": …}``).
PARAMETER_ERROR_CODES = ("invalid",)


class TokenScopes(permissions.BasePermission):
    """Reads need ``api`` or ``read_api`` (or the view's ``read_scopes``); writes need ``api``."""

    message = "403 Forbidden - insufficient scope"

    def has_permission(self, request: Request, view: APIView) -> bool:
        token = request.auth
        if not isinstance(token, AccessToken):
            return True
        needed = scopes_needed(request, view)
        if token_scoped(token, needed):
            return True
        raise InsufficientScope(needed)


def scopes_needed(request: HttpRequest, view: APIView) -> tuple[str, ...]:
    """The scopes of which a token needs one for ``request`` to ``view``."""
    if request.method in permissions.SAFE_METHODS:
        return getattr(view, "read_scopes", READ_SCOPES)
    return getattr(view, "write_scopes", WRITE_SCOPES)


def token_scoped(token: AccessToken, needed: tuple[str, ...]) -> bool:
    return any(scope in token.scopes for scope in needed)


class InsufficientScope(exceptions.PermissionDenied):
    def __init__(self, needed: tuple[str, ...]) -> None:
        super().__init__("403 Forbidden - insufficient scope")
        self.needed = needed


class AuthThrottled(exceptions.Throttled):
    """Too many failed token authentications from the client's address (GitLab's
    Rack::Attack answer: "Retry later")."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait=wait)


# --- malformed input ----------------------------------------------------------------------
# A NUL byte or a lone surrogate cannot be stored in PostgreSQL text nor encoded as UTF-8:
# refused up front with a 400, as GitLab's HandleMalformedStrings middleware does, instead
# of failing deep in a query with a 500.

_MALFORMED = re.compile("[\x00\ud800-\udfff]")
#: Nesting deeper than this is not walked (Rack nests parameters 2 levels in practice).
_MAX_DEPTH = 32


class MalformedInput(exceptions.ParseError):
    """A NUL byte or broken Unicode in the path, the query string or the body."""

    def __init__(self, where: str) -> None:
        super().__init__(f"400 Bad request - {where} contains a NUL byte or malformed Unicode")


def _malformed(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return _MALFORMED.search(value) is not None
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, Mapping):
        return any(_malformed(key, depth + 1) or _malformed(item, depth + 1) for key, item in _mapping_items(value))
    if isinstance(value, list | tuple):
        return any(_malformed(item, depth + 1) for item in value)
    return False


def _mapping_items(value: Mapping) -> Iterable[tuple[Any, Any]]:
    lists = getattr(value, "lists", None)  # a QueryDict: every value of a repeated key
    return lists() if callable(lists) else value.items()


def reject_malformed(value: Any, where: str) -> None:
    """Raise ``MalformedInput`` when ``value`` (a string, or mappings and lists of them) holds
    a NUL byte or a lone surrogate."""
    if _malformed(value):
        raise MalformedInput(where)


class CleanJSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        reject_malformed(data, "the body")
        return data


class CleanFormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        reject_malformed(data, "the body")
        return data


class CleanMultiPartParser(parsers.MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type, parser_context)
        reject_malformed(parsed.data, "the body")
        names = [upload.name for upload in parsed.files.values()]  # type: ignore[union-attr]  # an upload, never []
        reject_malformed(names, "a file name")
        return parsed


class ApiView(APIView):
    """Base of every API view: authenticated, scope-checked, malformed input refused."""

    permission_classes = [permissions.IsAuthenticated, TokenScopes]
    parser_classes = [CleanJSONParser, CleanFormParser, CleanMultiPartParser]
    schema = ApiAutoSchema()

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Before authentication, as GitLab's middleware: a malformed request is a 400 for
        # everyone. The body is checked by the parsers, when a view reads it.
        reject_malformed(list(kwargs.values()), "the path")
        reject_malformed(request.query_params, "the query string")
        super().initial(request, *args, **kwargs)


# --- errors ---------------------------------------------------------------------------------


def _message(message: Any) -> dict[str, Any]:
    return {"message": message}


def error_response(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) for any exception raised while serving an API request.
    The headers carry our code as ``X-Error-Code``."""
    status, body, headers, code = _error(exc)
    return status, body, {**headers, "X-Error-Code": code}


#: ``Retry-After`` of a 503 that names no delay of its own (the database is unavailable).
RETRY_AFTER_UNAVAILABLE = 5


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc``, or the error it was raised from, is the database being unreachable
    or the connection lost: Django's ``OperationalError`` (connection refused, server
    restarting, terminated backend, a cancelled or timed-out statement) or
    ``InterfaceError`` (the connection is closed). Transient, so worth a retry."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (OperationalError, InterfaceError)):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def _error(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str], str]:
    if database_unavailable(exc):
        exc = DatabaseUnavailable()
    if isinstance(exc, RateLimited):
        return 429, _message(exc.message), {"Retry-After": str(int(exc.retry_after or 60))}, exc.code
    if isinstance(exc, AppError):
        if exc.http_status == 400 and exc.code in PARAMETER_ERROR_CODES:
            return 400, {"error": exc.message}, {}, exc.code
        if exc.http_status == 503:  # transient: always say when to come back
            retry_after = max(1, int(exc.retry_after or RETRY_AFTER_UNAVAILABLE))
            return 503, _message(exc.message), {"Retry-After": str(retry_after)}, exc.code
        return exc.http_status, _message(exc.message), {}, exc.code
    if isinstance(exc, Http404):
        return 404, _message("404 Not Found"), {}, "not_found"
    if isinstance(exc, InsufficientScope):
        body = {
            "error": "insufficient_scope",
            "error_description": INSUFFICIENT_SCOPE_DESCRIPTION,
            "scope": " ".join(exc.needed),
        }
        return 403, body, {}, "insufficient_scope"
    if isinstance(exc, (PermissionDenied, exceptions.PermissionDenied)):
        return 403, _message("403 Forbidden"), {}, "forbidden"
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return 401, _message("401 Unauthorized"), {"WWW-Authenticate": 'Bearer realm="api"'}, "unauthorized"
    if isinstance(exc, MalformedInput):
        return 400, _message(str(exc.detail)), {}, "malformed_request"
    if isinstance(exc, exceptions.ValidationError):
        # Input serializers raise ValidationFailed themselves; this is DRF's own, whose
        # detail is a structure: joined into one message, as grape joins its errors.
        return 400, {"error": ", ".join(error_messages(exc.detail))}, {}, "invalid"
    if isinstance(exc, AuthThrottled):
        wait = exc.wait  # type: ignore[attr-defined]  # set by Throttled.__init__; not in the DRF stubs
        return 429, _message("Retry later"), {"Retry-After": str(max(1, int(wait or 1)))}, "auth_throttled"
    if isinstance(exc, exceptions.Throttled):
        wait = exc.wait  # type: ignore[attr-defined]  # set by Throttled.__init__; not in the DRF stubs
        return 429, _message(GITLAB_MESSAGE), {"Retry-After": str(max(1, int(wait or 60)))}, "rate_limited"
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        return exc.status_code, _message(f"{exc.status_code} {exc.detail}"), {}, code
    return 500, _message("500 Internal Server Error"), {}, "internal_error"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    status, body, headers = _error_logged(exc)
    set_rollback()
    return Response(body, status=status, headers=headers)


def _error_logged(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    status, body, headers = error_response(exc)
    if database_unavailable(exc):
        # One line, not a traceback per request for as long as the outage lasts.
        logger.warning("API request refused: the database is unavailable", extra={"error": _first_line(exc)})
    elif status >= 500:
        logger.exception("API request failed", exc_info=exc)
    return status, body, headers


_RENDERER = JSONRenderer()


def json_answer(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> HttpResponse:
    """``body`` as an API view's ``Response`` renders it (the same bytes), for a view that
    answers without going through DRF's dispatch (``exports.views``' status poll)."""
    response = HttpResponse(_RENDERER.render(body), status=status, content_type=_RENDERER.media_type)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def exception_answer(exc: BaseException) -> HttpResponse:
    """What ``exception_handler`` answers for ``exc``, for such a view."""
    status, body, headers = _error_logged(exc)
    return json_answer(body, status=status, headers=headers)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def json_error_view(status: int, message: str, code: str):
    def view(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
        response = JsonResponse(_message(message), status=status)
        response["X-Error-Code"] = code
        return response

    return view


def server_error(request: HttpRequest) -> JsonResponse:
    """``handler500``: an exception no view handled, raised anywhere in the middleware
    (sessions, authentication, django-axes) or in a view outside the API (the admin).
    Django calls it while handling that exception, so ``sys.exc_info()`` names it. The
    database being unavailable is the 503 the API answers; anything else is a 500."""
    exc = sys.exc_info()[1]
    if exc is not None and database_unavailable(exc):
        status, body, headers = error_response(exc)
    else:
        status, body, headers = 500, _message("500 Internal Server Error"), {"X-Error-Code": "internal_error"}
    response = JsonResponse(body, status=status)
    for name, value in headers.items():
        response[name] = value
    return response
