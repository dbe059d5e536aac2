"""The job bench/faults.py runs (``JOBS_EXTRA_MODULES=bench._fault_jobs``)."""

from __future__ import annotations

import time

from project.jobs import RetryPolicy, current_run, job


@job("bench.sleep", retry=RetryPolicy(delays=(0,)), timeout=120)
def sleep(*, seconds: float, every_attempt: bool = False) -> None:
    """Sleeps ``seconds`` on its first attempt (on every one with ``every_attempt``)."""
    if every_attempt or current_run().attempt == 1:
        time.sleep(seconds)
