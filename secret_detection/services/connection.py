"""The admin's "check connection": can we reach SDRS, and does it accept our signed JWT?
And the circuit breaker's half-open probe, the same request sent while the circuit is open."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from project.errors import AppError
from project.models import ApplicationSetting
from secret_detection.clients import SdrsClient, SdrsConfig, SdrsMisconfigured, SdrsTimeout, SdrsUnavailable
from secret_detection.services import breaker
from secret_detection.services.verification import callback_url

logger = logging.getLogger(__name__)


@dataclass
class ConnectionCheck:
    #: reachable, auth_rejected, misconfigured, unreachable, timeout, rate_limited, server_error, unexpected
    result: str
    message: str
    http_status: int | None = None
    duration_ms: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result in ("reachable", "rate_limited")


_BY_STATUS = {
    400: ("reachable", "SDRS is reachable and accepted our signed token (it refused the empty probe, as expected)."),
    422: ("reachable", "SDRS is reachable and accepted our signed token (it refused the empty probe, as expected)."),
    202: ("reachable", "SDRS is reachable and accepted our signed token."),
    401: (
        "auth_rejected",
        "SDRS is reachable but rejected our JWT: the signing key does not match the key SDRS trusts.",
    ),
    403: ("auth_rejected", "SDRS is reachable but refused access: the signing key is not allowed to verify tokens."),
    404: ("misconfigured", "Something answers at the SDRS URL, but it has no /api/v1/token/verify: check the URL."),
    405: ("misconfigured", "Something answers at the SDRS URL, but not SDRS's verify endpoint: check the URL."),
    429: ("rate_limited", "SDRS is reachable but rate limiting us right now; try again later."),
}


def sdrs_connection_check(*, user_id: int) -> ConnectionCheck:
    """Probe SDRS with a signed request that carries no token (nothing secret is sent)."""
    row = ApplicationSetting.current()
    warnings = []
    if not row.sdrs_enabled:
        warnings.append("Verification is disabled: no token is sent until SDRS is enabled.")
    if not row.effective_sdrs().callback_secret:
        warnings.append("No callback secret is set: every result SDRS calls back with will be refused (401).")
    started = time.perf_counter()
    try:
        client = SdrsClient(SdrsConfig.current())
        status = client.probe(user_id=user_id, callback_url=callback_url(), request_id=uuid.uuid4().hex)
    except SdrsMisconfigured as exc:
        return ConnectionCheck("misconfigured", f"SDRS is misconfigured: {exc.message}.", warnings=warnings)
    except SdrsTimeout as exc:
        return ConnectionCheck("timeout", f"{exc.message}.", warnings=warnings)
    except SdrsUnavailable as exc:
        return ConnectionCheck("unreachable", f"{exc.message} at {row.effective_sdrs().url}.", warnings=warnings)
    except AppError as exc:
        return ConnectionCheck("unexpected", str(exc), warnings=warnings)
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    if status in _BY_STATUS:
        result, message = _BY_STATUS[status]
    elif status >= 500:
        result, message = "server_error", "SDRS is reachable but failing (a server error): retries will wait for it."
    else:
        result, message = "unexpected", "SDRS answered in an unexpected way: check the URL."
    return ConnectionCheck(
        result, f"{message} (HTTP {status}, {elapsed:g} ms)", http_status=status, duration_ms=elapsed, warnings=warnings
    )


def sdrs_probe() -> dict[str, str]:
    """The half-open state of the circuit breaker: while the circuit is open, send one
    verify request that carries no token. Any answer but a 5xx means SDRS is back: the
    circuit closes and the findings it parked are made due at once
    (``breaker.breaker_record_success``). Otherwise the next probe is queued
    SDRS_PROBE_INTERVAL seconds later. With the circuit closed it sends nothing."""
    if not breaker.breaker_is_open():
        return {"circuit": "closed"}
    row = ApplicationSetting.current()
    if not row.sdrs_enabled:
        # Nothing is sent while verification is off; the schedule looks again.
        return {"circuit": "open", "probe": "skipped: verification_disabled"}
    try:
        client = SdrsClient(SdrsConfig.from_settings(row))
        status = client.probe(user_id=0, callback_url=callback_url(), request_id=uuid.uuid4().hex)
    except SdrsMisconfigured as exc:
        breaker.breaker_probe_recorded(result=exc.code)
        return {"circuit": "open", "probe": exc.code}
    except AppError as exc:
        result = exc.code
    else:
        result = f"http_{status}"
        if status < 500:
            breaker.breaker_probe_recorded(result=result)
            breaker.breaker_record_success()
            logger.info("SDRS probe: answered", extra={"http_status": status})
            return {"circuit": "closed", "probe": result}
    breaker.breaker_probe_recorded(result=result)
    breaker.breaker_probe_later()
    logger.info("SDRS probe: still unavailable", extra={"error_code": result})
    return {"circuit": "open", "probe": result}
