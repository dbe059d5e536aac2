"""Helpers for tests of code that runs under the toolkit (the apps' test suites use these
rather than the toolkit's internals)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from project.jobs import pace, progress, queue, registry

if TYPE_CHECKING:
    from project.jobs.models import JobRun


def poll_controls() -> None:
    """Do the watcher's round for the run executing in this thread, now and on this
    thread's connection: publish its progress and take in a cancel request. Tests that
    run a job inline, inside a transaction the watcher's own connection cannot see, call
    this where the watcher would have noticed."""
    watch = progress.current_watch()
    if watch is not None:
        progress.check(watch)


def progress_report() -> dict[str, Any] | None:
    """The latest ``report_progress()`` of the run executing in this thread."""
    watch = progress.current_watch()
    return watch.report if watch is not None else None


def recovery_sweep() -> dict[str, int]:
    """Run the toolkit's recovery sweep (``jobs.recover``) now, in this process."""
    from project.jobs.recovery import runs_recover

    return runs_recover()


def run_is_lost(run: JobRun) -> bool:
    """True once the run's worker has been silent for longer than its job's threshold."""
    from project.jobs.runner import is_lost

    return is_lost(run)


def run_times_forget() -> None:
    """Forget how long every job's runs took in this process (``pace``): a pull here packs
    runs of no job while workers are idle until runs of it are executed again."""
    pace.forget()


@contextlib.contextmanager
def messages_held() -> Iterator[None]:
    """Record runs (and their retries) without sending any message to a broker: the test
    executes them itself, and no cluster another test started can take them."""
    queue._held += 1
    try:
        yield
    finally:
        queue._held -= 1


def run_inline(job: registry.Job | str, *, attempt: int = 1, **kwargs: Any) -> tuple[str, Any]:
    """Execute one attempt of a job here, through the runner (claim, context, outcome,
    failure hook), as a worker would: ``attempt`` is the attempt number the job sees.
    Returns the outcome and the run as it ended."""
    from project.jobs.models import JobRun
    from project.jobs.runner import execute

    declared = registry.get(job) if isinstance(job, str) else job
    if declared is None:
        raise LookupError(f"no job is registered as {job!r}")
    run = JobRun.objects.create(
        name=declared.name,
        kwargs=kwargs,
        attempt=attempt,
        max_attempts=declared.retry.max_attempts,
        target_id=declared.target_id(kwargs),
    )
    with messages_held():
        outcome = execute(run.pk, attempt)
    run.refresh_from_db()
    return outcome, run
