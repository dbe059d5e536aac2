"""System checks: the refresher's time budget must outlast its interval."""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.core import checks


def _interval_seconds(cron: str) -> float | None:
    from croniter import croniter

    try:
        schedule = croniter(cron, datetime(2025, 1, 1, tzinfo=UTC))
    except (ValueError, KeyError):
        return None
    first = schedule.get_next(datetime)
    return (schedule.get_next(datetime) - first).total_seconds()


def refresh_tick_budget(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    interval = _interval_seconds(settings.TOKEN_REFRESH_CRON)
    if interval is None:
        return [
            checks.Error(f"TOKEN_REFRESH_CRON={settings.TOKEN_REFRESH_CRON!r} is not a cron expression", id="sd.E001")
        ]
    if interval >= settings.TOKEN_REFRESH_TICK_TIMEOUT:
        # A tick slower than its interval must not be killed just because the next one is
        # due: the next one waits for the lock and returns.
        return [
            checks.Error(
                f"TOKEN_REFRESH_TICK_TIMEOUT ({settings.TOKEN_REFRESH_TICK_TIMEOUT} s) must be longer than the "
                f"interval of TOKEN_REFRESH_CRON ({interval:g} s)",
                id="sd.E002",
            )
        ]
    return []


def register() -> None:
    checks.register(refresh_tick_budget, "secret_detection")
