"""``manage.py jobs_control``: the job console's controls from a terminal.

Every action goes through ``project.jobs.control``, as the console's buttons and the
admin's actions do, so a control behaves the same wherever it is used. The outcome's
sentence goes to stdout; a refusal (run finished meanwhile, job already paused…) is a
``CommandError`` with the service's message and exit code 1.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from project.errors import AppError
from project.jobs import control

#: action -> (argument it takes, help)
ACTIONS: dict[str, tuple[str, str]] = {
    "cancel": ("run_id", "cancel a queued run, or ask a running one to stop"),
    "retry-now": ("run_id", "start a queued run (a retry waiting for its delay) now"),
    "rerun": ("run_id", "do a finished run's work again, as a new run"),
    "pause": ("job", "pause a job: its queued runs wait until it is resumed"),
    "resume": ("job", "resume a paused job and send the runs that waited"),
    "run-schedule": ("job", "run a scheduled job now, outside its schedule"),
}


def operator(name: str | None) -> str:
    """Who acts, as the runs' and pauses' records show it: ``--by`` as given, else the OS
    user as ``cli:<user>``."""
    if name:
        return name
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    return f"cli:{user}"


class Command(BaseCommand):
    help = (
        "Cancel, retry now or re-run a job run, pause or resume a job, or run a scheduled job now: "
        "the job console's controls, from a terminal."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        for action, (argument, text) in ACTIONS.items():
            sub = actions.add_parser(action, help=text, description=text)
            if argument == "run_id":
                sub.add_argument("run_id", type=int, metavar="RUN_ID", help="the run's id (the console shows it)")
            else:
                sub.add_argument("job", metavar="JOB", help="the job's name, for example exports.run")
            if action == "pause":
                sub.add_argument("--reason", default="", help="why, for whoever finds it paused")
            sub.add_argument("--by", default=None, help="who acts (default: cli:<your OS user>)")

    def handle(self, *args: Any, **options: Any) -> None:
        by = operator(options.get("by"))
        calls: dict[str, Callable[[], control.Outcome]] = {
            "cancel": lambda: control.run_cancel(run_id=options["run_id"], by=by),
            "retry-now": lambda: control.run_retry_now(run_id=options["run_id"], by=by),
            "rerun": lambda: control.run_rerun(run_id=options["run_id"], by=by),
            "pause": lambda: control.job_pause(name=options["job"], by=by, reason=options.get("reason") or ""),
            "resume": lambda: control.job_resume(name=options["job"], by=by),
            "run-schedule": lambda: control.schedule_run_now(name=options["job"], by=by),
        }
        try:
            outcome = calls[options["action"]]()
        except AppError as exc:
            raise CommandError(str(exc.message)) from None
        self.stdout.write(outcome.message)
