from __future__ import annotations

import ipaddress
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from project import context


class RequestIdMiddleware:
    """Takes ``X-Request-ID`` from the request (or makes one), binds it to the log context
    for the request's duration, and echoes it in the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = context.clean_request_id(request.headers.get("X-Request-ID"))
        request.request_id = request_id  # type: ignore[attr-defined]  # our attribute, for views; HttpRequest declares no such field
        with context.bind(request_id=request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


def client_address(request: HttpRequest) -> str | None:
    """The client's IP address: ``REMOTE_ADDR``, or, behind ``TRUSTED_PROXY_COUNT`` reverse
    proxies that each append the address they received from to ``X-Forwarded-For``, the
    entry that many places from its end (the entries before it are the client's to forge).

    The one answer for every per-address limit: failed API authentications and the admin's
    login lockout (django-axes' ``AXES_CLIENT_IP_CALLABLE``). None when the server did not
    say (a request made up in code).
    """
    remote = request.META.get("REMOTE_ADDR") or None
    count = getattr(settings, "TRUSTED_PROXY_COUNT", 0)
    if count <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if len(forwarded) < count:
        return remote
    candidate = forwarded[-count]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote


# --- response headers -------------------------------------------------------------------------

#: The admin and the job console load only our own scripts and styles. Inline ``style=``
#: attributes (the console's badges set a colour variable) need 'unsafe-inline' for styles;
#: scripts stay strictly local.
DEFAULT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: JSON answers load nothing: nothing may run or be framed in their name.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
#: The API docs page (Redoc from our static files) starts Redoc with an inline script and
#: runs its search in a worker made from a blob.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
_NO_STORE_PREFIXES = ("/api/", "/metrics")


class SecurityHeadersMiddleware:
    """``Content-Security-Policy`` on every response (``CONTENT_SECURITY_POLICY`` replaces
    the policy of the HTML pages), and ``Cache-Control: no-store`` on the API's answers and
    ``/metrics``, which may carry private data and must not be kept by a shared cache."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.html_policy = getattr(settings, "CONTENT_SECURITY_POLICY", None) or DEFAULT_CSP

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        path = request.path_info
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = self.policy(path)
        if path.startswith(_NO_STORE_PREFIXES) and "Cache-Control" not in response:
            response["Cache-Control"] = "no-store"
        return response

    def policy(self, path: str) -> str:
        if path.startswith("/api/docs/"):
            return DOCS_CSP
        if path.startswith("/api/"):
            return API_CSP
        return self.html_policy
