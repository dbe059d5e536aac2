"""What every direct partner client shares: the verdict it returns, the errors it raises,
and one HTTP call with a timeout and the metrics around it.

A client answers synchronously: ``verify(value)`` returns a ``Verdict`` or raises one of
the errors below. No message, log line or metric label carries the token value: errors
name the partner, the HTTP status and a code.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import requests
from django.conf import settings

from project.errors import PermanentError, RetryableError
from secret_detection import metrics


@dataclass(frozen=True)
class Verdict:
    status: str  # active, inactive, unknown (TokenStatus values)
    #: Why the answer is unknown (``format_mismatch``, ``partner_unexpected_status``...);
    #: empty for a clear verdict.
    code: str = ""
    http_status: int | None = None


class PartnerError:
    """Mixin: which partner and what it answered, for the attempt's log line."""

    partner: str = ""
    upstream_status: int | None = None


class PartnerRateLimited(PartnerError, RetryableError):
    """The partner said 429 (or AWS's 503 throttling): try again after a pause."""

    code = "partner_rate_limited"


class PartnerNetworkError(PartnerError, RetryableError):
    """Refused, reset, timed out, or a 5xx that is the partner's outage: retried."""

    code = "partner_network_error"


class PartnerResponseError(PartnerError, PermanentError):
    """An answer we cannot read (a body that does not parse): unknown at once, not retried."""

    code = "partner_response_invalid"


_E = TypeVar("_E", PartnerRateLimited, PartnerNetworkError, PartnerResponseError)


def _error(cls: type[_E], partner: str, message: str, status: int | None, **kwargs: Any) -> _E:
    error = cls(message, **kwargs)
    error.partner = partner
    error.upstream_status = status
    return error


class PartnerClient:
    """One partner's API. Subclasses set ``partner``, ``url_setting`` and implement
    ``matches`` (the format check: no HTTP call for a value that cannot be a token) and
    ``_call`` / ``_interpret``."""

    partner: ClassVar[str]
    url_setting: ClassVar[str]
    #: A value of the right format that cannot exist, for the admin's "Check connection".
    probe_value: ClassVar[str]

    def __init__(self, session: requests.Session | None = None, timeout: float | None = None) -> None:
        self.session = session or _session(self.url)
        self.timeout = float(timeout if timeout is not None else settings.PARTNER_TIMEOUT)

    @property
    def url(self) -> str:
        return str(getattr(settings, self.url_setting))

    def matches(self, value: str) -> bool:
        raise NotImplementedError

    def _call(self, value: str) -> requests.Response:
        raise NotImplementedError

    def _interpret(self, response: requests.Response) -> Verdict:
        raise NotImplementedError

    def verify(self, value: str) -> Verdict:
        """The partner's verdict on ``value``; a value of the wrong format is unknown
        (``format_mismatch``) without any call."""
        if not self.matches(value):
            metrics.PARTNER_REQUESTS.labels(partner=self.partner, outcome="format_mismatch").inc()
            return Verdict("unknown", code="format_mismatch")
        started = time.perf_counter()
        try:
            response = self._call(value)
        # ``from None``: requests' exceptions quote the URL, and GCP's carries the token in it.
        except requests.Timeout as exc:
            self._network_error(exc)
            timeout = _error(
                PartnerNetworkError, self.partner, f"{self.partner}: timed out", None, code="partner_timeout"
            )
            raise timeout from None
        except requests.RequestException as exc:
            self._network_error(exc)
            raise _error(PartnerNetworkError, self.partner, f"{self.partner}: {type(exc).__name__}", None) from None
        finally:
            metrics.PARTNER_API_SECONDS.labels(partner=self.partner).observe(time.perf_counter() - started)
        try:
            verdict = self._interpret(response)
        except (PartnerRateLimited, PartnerNetworkError, PartnerResponseError) as exc:
            outcome = (
                "rate_limited"
                if isinstance(exc, PartnerRateLimited)
                else "server_error"
                if isinstance(exc, PartnerNetworkError)
                else "response_error"
            )
            metrics.PARTNER_REQUESTS.labels(partner=self.partner, outcome=outcome).inc()
            if isinstance(exc, PartnerRateLimited):
                metrics.RATE_LIMIT_HITS.labels(limit=f"{self.partner}_429").inc()
            if isinstance(exc, PartnerNetworkError):
                metrics.PARTNER_NETWORK_ERRORS.labels(
                    partner=self.partner, error_class=f"http_{exc.upstream_status}"
                ).inc()
            raise
        metrics.PARTNER_REQUESTS.labels(partner=self.partner, outcome=verdict.status).inc()
        return verdict

    def _network_error(self, exc: BaseException) -> None:
        metrics.PARTNER_REQUESTS.labels(partner=self.partner, outcome="network_error").inc()
        metrics.PARTNER_NETWORK_ERRORS.labels(partner=self.partner, error_class=type(exc).__name__).inc()

    # Helpers for the subclasses' mappings.
    def rate_limited(self, response: requests.Response) -> PartnerRateLimited:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return _error(
            PartnerRateLimited,
            self.partner,
            f"{self.partner}: rate limited ({response.status_code})",
            response.status_code,
            retry_after=retry_after,
        )

    def server_error(self, response: requests.Response) -> PartnerNetworkError:
        return _error(
            PartnerNetworkError,
            self.partner,
            f"{self.partner}: server error ({response.status_code})",
            response.status_code,
            code="partner_server_error",
        )

    def response_error(self, response: requests.Response, why: str) -> PartnerResponseError:
        return _error(
            PartnerResponseError, self.partner, f"{self.partner}: {why} ({response.status_code})", response.status_code
        )

    def unexpected(self, response: requests.Response) -> Verdict:
        return Verdict("unknown", code=f"partner_http_{response.status_code}", http_status=response.status_code)


class _NoRedirects(requests.Session):
    """A partner's redirect is answered, never followed: following it would send the token
    (in a header requests does not strip, such as Postman's ``X-API-Key``, or in a POST's
    body) to whatever host it names. The 3xx reaches the client's mapping, which calls it
    unknown."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False
        return super().request(*args, **kwargs)


_local = threading.local()


def _session(url: str) -> requests.Session:
    """One session per thread and partner URL: keep-alive to the partner (a connection and,
    for TLS, a handshake saved per token), and requests' sessions are not documented as
    thread-safe. No SSRF guard: the URL is the operator's setting, not user input."""
    sessions = getattr(_local, "sessions", None)
    if sessions is None:
        sessions = _local.sessions = {}
    session = sessions.get(url)
    if session is None:
        session = _NoRedirects()
        session.headers["User-Agent"] = "gitlab-jobs-partner-verification"
        # The proxy environment (HTTPS_PROXY, NO_PROXY) applies; read once per session
        # rather than on every request (about a millisecond of CPU each time).
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(url)
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        sessions[url] = session
    return session


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def json_body(client: PartnerClient, response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise client.response_error(response, "the body is not JSON") from None
