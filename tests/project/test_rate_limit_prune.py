"""Rate-limit counters do not pile up: a schedule prunes windows that ended long ago."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from project.jobs import JobRun, runner
from project.models import RateLimitCounter
from project.ratelimit import rate_limit_hit

pytestmark = pytest.mark.django_db


def test_the_prune_is_a_declared_schedule() -> None:
    from project.jobs import declared

    assert declared.get("rate_limits.prune").cron == "*/10 * * * *"


def test_counters_stay_bounded_while_requests_keep_coming() -> None:
    start = timezone.now()
    sizes = []
    # Ten hours of traffic, 20 users a minute, the schedule running every 10 minutes.
    for minute in range(0, 600, 2):
        with time_machine.travel(start + timedelta(minutes=minute), tick=False):
            for user in range(20):
                rate_limit_hit(key=f"export:{user}", limit=1000)
            if minute % 10 == 0:
                assert runner.run_scheduled("rate_limits.prune") == "succeeded"
                sizes.append(RateLimitCounter.objects.count())
    # Two hours of one-minute windows (every other minute here) for 20 keys, plus the
    # minutes since the last prune: never the whole ten hours.
    assert max(sizes) <= 20 * (60 + 5 + 1)
    assert sizes[-1] == sizes[-2]  # flat, not growing
    last = JobRun.objects.filter(name="rate_limits.prune").latest("id")
    assert last.result["deleted"] > 0
