"""Job runs, paused jobs and cluster heartbeats in the admin. The console's overview is in
``project.jobs.console``; every control here goes through ``project.jobs.control``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django_q import admin as q_admin
from django_q.models import OrmQ

from project.admin_tools import ControlledAdmin, admin_link, badge, clipped, duration, relative, time_column, when
from project.jobs import control, djangoq, registry
from project.jobs.models import ClusterHeartbeat, JobPause, JobRun

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices

Status = JobRun.Status
COLOURS = {
    "queued": "#777",
    "retry": "#b26a00",
    "running": "#2a7ae2",
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#5d4037",
    "silent": "#c62828",
}


def status_badge(run: JobRun) -> str:
    """The run's state in words an operator acts on: "retry in 12 s", "running (no
    heartbeat)", "cancelling"."""
    now = timezone.now()
    if run.status == Status.QUEUED and run.attempt > 1 and run.due_at > now:
        return badge(f"retry {relative(run.due_at, now)}", COLOURS["retry"])
    if run.status == Status.RUNNING:
        job = registry.get(run.name)
        threshold = job.lost_after_seconds if job else settings.JOBS_LOST_AFTER
        if run.heartbeat_at is None or now - run.heartbeat_at > timedelta(seconds=threshold):
            return badge("running (no heartbeat)", COLOURS["silent"])
        if run.cancel_requested_at:
            return badge("cancelling", COLOURS["cancelled"])
    return badge(run.status, COLOURS.get(run.status, "#000"))


def progress_text(run: JobRun, *, length: int = 48) -> str:
    report = run.progress or {}
    done, total, note = report.get("done"), report.get("total"), report.get("note") or ""
    if done is None and not note:
        return ""
    share = f"{done:,}/{total:,}" if done is not None and total else (f"{done:,}" if done is not None else "")
    if done is not None and total:
        share = f"{100 * done / total:.0f} %" if length < 30 else f"{share} ({100 * done / total:.0f} %)"
    return clipped(" · ".join(part for part in (share, note) if part), length)


def target_link(run: JobRun) -> str:
    """A link to the record the run works on (``attach_targets`` loaded it)."""
    target = getattr(run, "target_obj", None)
    if target is not None:
        return admin_link(target, clipped(str(target), 24))
    job = registry.get(run.name)
    if job and job.target and run.target_id is not None:
        return f"#{run.target_id} (deleted)"
    return "-"


class KindFilter(admin.SimpleListFilter):
    """Scheduled housekeeping makes most runs; the list hides it until asked."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("housekeeping", "Scheduled housekeeping"), ("all", "All runs")]

    def choices(self, changelist: ChangeList) -> Iterator[_ListFilterChoices]:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "Feature jobs (not scheduled)",
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> QuerySet[JobRun]:
        if self.value() == "all":
            return queryset
        return queryset.filter(scheduled=self.value() == "housekeeping")


class JobNameFilter(admin.SimpleListFilter):
    title = "job"
    parameter_name = "job"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(name, name) for name in registry.names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> QuerySet[JobRun]:
        return queryset.filter(name=self.value()) if self.value() else queryset


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [
            ("queued", "queued"),
            ("retry_waiting", "waiting for a retry"),
            ("running", "running"),
            ("silent", "running without heartbeat"),
            ("succeeded", "succeeded"),
            ("failed", "failed"),
            ("cancelled", "cancelled"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> QuerySet[JobRun]:
        value, now = self.value(), timezone.now()
        if value == "retry_waiting":
            return queryset.filter(status=Status.QUEUED, attempt__gt=1, due_at__gt=now)
        if value == "silent":
            return queryset.filter(
                status=Status.RUNNING, heartbeat_at__lt=now - timedelta(seconds=settings.JOBS_LOST_AFTER)
            )
        return queryset.filter(status=value) if value else queryset


class RunChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        attach_targets(self.result_list)


def attach_targets(runs: Iterable[JobRun]) -> None:
    """Load the records the runs work on, one query per kind of record."""
    wanted: dict[str, set[int]] = defaultdict(set)
    for run in runs:
        job = registry.get(run.name)
        if job and job.target and run.target_id is not None:
            wanted[job.target.model].add(run.target_id)
    found: dict[tuple[str, Any], Model] = {}  # (model label, primary key)
    for label, ids in wanted.items():
        model = apps.get_model(label)
        for pk, obj in model._default_manager.select_related().in_bulk(ids).items():
            found[(label, pk)] = obj
    for run in runs:
        job = registry.get(run.name)
        run.target_obj = found.get((job.target.model, run.target_id)) if job and job.target else None


@admin.register(JobRun)
class JobRunAdmin(ControlledAdmin):
    list_display = (
        "id",
        "name_shown",
        "status_shown",
        "attempt_shown",
        "target_shown",
        "progress_short",
        "when_shown",
        "duration_shown",
        "error_shown",
    )
    list_display_links = ("id", "name_shown")
    list_filter = (KindFilter, StatusFilter, JobNameFilter, "created_at")
    search_fields = ("=id", "=request_id", "=task_id", "=name", "=error_code")
    list_per_page = 50
    actions = ["cancel", "retry_now", "rerun", "recover_lost"]
    detail_actions = ("cancel", "retry_now", "rerun")
    fieldsets = [
        (None, {"fields": ("name", "status_shown", "attempt_shown", "target_shown", "kwargs_shown", "scheduled")}),
        ("Progress", {"fields": ("progress_shown", "progress_raw", "heartbeat_shown", "worker", "task_id")}),
        (
            "Times",
            {"fields": ("created_at", "due_at", "started_at", "finished_at", "duration_shown", "deferrals")},
        ),
        (
            "Outcome",
            {
                "fields": (
                    "error_code",
                    "error",
                    "result",
                    "cancel_shown",
                    "history_shown",
                    "traceback",
                    "request_id",
                )
            },
        ),
    ]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RunChangeList

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> JobRun | None:
        run = super().get_object(request, object_id, from_field)
        if run is not None:
            attach_targets([run])
        return run

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.control_jobrun")

    def action_applies(self, obj: JobRun, name: str) -> bool:
        if name == "cancel":
            return obj.is_active and not obj.cancel_requested_at
        if name == "retry_now":
            return obj.status == Status.QUEUED and obj.due_at > timezone.now()
        if name == "rerun":
            job = registry.get(obj.name)
            return obj.status in JobRun.TERMINAL and job is not None and job.rerunnable
        return True

    # -- columns

    @admin.display(description="Job", ordering="name")
    def name_shown(self, obj: JobRun) -> str:
        # May break after the app's prefix, so a long job name takes two lines at most.
        app, dot, rest = obj.name.partition(".")
        return format_html("{}{}<wbr>{}", app, dot, rest) if dot else obj.name

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: JobRun) -> str:
        return status_badge(obj)

    @admin.display(description="Try", ordering="attempt")
    def attempt_shown(self, obj: JobRun) -> str:
        return f"{obj.attempt}/{obj.max_attempts}"

    @admin.display(description="Target")
    def target_shown(self, obj: JobRun) -> str:
        return target_link(obj)

    @admin.display(description="Arguments")
    def kwargs_shown(self, obj: JobRun) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in obj.kwargs.items()) or "-"

    @admin.display(description="Progress")
    def progress_shown(self, obj: JobRun) -> str:
        return progress_text(obj) or "-"

    @admin.display(description="Progress report")
    def progress_raw(self, obj: JobRun) -> str:
        return format_html("<code>{}</code>", obj.progress) if obj.progress else "-"

    heartbeat_shown = time_column("heartbeat_at", "Heartbeat")

    @admin.display(description="Progress")
    def progress_short(self, obj: JobRun) -> str:
        return progress_text(obj, length=22)

    @admin.display(description="When", ordering="-id")
    def when_shown(self, obj: JobRun) -> str:
        """Due (queued), started (running) or ended: the one time that matters now."""
        if obj.status == Status.QUEUED:
            return format_html("due {}", when(obj.due_at))
        if obj.status == Status.RUNNING:
            return format_html("started {}", when(obj.started_at))
        return format_html("ended {}", when(obj.finished_at))

    @admin.display(description="Took")
    def duration_shown(self, obj: JobRun) -> str:
        return duration(obj.started_at, obj.finished_at) if obj.started_at and obj.status != Status.QUEUED else ""

    @admin.display(description="Error", ordering="error_code")
    def error_shown(self, obj: JobRun) -> str:
        if not obj.error_code:
            return ""
        # The code here, the message on hover and on the detail page. A long code may break
        # after its underscores rather than widen the list.
        parts = obj.error_code.split("_")
        code = format_html_join(mark_safe("_<wbr>"), "{}", ((part,) for part in parts))
        return format_html('<span title="{}">{}</span>', obj.error, code)

    @admin.display(description="Cancel request")
    def cancel_shown(self, obj: JobRun) -> str:
        if not obj.cancel_requested_at:
            return "-"
        return format_html("by {} {}", obj.cancel_requested_by or "?", when(obj.cancel_requested_at))

    @admin.display(description="Attempts")
    def history_shown(self, obj: JobRun) -> str:
        if not obj.history:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    entry.get("attempt"),
                    entry.get("outcome"),
                    (entry.get("started_at") or "-")[:19].replace("T", " "),
                    (entry.get("finished_at") or "-")[:19].replace("T", " "),
                    f"{entry.get('error_code') or ''} {entry.get('error') or ''}".strip(),
                )
                for entry in obj.history
            ),
        )
        return format_html(
            "<table><thead><tr><th>Attempt</th><th>Outcome</th><th>Started</th><th>Ended</th><th>Error</th>"
            "</tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    # -- actions (each through project.jobs.control)

    @admin.action(description="Cancel", permissions=["control"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> None:
        by = request.user.get_username()
        self.each(
            request, queryset, lambda run: control.run_cancel(run_id=run.pk, by=by), verb="Cancelled", noun="run(s)"
        )

    @admin.action(description="Retry now", permissions=["control"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> None:
        by = request.user.get_username()
        self.each(
            request,
            queryset,
            lambda run: control.run_retry_now(run_id=run.pk, by=by),
            verb="Started",
            noun="run(s) now",
        )

    @admin.action(description="Re-run (do the work again)", permissions=["control"])
    def rerun(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> None:
        by = request.user.get_username()
        self.each(request, queryset, lambda run: control.run_rerun(run_id=run.pk, by=by), verb="Re-ran", noun="run(s)")

    @admin.action(description="Recover runs whose worker is gone", permissions=["control"])
    def recover_lost(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> None:
        from project.jobs.recovery import run_recover_lost

        moved = sum(1 for pk in queryset.values_list("pk", flat=True) if run_recover_lost(run_id=pk))
        self.report(
            request,
            done=moved,
            verb="Recovered",
            noun="run(s) whose worker was gone",
            problems=[] if moved else ["None of the selected runs is running without a heartbeat."],
        )


@admin.register(JobPause)
class JobPauseAdmin(ControlledAdmin):
    list_display = ("name", "paused_by", "paused_shown", "reason")
    actions = ["resume"]
    detail_actions = ("resume",)

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.control_jobrun")

    paused_shown = time_column("paused_at", "Paused")

    @admin.action(description="Resume", permissions=["control"])
    def resume(self, request: HttpRequest, queryset: QuerySet[JobPause]) -> None:
        by = request.user.get_username()
        self.each(
            request, queryset, lambda pause: control.job_resume(name=pause.name, by=by), verb="Resumed", noun="job(s)"
        )


@admin.register(ClusterHeartbeat)
class ClusterHeartbeatAdmin(ControlledAdmin):
    list_display = ("key", "cluster_name", "broker", "workers", "alive", "last_seen_shown", "first_seen_shown")

    @admin.display(boolean=True)
    def alive(self, obj: ClusterHeartbeat) -> bool:
        return timezone.now() - obj.last_seen < timedelta(seconds=settings.JOBS_CLUSTER_STALE_AFTER)

    last_seen_shown = time_column("last_seen", "Last seen")

    first_seen_shown = time_column("first_seen", "First seen")


# --- django-q2's queue table -----------------------------------------------------------------


def _message_task(obj: OrmQ) -> dict[str, Any]:
    return djangoq.message_task(obj.payload) or {"id": "(unreadable)"}


def _task_field(key: str, description: str) -> Callable[[Any, OrmQ], Any]:
    """A column showing one field of a queued message's task, as the pusher will read it."""

    @admin.display(description=description)
    def shown(model_admin: Any, obj: OrmQ) -> Any:
        return _message_task(obj).get(key)

    shown.__name__ = key
    return shown


_SHOWN_APART = {"id", "name", "group", "func", "args", "kwargs"}


class QueuedMessageAdmin(q_admin.QueueAdmin):  # type: ignore[misc]  # django-q2 ships no type hints
    """django-q2's ORM queue, each message read as the pusher reads it. A message of one
    run names the run instead of carrying a signed task (``djangoq.run_message``), which
    django-q2's own admin cannot read."""

    list_display = ("id", "key", "name", "group", "func", "lock_shown", "task_id")
    lock_shown = time_column("lock", "Due, or leased until")
    task_id = _task_field("id", "Task id")
    name = _task_field("name", "Name")
    group = _task_field("group", "Group")
    func = _task_field("func", "Function")
    args = _task_field("args", "Arguments")
    kwargs = _task_field("kwargs", "Keyword arguments")

    @admin.display(description="Options")
    def q_options(self, obj: OrmQ) -> Any:
        return {key: value for key, value in _message_task(obj).items() if key not in _SHOWN_APART}


if admin.site.is_registered(OrmQ):
    admin.site.unregister(OrmQ)
admin.site.register(OrmQ, QueuedMessageAdmin)
