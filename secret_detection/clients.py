"""The one HTTP client for SDRS, the partner token verification service.

Every call has a timeout. Responses and transport failures become ``AppError`` subclasses
whose ``retryable`` flag the job toolkit and the refresher act on; no message carries the
token, the JWT or the response body.
"""

from __future__ import annotations

import email.utils
import functools
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from django.utils import timezone

from project import crypto
from project.errors import PermanentError, RetryableError

if TYPE_CHECKING:
    from project.models import ApplicationSetting

VERIFY_PATH = "/api/v1/token/verify"
JWT_ISSUER = "sdrs-client"
JWT_AUDIENCE = "sdrs"
JWT_LIFETIME = timedelta(hours=1)
# The job's time budget (tasks.VERIFY_JOB_TIMEOUT) must cover the slowest call.
MAX_TIMEOUT = 60.0
DEFAULT_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 3600.0


class SdrsError(Exception):
    """Mixin: what the far side answered (for the attempt's log line)."""

    upstream_status: int | None = None
    #: The request was written and no answer came (a read timeout): SDRS may have accepted
    #: it and may still call back, so it must not be sent again before the pending timeout.
    may_be_accepted: bool = False


class SdrsUnavailable(SdrsError, RetryableError):
    code = "sdrs_unavailable"


class SdrsTimeout(SdrsError, RetryableError):
    code = "sdrs_timeout"


class SdrsRateLimited(SdrsError, RetryableError):
    code = "sdrs_rate_limited"
    upstream_status = 429


class SdrsServerError(SdrsError, RetryableError):
    code = "sdrs_server_error"


class SdrsRejected(SdrsError, PermanentError):
    """400, 401, 403, 422 and anything else SDRS should never answer."""

    code = "sdrs_rejected"


class SdrsMisconfigured(PermanentError):
    code = "sdrs_not_configured"


_PERMANENT_CODES = {
    400: ("sdrs_bad_request", "SDRS refused the request as malformed (400)"),
    401: ("sdrs_auth_rejected", "SDRS rejected our credentials (401): check the signing key"),
    403: ("sdrs_auth_rejected", "SDRS refused access (403): check the signing key and its grants"),
    404: ("sdrs_not_found", "SDRS has no verify endpoint at this URL (404): check the SDRS URL"),
    422: ("sdrs_unprocessable", "SDRS cannot verify this token (422)"),
}


@dataclass(frozen=True)
class SdrsConfig:
    url: str
    signing_key: str
    timeout: float

    @classmethod
    def from_settings(cls, row: ApplicationSetting) -> SdrsConfig:
        """The configuration in force: the environment's deployment facts over the row's values."""
        sdrs = row.effective_sdrs()
        return cls(url=sdrs.url.rstrip("/"), signing_key=sdrs.signing_key, timeout=sdrs.timeout)

    @classmethod
    def current(cls) -> SdrsConfig:
        from project.models import ApplicationSetting

        return cls.from_settings(ApplicationSetting.current())


@functools.lru_cache(maxsize=4)
def _private_key(pem: str) -> rsa.RSAPrivateKey:
    try:
        return crypto.rsa_private_key_load(pem)
    except ValueError as exc:
        raise SdrsMisconfigured(f"The SDRS signing key is unusable: {exc}", code="signing_key_invalid") from None


def jwt_encode(*, signing_key: str, user_id: int, project_id: int, finding_id: int) -> str:
    """The short-lived RS256 token that authenticates one verify request."""
    now = timezone.now()
    claims = {
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "sub": f"user:{user_id}",
        "iat": int(now.timestamp()),
        "exp": int((now + JWT_LIFETIME).timestamp()),
        "jti": uuid.uuid4().hex,
        "project_id": project_id,
        "finding_id": finding_id,
    }
    return jwt.encode(claims, _private_key(signing_key), algorithm="RS256")


def retry_after_seconds(value: str | None) -> float:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), bounded."""
    if not value:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        if when is None or when.tzinfo is None:
            return DEFAULT_RETRY_AFTER
        seconds = (when - timezone.now()).total_seconds()
    return min(max(seconds, 1.0), MAX_RETRY_AFTER)


_local = threading.local()


def _session(base_url: str) -> requests.Session:
    # One session per thread and SDRS URL: keep-alive to SDRS, and requests' sessions are
    # not documented as thread-safe (the refresher calls from a pool of threads).
    sessions = getattr(_local, "sessions", None)
    if sessions is None:
        sessions = _local.sessions = {}
    session = sessions.get(base_url)
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = "gitlab-jobs-sdrs-client"
        # The proxy environment (HTTPS_PROXY, NO_PROXY) is read once per session rather
        # than on every request, which costs about a millisecond of CPU each time.
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(base_url)
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        sessions[base_url] = session
    return session


def _raise_for(response: requests.Response) -> None:
    status = response.status_code
    error: SdrsError
    if status == 429:
        seconds = retry_after_seconds(response.headers.get("Retry-After"))
        error = SdrsRateLimited(f"SDRS is rate limiting (429), retry after {seconds:.0f} s", retry_after=seconds)
    elif status >= 500 or status == 408:
        error = SdrsServerError(f"SDRS failed with HTTP {status}")
        hint = response.headers.get("Retry-After")
        if hint:
            error.retry_after = retry_after_seconds(hint)
    else:
        code, message = _PERMANENT_CODES.get(status, ("sdrs_unexpected_response", f"SDRS answered HTTP {status}"))
        error = SdrsRejected(message, code=code)
    error.upstream_status = status
    raise error


@dataclass(frozen=True)
class VerifyRequest:
    token_type: str
    token_value: str
    finding_id: int
    project_id: int
    user_id: int
    callback_url: str
    request_id: str


class SdrsClient:
    def __init__(self, config: SdrsConfig) -> None:
        if not config.url:
            raise SdrsMisconfigured("no SDRS URL is configured", code="sdrs_not_configured")
        if not config.signing_key:
            raise SdrsMisconfigured("no SDRS JWT signing key is configured", code="signing_key_missing")
        _private_key(config.signing_key)
        self.config = config
        timeout = min(max(config.timeout, 0.1), MAX_TIMEOUT)
        self.timeout = (timeout, timeout)  # connect, read

    def _post(self, body: dict[str, Any], *, token: str, request_id: str) -> requests.Response:
        try:
            return _session(self.config.url).post(
                f"{self.config.url}{VERIFY_PATH}",
                json=body,
                headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id, "Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.ConnectTimeout as exc:
            # No connection, so nothing was written: safe to send again.
            raise SdrsTimeout(f"SDRS did not answer within {self.timeout[0]:g} s ({exc.__class__.__name__})") from None
        except requests.Timeout as exc:
            # The request was written (a read timeout): SDRS may hold it and call back.
            error = SdrsTimeout(f"SDRS did not answer within {self.timeout[1]:g} s ({exc.__class__.__name__})")
            error.may_be_accepted = True
            raise error from None
        except requests.ConnectionError as exc:
            raise SdrsUnavailable(f"SDRS is unreachable ({exc.__class__.__name__})") from None
        except requests.RequestException as exc:
            # Invalid URL, too many redirects...: configuration, not a transient fault.
            raise SdrsMisconfigured(
                f"the request to SDRS could not be made ({exc.__class__.__name__}): check the SDRS URL",
                code="sdrs_not_configured",
            ) from None

    def verify(self, request: VerifyRequest) -> int:
        """Send one token for verification; returns the HTTP status (202) when accepted."""
        token = jwt_encode(
            signing_key=self.config.signing_key,
            user_id=request.user_id,
            project_id=request.project_id,
            finding_id=request.finding_id,
        )
        body = {
            "token_type": request.token_type,
            "token_value": request.token_value,
            "finding_id": request.finding_id,
            "callback_url": request.callback_url,
        }
        response = self._post(body, token=token, request_id=request.request_id)
        response.close()
        if response.status_code == 202:
            return 202
        _raise_for(response)
        return response.status_code  # unreachable: _raise_for always raises

    def probe(self, *, user_id: int, callback_url: str, request_id: str) -> int:
        """A verify request that carries no token. A working SDRS authenticates it and then
        refuses the empty body (400/422), which proves reachability and that our key is
        accepted without sending any secret. Returns the HTTP status; transport errors raise."""
        token = jwt_encode(signing_key=self.config.signing_key, user_id=user_id, project_id=0, finding_id=0)
        body = {"token_type": "connection_check", "token_value": "", "finding_id": 0, "callback_url": callback_url}
        response = self._post(body, token=token, request_id=request_id)
        response.close()
        return response.status_code
