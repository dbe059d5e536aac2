"""The one door for an operator's controls: cancel, retry now, re-run, pause, resume, and
run a schedule now.

The job console, the admin's list and detail actions and the ``jobs_control`` command all
call these functions, so a control behaves the same wherever it is used. Each one takes
the run's row lock or makes a conditional UPDATE, so a run that changed state meanwhile
is left alone, and the caller gets an ``AppError`` whose message says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction

from project.errors import Conflict, NotFound
from project.jobs import registry, transitions
from project.jobs.models import JobPause, JobRun

if TYPE_CHECKING:
    from project.jobs.overview import Switch

logger = logging.getLogger("project.jobs")

Status = JobRun.Status


@dataclass(frozen=True)
class Outcome:
    """What a control did, in a sentence for the operator."""

    message: str
    run: JobRun | None = None


def _locked(run_id: int) -> JobRun:
    run = JobRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None:
        raise NotFound(f"Run #{run_id} does not exist.", code="run_missing")
    return run


def _job(name: str) -> registry.Job:
    job = registry.get(name)
    if job is None:
        raise NotFound(f"No job is registered as {name!r}.", code="unknown_job")
    return job


def run_cancel(*, run_id: int, by: str) -> Outcome:
    """Cancel a queued run (a retry waiting included): it ends ``cancelled`` at once. Ask a
    running one to stop: it ends ``cancelled`` at its next heartbeat or progress report.
    Either way the job's failure hook moves its record to a final state."""
    with transaction.atomic():
        run = _locked(run_id)
        if run.status == Status.QUEUED:
            transitions.finish(
                run,
                registry.get(run.name),
                status=Status.CANCELLED,
                code="cancelled",
                message=f"cancelled by {by} before attempt {run.attempt} started",
                statuses=(Status.QUEUED,),
            )
            outcome = Outcome(f"Run #{run.pk} ({run.name}) was cancelled.", run)
        elif run.status == Status.RUNNING:
            if not transitions.cancel_request(run, by=by):
                raise Conflict(f"Run #{run.pk} is already being cancelled.", code="cancel_pending")
            outcome = Outcome(f"Run #{run.pk} ({run.name}) was asked to stop; it ends at its next heartbeat.", run)
        else:
            raise Conflict(f"Run #{run.pk} already {run.status}; there is nothing to cancel.", code="run_finished")
    logger.warning("run cancel by %s: %s", by, outcome.message, extra={"run_id": run_id, "job": run.name})
    return outcome


def run_retry_now(*, run_id: int, by: str) -> Outcome:
    """Start a queued run (a retry waiting for its delay, or a run waiting for a slot)
    now instead of at its due time."""
    with transaction.atomic():
        run = _locked(run_id)
        if run.status != Status.QUEUED:
            raise Conflict(f"Run #{run.pk} is {run.status}, not waiting; nothing to retry now.", code="run_not_queued")
        if JobPause.objects.filter(name=run.name).exists():
            raise Conflict(f"{run.name} is paused: resume it first.", code="job_paused")
        transitions.retry_now(run)
    logger.info("run retried now by %s", by, extra={"run_id": run_id, "job": run.name})
    return Outcome(f"Run #{run.pk} ({run.name}) starts attempt {run.attempt} now.", run)


def run_rerun(*, run_id: int, by: str) -> Outcome:
    """Do a finished run's work again, as its job declares: the same arguments again, or
    the job's own re-run (an export's re-run is a new export for the same project and
    user). Jobs that cannot be re-run refuse."""
    run = JobRun.objects.filter(pk=run_id).first()
    if run is None:
        raise NotFound(f"Run #{run_id} does not exist.", code="run_missing")
    job = _job(run.name)
    if not job.rerunnable:
        raise Conflict(f"{run.name} cannot be re-run.", code="rerun_not_allowed")
    if run.status not in JobRun.TERMINAL:
        raise Conflict(f"Run #{run.pk} is still {run.status}: cancel it or let it finish first.", code="run_active")
    with transaction.atomic():
        new = job.rerun(run, by) if callable(job.rerun) else job.enqueue(**run.kwargs)
    logger.info("run re-run by %s", by, extra={"run_id": run_id, "new_run_id": new.pk, "job": run.name})
    return Outcome(f"Run #{run.pk} ({run.name}) was re-run as run #{new.pk}.", new)


def job_pause(*, name: str, by: str, reason: str = "") -> Outcome:
    """Pause a job: its queued runs stay queued, attempts unchanged, until the resume.
    A running attempt finishes (cancel it to stop it)."""
    _job(name)
    try:
        with transaction.atomic():
            JobPause.objects.create(name=name, paused_by=by[:150], reason=reason[:300])
    except IntegrityError:
        raise Conflict(f"{name} is already paused.", code="job_paused") from None
    logger.warning("job paused by %s", by, extra={"job": name})
    return Outcome(f"{name} is paused: its runs wait until it is resumed.")


def job_resume(*, name: str, by: str) -> Outcome:
    """Resume a paused job and send every run that waited, at its own due time."""
    with transaction.atomic():
        deleted, _ = JobPause.objects.filter(name=name).delete()
        if not deleted:
            raise Conflict(f"{name} is not paused.", code="job_not_paused")
        waiting = list(JobRun.objects.select_for_update().filter(name=name, status=Status.QUEUED))
        transitions.repush(waiting)
    logger.warning("job resumed by %s", by, extra={"job": name, "runs": len(waiting)})
    return Outcome(f"{name} is resumed: {len(waiting)} waiting run(s) sent to the workers.")


def schedule_run_now(*, name: str, by: str) -> Outcome:
    """Run a scheduled job now, outside its schedule."""
    job = _job(name)
    if not job.cron:
        raise Conflict(f"{name} has no schedule.", code="not_scheduled")
    if JobPause.objects.filter(name=name).exists():
        raise Conflict(f"{name} is paused: resume it first.", code="job_paused")
    with transaction.atomic():
        run = job.enqueue()
    logger.info("schedule run now by %s", by, extra={"job": name, "run_id": run.pk})
    return Outcome(f"{name} runs now as run #{run.pk}.", run)


def pauses() -> dict[str, JobPause]:
    return {pause.name: pause for pause in JobPause.objects.all()}


def pause_switches() -> list[Switch]:
    """Each paused job as a switch of the console's panel (flipping it on resumes it)."""
    from project.jobs import overview

    return [
        overview.Switch(
            key=f"pause.{pause.name}",
            label=pause.name,
            on=False,
            group="Paused jobs",
            permission="jobs.control_jobrun",
            changed_by=pause.paused_by,
            changed_at=pause.paused_at,
            on_label="running",
            off_label="paused",
            turn_on="Resume",
            turn_off="Pause",
        )
        for pause in JobPause.objects.all()
    ]


def pause_switch_flip(key: str, on: bool, by: str) -> str:
    name = key.removeprefix("pause.")
    return (job_resume(name=name, by=by) if on else job_pause(name=name, by=by)).message
