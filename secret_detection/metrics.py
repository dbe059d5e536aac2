"""Secret detection metrics. Labels are closed sets; no token, fingerprint or id."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

FINDINGS_IMPORTED = Counter("secret_detection_findings_imported_total", "Findings created by report imports.")
VERIFICATION_REQUESTS = Counter(
    "secret_detection_verification_requests_total",
    "Verification requests sent to SDRS, by partner and outcome (accepted, retryable, permanent).",
    ["partner", "outcome"],
)
SDRS_REQUEST_SECONDS = Histogram(
    "secret_detection_sdrs_request_seconds",
    "Duration of verification requests to SDRS.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CALLBACKS = Counter(
    "secret_detection_callbacks_total",
    "SDRS callbacks by result (applied, duplicate, stale, invalid, not_found, or why it was refused).",
    ["result"],
)
REFRESH_OUTCOMES = (
    "claimed",
    "accepted",
    "failed",
    "rate_limited",
    "skipped_paused",
    "skipped_busy",
    "no_verifier",
    "local_active",
    "local_inactive",
    "direct_enqueued",
    "error",
)
REFRESH_ROWS = Counter(
    "secret_detection_refresh_rows_total", "Token statuses handled by the refresher, by outcome.", ["outcome"]
)

CIRCUIT_CHANGES = Counter(
    "secret_detection_sdrs_circuit_changes_total", "The SDRS circuit breaker opening and closing.", ["to"]
)
LOST_CALLBACKS = Counter(
    "secret_detection_callbacks_lost_total",
    "Pending verifications sent again because a callback outage may have lost their callback.",
)


def token_status_gauges() -> Iterable[Metric]:
    from django.db.models import Count, Min
    from django.utils import timezone

    from secret_detection.models import FindingTokenStatus, TokenStatus

    statuses = GaugeMetricFamily("secret_detection_token_statuses", "Token statuses by status.", labels=["status"])
    counts = dict(FindingTokenStatus.objects.values_list("status").annotate(n=Count("pk")))
    for status in TokenStatus.values:
        statuses.add_metric([status], counts.get(status, 0))
    yield statuses
    now = timezone.now()
    oldest = FindingTokenStatus.objects.filter(status=TokenStatus.PENDING).aggregate(first=Min("pending_since"))
    pending = GaugeMetricFamily(
        "secret_detection_oldest_pending_seconds", "Age of the oldest pending verification (0 when none)."
    )
    pending.add_metric([], (now - oldest["first"]).total_seconds() if oldest["first"] else 0)
    yield pending
    due = GaugeMetricFamily("secret_detection_refresh_due", "Token statuses due for a refresh now.")
    due.add_metric([], FindingTokenStatus.objects.filter(next_refresh_at__lte=now).count())
    yield due


# Direct partner verification (secret_detection.partners). Labels: the partner's short
# name, a closed outcome set, an exception class name or ``http_<status>``, a rate-limit key.
PARTNER_API_SECONDS = Histogram(
    "secret_detection_partner_api_seconds",
    "Duration of calls to a partner's API.",
    ["partner"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PARTNER_REQUESTS = Counter(
    "secret_detection_partner_requests_total",
    "Direct verifications by partner and outcome (active, inactive, unknown, format_mismatch, "
    "rate_limited, server_error, network_error, response_error).",
    ["partner", "outcome"],
)
PARTNER_NETWORK_ERRORS = Counter(
    "secret_detection_partner_network_errors_total",
    "Network errors calling a partner's API, by error class (exception name or http_<5xx>).",
    ["partner", "error_class"],
)
RATE_LIMIT_HITS = Counter(
    "secret_detection_rate_limit_hits_total",
    "Rate limits met by direct verification: ours (partner_<name>_api) or the partner's (<name>_429).",
    ["limit"],
)
