"""Declaring jobs: the closed set of job names, their retry policies and time budgets."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from project.jobs import declared

if TYPE_CHECKING:
    from project.jobs.models import JobRun


class Defer(Exception):
    """Raised by a job that cannot start yet (no capacity): run it again after ``seconds``,
    without spending an attempt."""

    def __init__(self, seconds: float, reason: str = "waiting") -> None:
        super().__init__(reason)
        self.seconds = seconds
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """Delays in seconds before each retry; ``(4, 16, 64)`` means four attempts in all.

    ``setting`` names a Django setting that holds the delays, so operators can tune them
    and tests can shorten them.
    """

    delays: Sequence[float] = ()
    setting: str | None = None

    def resolved(self) -> tuple[float, ...]:
        if self.setting:
            return tuple(getattr(settings, self.setting))
        return tuple(self.delays)

    @property
    def max_attempts(self) -> int:
        return len(self.resolved()) + 1

    def delay_after(self, attempt: int) -> float | None:
        """Seconds to wait after failed ``attempt`` (1-based), or None when none are left."""
        delays = self.resolved()
        if attempt <= len(delays):
            return float(delays[attempt - 1])
        return None


FailureHook = Callable[["JobRun", str, str], None]
#: ``rerun(run, by)``: start the work of a finished run again; returns the new run.
RerunHook = Callable[["JobRun", str], "JobRun"]


@dataclass(frozen=True)
class Target:
    """The record a run works on: a model (``app_label.Model``) and the argument that
    holds its id. The console links each run to it, and the record to its runs."""

    model: str
    argument: str


@dataclass
class Job:
    name: str
    func: Callable[..., Any]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: int | str | None = None
    queue: str | None = None
    cron: str | None = None
    on_failure: FailureHook | None = None
    description: str = ""
    #: True: re-running enqueues the same arguments (the work is redone). A hook: the job
    #: says how to redo it. False: the console does not offer it.
    rerun: bool | RerunHook = True
    target: Target | None = None
    #: Seconds (or a setting's name) without a heartbeat after which a running attempt
    #: counts as lost; ``JOBS_LOST_AFTER`` when unset.
    lost_after: float | str | None = None

    def __call__(self, **kwargs: Any) -> Any:
        return self.func(**kwargs)

    @property
    def timeout_seconds(self) -> int:
        if self.timeout is None:
            return settings.Q_TIMEOUT
        if isinstance(self.timeout, str):
            return int(getattr(settings, self.timeout))
        return self.timeout

    @property
    def lost_after_seconds(self) -> float:
        if self.lost_after is None:
            return float(settings.JOBS_LOST_AFTER)
        if isinstance(self.lost_after, str):
            return float(getattr(settings, self.lost_after))
        return float(self.lost_after)

    @property
    def rerunnable(self) -> bool:
        return self.rerun is not False

    def target_id(self, kwargs: dict[str, Any]) -> int | None:
        if self.target is None:
            return None
        value = kwargs.get(self.target.argument)
        return value if isinstance(value, int) else None

    def enqueue(self, *, _delay: float = 0, _dedupe_key: str | None = None, **kwargs: Any) -> JobRun:
        """Record a run now and send it to the cluster once the current transaction commits.

        With ``_dedupe_key``, a run that is already queued under the same key is returned
        instead of adding another, which debounces bursts of identical requests.
        """
        from project.jobs import queue

        return queue.runs_enqueue(job=self, kwargs_list=[kwargs], delay=_delay, dedupe_key=_dedupe_key)[0]

    def enqueue_many(
        self, kwargs_list: Iterable[dict[str, Any]], *, _delay: float = 0, _delays: Sequence[float] | None = None
    ) -> list[JobRun]:
        """Record many runs in one statement and push them in bulk after commit; all due
        after ``_delay``, or each after its own delay in ``_delays`` (one per run)."""
        from project.jobs import queue

        return queue.runs_enqueue(
            job=self, kwargs_list=list(kwargs_list), delay=_delay, dedupe_key=None, delays=_delays
        )

    def failed(self, run: JobRun, code: str, message: str) -> None:
        if self.on_failure is not None:
            self.on_failure(run, code, message)


REGISTRY = declared.REGISTRY
get = declared.get
names = declared.names


def job(
    name: str,
    *,
    retry: RetryPolicy | None = None,
    timeout: int | str | None = None,
    queue: str | None = None,
    cron: str | None = None,
    on_failure: FailureHook | None = None,
    rerun: bool | RerunHook = True,
    target: Target | None = None,
    lost_after: float | str | None = None,
) -> Callable[[Callable[..., Any]], Job]:
    """Declare a job. ``on_failure(run, code, message)`` runs once when the run ends failed
    or cancelled (retries spent, a permanent error, a lost worker with no attempts left,
    an operator's cancel), so the job's own record can be moved to a final state."""

    if not declared.JOB_NAME.fullmatch(name):
        raise ImproperlyConfigured(f"job name {name!r}: use letters, digits and _ . : - only")

    def decorate(func: Callable[..., Any]) -> Job:
        existing = REGISTRY.get(name)
        if existing is not None and existing.func.__qualname__ != func.__qualname__:
            raise ImproperlyConfigured(f"job name {name!r} is declared twice")
        declared = Job(
            name=name,
            func=func,
            retry=retry or RetryPolicy(),
            timeout=timeout,
            queue=queue,
            cron=cron,
            on_failure=on_failure,
            rerun=rerun,
            target=target,
            lost_after=lost_after,
            description=(func.__doc__ or "").strip().split("\n")[0],
        )
        REGISTRY[name] = declared
        return declared

    return decorate


def autodiscover() -> None:
    """Import every installed app's ``tasks`` module, plus ``JOBS_EXTRA_MODULES``."""
    for config in apps.get_app_configs():
        try:
            importlib.import_module(f"{config.name}.tasks")
        except ModuleNotFoundError as exc:
            if exc.name != f"{config.name}.tasks":
                raise
    for module in settings.JOBS_EXTRA_MODULES:
        importlib.import_module(module)
