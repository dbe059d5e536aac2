from __future__ import annotations

import json
from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from project.errors import AppError
from project.jobs import recovery, registry
from project.jobs.models import ClusterHeartbeat, JobRun


class JobNameFilter(admin.SimpleListFilter):
    title = "job"
    parameter_name = "job"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin):
        return [(name, name) for name in registry.names()]

    def queryset(self, request: HttpRequest, queryset):
        return queryset.filter(name=self.value()) if self.value() else queryset


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "status_badge",
        "attempt_shown",
        "due_at",
        "started_at",
        "duration_shown",
        "error_code",
        "request_id",
    )
    list_filter = ("status", JobNameFilter, "scheduled", "created_at")
    search_fields = ("=id", "=request_id", "=task_id", "name", "error_code")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in JobRun._meta.fields] + ["history_shown"]
    exclude = ("history",)
    actions = ["run_again", "mark_failed", "recover_lost"]
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: JobRun) -> str:
        colours = {"queued": "#777", "running": "#2a7ae2", "succeeded": "#2e7d32", "failed": "#c62828"}
        lost = (
            obj.status == JobRun.Status.RUNNING
            and obj.heartbeat_at
            and (timezone.now() - obj.heartbeat_at > timedelta(seconds=settings.JOBS_LOST_AFTER))
        )
        label = f"{obj.status} (no heartbeat)" if lost else obj.status
        return format_html('<b style="color:{}">{}</b>', colours.get(obj.status, "#000"), label)

    @admin.display(description="Attempt", ordering="attempt")
    def attempt_shown(self, obj: JobRun) -> str:
        return f"{obj.attempt}/{obj.max_attempts}"

    @admin.display(description="Duration")
    def duration_shown(self, obj: JobRun) -> str:
        duration = obj.duration
        return f"{duration.total_seconds():.2f} s" if duration else "-"

    @admin.display(description="Attempts")
    def history_shown(self, obj: JobRun) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.history, indent=2))

    @admin.action(description="Run again (a new run with the same arguments)")
    def run_again(self, request: HttpRequest, queryset) -> None:
        done = 0
        for run in queryset:
            try:
                recovery.run_requeue(run_id=run.pk)
                done += 1
            except AppError as exc:
                self.message_user(request, f"{run}: {exc.message}", messages.ERROR)
        if done:
            self.message_user(request, f"Queued {done} new run(s).", messages.SUCCESS)

    @admin.action(description="Mark failed (queued or running runs)")
    def mark_failed(self, request: HttpRequest, queryset) -> None:
        reason = f"marked failed by {request.user.username} in the admin"
        failed = sum(recovery.run_mark_failed(run_id=pk, reason=reason) for pk in queryset.values_list("pk", flat=True))
        skipped = queryset.count() - failed
        self.message_user(request, f"Marked {failed} run(s) failed.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} run(s) were already finished and were left alone.", messages.WARNING)

    @admin.action(description="Recover runs whose worker is gone")
    def recover_lost(self, request: HttpRequest, queryset) -> None:
        outcomes = [recovery.run_recover_lost(run_id=pk) for pk in queryset.values_list("pk", flat=True)]
        moved = len([o for o in outcomes if o])
        self.message_user(
            request,
            f"Recovered {moved} run(s); the others are not running without a heartbeat.",
            messages.SUCCESS if moved else messages.WARNING,
        )


@admin.register(ClusterHeartbeat)
class ClusterHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("key", "cluster_name", "broker", "alive", "last_seen", "first_seen")
    readonly_fields = ("key", "cluster_name", "host", "pid", "broker", "first_seen", "last_seen")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(boolean=True)
    def alive(self, obj: ClusterHeartbeat) -> bool:
        return timezone.now() - obj.last_seen < timedelta(seconds=settings.JOBS_CLUSTER_STALE_AFTER)
