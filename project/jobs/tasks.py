"""The toolkit's own jobs."""

from project.jobs import recovery
from project.jobs.registry import job


@job("jobs.recover", cron="* * * * *", timeout=120)
def recover() -> dict[str, int]:
    """Retry or fail runs whose worker died; re-send lost messages."""
    return recovery.runs_recover()


@job("jobs.prune_runs", cron="45 3 * * *", timeout=900)
def prune_runs() -> dict[str, int]:
    """Delete finished runs past their retention."""
    return {"deleted": recovery.runs_prune()}
