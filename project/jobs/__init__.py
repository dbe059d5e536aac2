"""The job toolkit shared by every background job. See docs/jobs.md and DESIGN.md §3.

Declare a job in an app's ``tasks.py``::

    @job("exports.run", retry=RetryPolicy(setting="EXPORT_RETRY_DELAYS"), timeout="EXPORT_JOB_TIMEOUT")
    def run_export(*, export_job_id: int) -> None:
        services.export_run(export_job_id=export_job_id)

and enqueue it (after the surrounding transaction commits) with
``run_export.enqueue(export_job_id=job.pk)``. Inside a job, ``report_progress()`` and
``heartbeat()`` publish progress and raise ``JobCancelled`` once an operator cancelled
the run.

Apps use only the names below. ``JobRun``, ``current_run`` and ``control`` are loaded on
first use, because this package is imported before Django's models are ready.
"""

from typing import TYPE_CHECKING, Any

from project.errors import PermanentError, RetryableError
from project.jobs.progress import JobCancelled, heartbeat, report_progress
from project.jobs.registry import Defer, Job, RetryPolicy, Target, job

if TYPE_CHECKING:  # what __getattr__ below loads on first use, for the type checker
    from project.jobs import console, control, overview
    from project.jobs.models import JobRun
    from project.jobs.overview import Backlog, Switch, SwitchSource
    from project.jobs.runner import current_run

__all__ = [
    "Backlog",
    "Defer",
    "Job",
    "JobCancelled",
    "JobRun",
    "PermanentError",
    "RetryPolicy",
    "RetryableError",
    "Switch",
    "SwitchSource",
    "Target",
    "clusters_alive",
    "console",
    "control",
    "current_run",
    "declared_job",
    "heartbeat",
    "job",
    "overview",
    "register_backlogs",
    "register_switches",
    "report_progress",
]


def __getattr__(name: str) -> Any:
    if name == "JobRun":
        from project.jobs.models import JobRun

        return JobRun
    if name == "current_run":
        from project.jobs.runner import current_run

        return current_run
    if name in ("console", "control", "overview"):
        import importlib

        return importlib.import_module(f"project.jobs.{name}")
    if name in ("Backlog", "Switch", "SwitchSource"):
        from project.jobs import overview

        return getattr(overview, name)
    raise AttributeError(f"module 'project.jobs' has no attribute {name!r}")


def declared_job(name: str) -> Job | None:
    """The job declared under ``name``, if any (its retry policy, budget, target…)."""
    from project.jobs import declared

    return declared.get(name)


def clusters_alive(*, broker: str | None = None) -> int:
    """How many job clusters have reported within JOBS_CLUSTER_STALE_AFTER seconds (only
    those on ``broker``, ``"orm"`` or ``"redis"``, when given)."""
    from project.jobs import overview

    return sum(1 for cluster in overview.cluster_rows() if cluster.alive and broker in (None, cluster.broker))


def register_backlogs(source: Any) -> None:
    """Add a feature's backlog figures to the job console (``() -> list[Backlog]``)."""
    from project.jobs import overview

    overview.register_backlogs(source)


def register_switches(source: Any) -> None:
    """Add a feature's switches to the job console (a ``SwitchSource``)."""
    from project.jobs import overview

    overview.register_switches(source)
