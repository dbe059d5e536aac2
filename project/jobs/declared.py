"""The closed set of declared jobs, by name. The decorator in ``registry`` fills it; every
other module looks jobs up here, so nothing that enqueues or runs a job needs to import
the module that declares them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from project.jobs.registry import Job

REGISTRY: dict[str, Job] = {}

#: What a job's name may hold (``registry.job`` refuses others): a message names its job
#: (``djangoq.run_message``), and so do metrics labels and log lines.
JOB_NAME = re.compile(r"[\w.:-]+")


def get(name: str) -> Job | None:
    return REGISTRY.get(name)


def names() -> list[str]:
    return sorted(REGISTRY)


def lost_after_seconds(name: str) -> float:
    """Seconds without a heartbeat after which a running attempt of ``name`` is lost."""
    job = REGISTRY.get(name)
    return job.lost_after_seconds if job is not None else float(settings.JOBS_LOST_AFTER)
