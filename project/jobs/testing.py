"""Helpers for tests of code that runs under the toolkit (the apps' test suites use these
rather than the toolkit's internals)."""

from __future__ import annotations

from project.jobs import progress


def poll_controls() -> None:
    """Do the watcher's round for the run executing in this thread, now and on this
    thread's connection: publish its progress and take in a cancel request. Tests that
    run a job inline, inside a transaction the watcher's own connection cannot see, call
    this where the watcher would have noticed."""
    watch = progress.current_watch()
    if watch is not None:
        progress.check(watch)


def progress_report() -> dict | None:
    """The latest ``report_progress()`` of the run executing in this thread."""
    watch = progress.current_watch()
    return watch.report if watch is not None else None


def recovery_sweep() -> dict[str, int]:
    """Run the toolkit's recovery sweep (``jobs.recover``) now, in this process."""
    from project.jobs.recovery import runs_recover

    return runs_recover()


def run_is_lost(run) -> bool:
    """True once the run's worker has been silent for longer than its job's threshold."""
    from project.jobs.runner import is_lost

    return is_lost(run)
