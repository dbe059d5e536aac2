"""Import jobs in the admin: status, counts, skipped and failed relations, a link to the
project and to the run that executes the import. Loaded by ``exports.admin``."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from exports.importer import services
from exports.models import ProjectImportJob
from project.admin_tools import ControlledAdmin, admin_link, badge, clipped, detail_button, duration, time_column

RUN_JOB = "exports.import"
_COLOURS = {"scheduled": "#777", "started": "#2a7ae2", "finished": "#2e7d32", "failed": "#c62828"}


def runs_url(import_job_id: int) -> str:
    query = urlencode({"job": RUN_JOB, "kind": "all", "target_id": import_job_id})
    return f"{reverse('admin:jobs_jobrun_changelist')}?{query}"


@admin.register(ProjectImportJob)
class ProjectImportJobAdmin(ControlledAdmin):
    list_display = (
        "import_shown",
        "user_shown",
        "status_link",
        "counts_shown",
        "failed_shown",
        "created_shown",
        "duration_shown",
        "error_shown",
    )
    list_display_links = ("import_shown",)
    list_filter = ("status", "imported_by_admin", "created_at")
    list_select_related = ("project", "user", "job_run")
    date_hierarchy = "created_at"
    search_fields = ("=id", "project__path_with_namespace", "user__username", "error_code")
    list_per_page = 50
    actions = ["cancel"]
    detail_actions = ("cancel",)
    fieldsets = [
        (None, {"fields": ("project_shown", "user", "status_shown", "imported_by_admin", "overwrite_path")}),
        ("Outcome", {"fields": ("counts_shown", "skipped_shown", "failed_relations_shown", "error_code", "error")}),
        ("Run", {"fields": ("run_shown", "progress_shown", "runs_shown")}),
        ("Archive", {"fields": ("source", "source_size")}),
        ("Times", {"fields": ("created_shown", "started_shown", "finished_shown", "duration_shown", "updated_shown")}),
    ]

    created_shown = time_column("created_at", "Created")
    started_shown = time_column("started_at", "Started")
    finished_shown = time_column("finished_at", "Finished")
    updated_shown = time_column("updated_at", "Updated")

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("exports.control_projectimportjob")

    def action_applies(self, obj: ProjectImportJob, name: str) -> bool:
        if name == "cancel":
            return obj.is_active and not (obj.job_run and obj.job_run.cancel_requested_at)
        return True

    @admin.display(description="Import", ordering="id")
    def import_shown(self, obj: ProjectImportJob) -> str:
        return format_html("#{} {}", obj.pk, clipped(obj.project.path_with_namespace, 22))

    @admin.display(description="User", ordering="user__username")
    def user_shown(self, obj: ProjectImportJob) -> str:
        return clipped(obj.user.get_username(), 12)

    @admin.display(description="Project")
    def project_shown(self, obj: ProjectImportJob) -> str:
        return admin_link(obj.project, obj.project.path_with_namespace)

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: ProjectImportJob) -> str:
        run = obj.job_run
        if obj.is_active and run is not None and run.cancel_requested_at and run.is_active:
            return badge("cancelling", "#5d4037")
        return badge(obj.status, _COLOURS.get(obj.status, "#000"))

    @admin.display(description="Status", ordering="status")
    def status_link(self, obj: ProjectImportJob) -> str:
        if obj.job_run is None:
            return self.status_shown(obj)
        url = reverse("admin:jobs_jobrun_change", args=[obj.job_run_id])
        return format_html('<a href="{}" title="Run #{}">{}</a>', url, obj.job_run_id, self.status_shown(obj))

    @admin.display(description="Imported")
    def counts_shown(self, obj: ProjectImportJob) -> str:
        counts = obj.counts or {}
        if not counts:
            return "-"
        # Issues and notes say how big an import was; the rest is in the tooltip and the page.
        every = ", ".join(f"{value:,} {key}" for key, value in counts.items() if isinstance(value, int))
        issues, notes = f"{counts.get('issues', 0):,}", f"{counts.get('notes', 0):,}"
        return format_html('<span title="{}">{} issues, {} notes</span>', every, issues, notes)

    @admin.display(description="Failed")
    def failed_shown(self, obj: ProjectImportJob) -> str:
        failed = (obj.counts or {}).get("failed", len(obj.failed_relations or []))
        return badge(str(failed), "#c62828") if failed else "0"

    @admin.display(description="Duration")
    def duration_shown(self, obj: ProjectImportJob) -> str:
        return duration(obj.started_at, obj.finished_at)

    @admin.display(description="Error")
    def error_shown(self, obj: ProjectImportJob) -> str:
        return clipped(obj.error, 40) if obj.error else "-"

    @admin.display(description="Skipped (not modelled)")
    def skipped_shown(self, obj: ProjectImportJob) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.skipped or {}, indent=2, ensure_ascii=False))

    @admin.display(description="Failed relations")
    def failed_relations_shown(self, obj: ProjectImportJob) -> str:
        if not obj.failed_relations:
            return "-"
        return format_html("<pre>{}</pre>", json.dumps(obj.failed_relations, indent=2, ensure_ascii=False))

    @admin.display(description="Run")
    def run_shown(self, obj: ProjectImportJob) -> str:
        return admin_link(obj.job_run, f"Run #{obj.job_run_id}") if obj.job_run else "-"

    @admin.display(description="Progress")
    def progress_shown(self, obj: ProjectImportJob) -> str:
        report = (obj.job_run.progress if obj.job_run else None) or {}
        return report.get("note") or "-" if obj.is_active else "-"

    @admin.display(description="All runs")
    def runs_shown(self, obj: ProjectImportJob) -> str:
        return format_html('<a href="{}">runs of this import</a>', runs_url(obj.pk))

    @detail_button("Cancel")
    @admin.action(description="Cancel (a running import stops and rolls back)", permissions=["control"])
    def cancel(self, request: HttpRequest, queryset) -> None:
        by = request.user.get_username()
        self.each(
            request,
            queryset,
            lambda job: services.import_job_cancel(import_job_id=job.pk, by=by),
            verb="Cancelled",
            noun="import(s)",
        )
