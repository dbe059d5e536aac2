"""Job entry points of the shared core."""

from __future__ import annotations

from project import ratelimit
from project.jobs import job


@job("rate_limits.prune", cron="*/10 * * * *", timeout=300)
def prune_rate_limits() -> dict:
    """Delete rate-limit counters of windows that ended over two hours ago."""
    return {"deleted": ratelimit.rate_limits_prune()}
