"""One error hierarchy for the whole product.

Every error the product raises on purpose is an ``AppError``: it carries a stable ``code``
(for logs, metrics and the API's ``error`` key), an HTTP status, and whether retrying the
same work could succeed. The API renders these in one place (``project.api``); the job
toolkit reads ``retryable`` to decide between a retry and a failure.
"""

from __future__ import annotations


class AppError(Exception):
    code: str = "error"
    http_status: int = 400
    #: True: the same work may succeed later. False: it will not. None: not a job concern.
    retryable: bool | None = None

    def __init__(
        self,
        message: str | dict | None = None,
        *,
        code: str | None = None,
        http_status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message if message is not None else self.default_message()
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        if retryable is not None:
            self.retryable = retryable
        #: A hint from the far side (``Retry-After``) overriding the policy's next delay.
        self.retry_after = retry_after
        super().__init__(self.message if isinstance(self.message, str) else str(self.message))

    def default_message(self) -> str:
        return self.code.replace("_", " ")


class RetryableError(AppError):
    """Transient: network failures, timeouts, 5xx, 429, a lost database connection."""

    code = "retryable"
    http_status = 503
    retryable = True


class DatabaseUnavailable(RetryableError):
    """PostgreSQL cannot be reached or dropped the connection (``OperationalError`` or
    ``InterfaceError``): every endpoint answers 503 with ``Retry-After``
    (``project.api.error_response``), so that a client, SDRS' callback included, sends
    its request again instead of losing it."""

    code = "database_unavailable"
    http_status = 503

    def default_message(self) -> str:
        return "503 Service Unavailable"


class PermanentError(AppError):
    """Will fail again: authentication, configuration, invalid input."""

    code = "permanent"
    http_status = 422
    retryable = False


class ValidationFailed(PermanentError):
    code = "invalid"
    http_status = 400


class NotFound(PermanentError):
    code = "not_found"
    http_status = 404


class Forbidden(PermanentError):
    code = "forbidden"
    http_status = 403


class Unauthorized(PermanentError):
    code = "unauthorized"
    http_status = 401


class Conflict(PermanentError):
    code = "conflict"
    http_status = 409


class RateLimited(AppError):
    code = "rate_limited"
    http_status = 429
    retryable = True
