"""Fixed-window rate limits counted in PostgreSQL, so every web worker shares them.

One ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` per hit is atomic, so concurrent
requests can never both take the last slot.
"""

from __future__ import annotations

import math
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from project.db import rows_delete_in_batches
from project.errors import RateLimited

GITLAB_MESSAGE = {"error": "This endpoint has been requested too many times. Try again later."}


def rate_limit_hit(*, key: str, limit: int, period: int = 60) -> None:
    """Count one request under ``key``; raise ``RateLimited`` past ``limit`` per ``period`` s.

    A limit of 0 means unlimited, as in GitLab's application settings.
    """
    if limit <= 0:
        return
    now = timezone.now()
    epoch = now.timestamp()
    window_start = math.floor(epoch / period) * period
    window = now - timedelta(seconds=epoch - window_start)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO rate_limit_counters (key, window_start, hits) VALUES (%s, %s, 1)
            ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_limit_counters.hits + 1
            RETURNING hits
            """,
            [key, window],
        )
        (hits,) = cursor.fetchone()
    if hits > limit:
        raise RateLimited(GITLAB_MESSAGE, retry_after=math.ceil(window_start + period - epoch))


def rate_limits_prune(*, older_than: timedelta = timedelta(hours=2), batch_size: int = 10_000) -> int:
    """Delete the counters of windows that ended long ago (the schedule ``rate_limits.prune``
    runs this every 10 minutes, so the table holds about two hours of windows at most)."""
    from project.models import RateLimitCounter

    stale = RateLimitCounter.objects.filter(window_start__lt=timezone.now() - older_than)
    return rows_delete_in_batches(stale, batch_size=batch_size)
