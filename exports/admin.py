"""Export jobs (with their phase, run and retry state) and export archives in the admin.
Every action goes through ``exports.services``; the job's execution (attempts, heartbeat,
live progress, cancel) is its run's, linked from here."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q
from django.http import FileResponse, HttpRequest, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from exports import services, status
from exports.models import ProjectExportArchive, ProjectExportJob
from project.admin_tools import (
    ControlledAdmin,
    absolute,
    admin_link,
    badge,
    clipped,
    detail_button,
    duration,
    relative,
    time_column,
    when,
)
from project.errors import AppError
from project.jobs import JobRun

RUN_JOB = "exports.run"
Status = ProjectExportJob.Status

_COLOURS = {
    "queued": "#777",
    "waiting": "#777",
    "retry": "#b26a00",
    "started": "#2a7ae2",
    "cancelling": "#5d4037",
    "silent": "#c62828",
    "finished": "#2e7d32",
    "failed": "#c62828",
}
_PHASES = {
    "queued": "queued",
    "waiting_for_slot": "waiting for a slot",
    "retry_waiting": "waiting for a retry",
    "exporting": "exporting",
    "uploading": "uploading",
}


def _size(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def runs_url(export_job_id: int) -> str:
    query = urlencode({"job": RUN_JOB, "kind": "all", "target_id": export_job_id})
    return f"{reverse('admin:jobs_jobrun_changelist')}?{query}"


def _retry_due(job: ProjectExportJob) -> datetime | None:
    """When the next attempt starts, if the export's run is waiting for a retry."""
    run = job.job_run
    if run is not None and job.is_active and run.waiting_for_retry:
        return run.due_at
    return None


@admin.register(ProjectExportJob)
class ProjectExportJobAdmin(ControlledAdmin):
    # Fits a 1400 px window: the run is linked from the status, the rest is on the detail page.
    list_display = (
        "export_shown",
        "user_shown",
        "status_link",
        "progress_shown",
        "created_shown",
        "duration_shown",
        "error_shown",
    )
    list_display_links = ("export_shown",)
    list_filter = ("status", ("project", admin.RelatedOnlyFieldListFilter), "created_at", "exported_by_admin")
    list_select_related = ("project", "user", "job_run")
    date_hierarchy = "created_at"
    search_fields = ("=id", "project__path_with_namespace", "user__username", "error_code")
    list_per_page = 50
    actions = ["retry", "cancel", "delete_archive"]
    detail_actions = ("retry", "cancel", "delete_archive")
    fieldsets = [
        (
            None,
            {"fields": ("project", "user", "status_shown", "phase_shown", "exported_by_admin", "description")},
        ),
        ("Progress", {"fields": ("progress_shown", "relations_done", "relations_total", "rows_written")}),
        ("Run", {"fields": ("run_shown", "attempt_shown", "next_retry_shown", "run_error_shown", "runs_shown")}),
        (
            "Times",
            {
                "fields": (
                    "created_shown",
                    "started_shown",
                    "finished_shown",
                    "duration_shown",
                    "uploaded_shown",
                    "updated_shown",
                )
            },
        ),
        ("Outcome", {"fields": ("error_code", "error", "upload_shown", "archive_shown")}),
    ]
    # The upload URL may carry a signature: the admin shows its host only.

    def get_queryset(self, request: HttpRequest):
        # The title names the project and the user; the state comes from the run.
        return super().get_queryset(request).select_related("project", "user", "job_run")

    # -- permissions

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("exports.control_projectexportjob")

    def has_delete_archive_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("exports.delete_projectexportarchive")

    def action_applies(self, obj: ProjectExportJob, name: str) -> bool:
        if name == "retry":
            return not obj.is_active
        if name == "cancel":
            return obj.is_active and not (obj.job_run and obj.job_run.cancel_requested_at)
        if name == "delete_archive":
            return ProjectExportArchive.objects.filter(project_id=obj.project_id, user_id=obj.user_id).exists()
        return True

    # -- columns

    @admin.display(description="Export", ordering="id")
    def export_shown(self, obj: ProjectExportJob) -> str:
        return format_html("#{} {}", obj.pk, clipped(obj.project.path_with_namespace, 22))

    @admin.display(description="User", ordering="user__username")
    def user_shown(self, obj: ProjectExportJob) -> str:
        return clipped(obj.user.get_username(), 12)

    @admin.display(description="Status", ordering="status")
    def status_link(self, obj: ProjectExportJob) -> str:
        """The status, linked to the run that executes the export."""
        if obj.job_run is None:
            return self.status_shown(obj)
        url = reverse("admin:jobs_jobrun_change", args=[obj.job_run_id])
        return format_html('<a href="{}" title="Run #{}">{}</a>', url, obj.job_run_id, self.status_shown(obj))

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: ProjectExportJob) -> str:
        """The status in words an operator acts on: "exporting", "uploading", "waiting for a
        slot", "retry in 12 s", "cancelling"."""
        if not obj.is_active:
            return badge(obj.status, _COLOURS.get(obj.status, "#000"))
        run, now = obj.job_run, timezone.now()
        if run is not None and run.cancel_requested_at and run.is_active:
            return badge("cancelling", _COLOURS["cancelling"])
        due = _retry_due(obj)
        if due is not None:
            return format_html(
                '<span title="next attempt at {}">{}</span>',
                absolute(due),
                badge(f"retry {relative(due, now)}", _COLOURS["retry"]),
            )
        phase = status.export_phase(obj)
        label = _PHASES.get(phase or "", obj.status)
        if phase in ("exporting", "uploading") and run is not None and run.status == JobRun.Status.RUNNING:
            silent = timedelta(seconds=settings.EXPORT_STUCK_AFTER)
            if run.heartbeat_at is None or now - run.heartbeat_at > silent:
                return format_html(
                    '<span title="{}, but its worker has sent no heartbeat since {}">{}</span>',
                    label,
                    absolute(run.heartbeat_at) if run.heartbeat_at else "it started",
                    badge("no heartbeat", _COLOURS["silent"]),
                )
        colour = _COLOURS["waiting"] if phase in ("queued", "waiting_for_slot") else _COLOURS["started"]
        return badge(label, colour)

    @admin.display(description="Phase")
    def phase_shown(self, obj: ProjectExportJob) -> str:
        phase = status.export_phase(obj)
        return _PHASES.get(phase, phase) if phase else "- (the export ended)"

    @admin.display(description="Progress")
    def progress_shown(self, obj: ProjectExportJob) -> str:
        report = (obj.job_run.progress if obj.job_run else None) or {}
        if obj.is_active and report.get("done") is not None:
            done, total = report["done"], report.get("total")
            share = f"{100 * done / total:.0f} %" if total else f"{done:,}"
            return clipped(f"{share} {report.get('note') or ''}".strip(), 22)
        if obj.started_at is None or not obj.relations_total:
            return "-"
        return f"{obj.relations_done}/{obj.relations_total} relations, {obj.rows_written:,} rows"

    created_shown = time_column("created_at", "Created")

    started_shown = time_column("started_at", "Started")

    finished_shown = time_column("finished_at", "Ended")

    uploaded_shown = time_column("uploaded_at", "Uploaded")

    updated_shown = time_column("updated_at", "Updated")

    @admin.display(description="Took")
    def duration_shown(self, obj: ProjectExportJob) -> str:
        return duration(obj.started_at, obj.finished_at) if obj.started_at else ""

    @admin.display(description="Error", ordering="error_code")
    def error_shown(self, obj: ProjectExportJob) -> str:
        """The export's error; while a retry is waiting, the error of the attempt that failed."""
        run = obj.job_run
        if obj.error_code or obj.error:
            code, message = obj.error_code, obj.error
        elif run is not None and _retry_due(obj) is not None and run.error_code:
            code, message = run.error_code, run.error
        else:
            return ""
        # The code in the list, the message on hover (and on the detail page).
        return format_html('<b title="{}">{}</b>', message, code or "error")

    @admin.display(description="Run")
    def run_shown(self, obj: ProjectExportJob) -> str:
        run = obj.job_run
        if run is None:
            return "-"
        return admin_link(run, f"#{run.pk} ({run.status})")

    @admin.display(description="Attempt")
    def attempt_shown(self, obj: ProjectExportJob) -> str:
        run = obj.job_run
        return f"{run.attempt} of {run.max_attempts}" if run else "-"

    @admin.display(description="Next retry")
    def next_retry_shown(self, obj: ProjectExportJob) -> str:
        return when(_retry_due(obj))

    @admin.display(description="Error of the latest attempt")
    def run_error_shown(self, obj: ProjectExportJob) -> str:
        run = obj.job_run
        if run is None or not run.error_code:
            return "-"
        return format_html("<b>{}</b> {}", run.error_code, run.error)

    @admin.display(description="All runs")
    def runs_shown(self, obj: ProjectExportJob) -> str:
        count = JobRun.objects.filter(name=RUN_JOB, target_id=obj.pk).count()
        return format_html('<a href="{}">{} run(s) of this export</a>', runs_url(obj.pk), count)

    @admin.display(description="Upload")
    def upload_shown(self, obj: ProjectExportJob) -> str:
        if not obj.upload_url:
            return "-"
        return f"{obj.upload_method} to {obj.upload_host} (URL hidden)"

    @admin.display(description="Archive")
    def archive_shown(self, obj: ProjectExportJob) -> str:
        archive = ProjectExportArchive.objects.filter(project_id=obj.project_id, user_id=obj.user_id).first()
        if archive is None:
            return "- (none for this project and user)"
        made_here = " (made by this export)" if archive.job_id == obj.pk else ""
        return format_html("{}{}", admin_link(archive), made_here)

    # -- actions (each through exports.services)

    @detail_button("Retry")
    @admin.action(description="Retry (queue a new export for the same project and user)", permissions=["control"])
    def retry(self, request: HttpRequest, queryset) -> None:
        self.each(
            request,
            queryset,
            lambda job: services.export_job_retry(export_job_id=job.pk),
            verb="Queued",
            noun="new export(s)",
        )

    @detail_button("Cancel")
    @admin.action(description="Cancel (a running export stops within a second)", permissions=["control"])
    def cancel(self, request: HttpRequest, queryset) -> None:
        by = request.user.get_username()
        self.each(
            request,
            queryset,
            lambda job: services.export_job_cancel(export_job_id=job.pk, by=by),
            verb="Cancelled",
            noun="export(s)",
        )

    @detail_button("Delete archive")
    @admin.action(description="Delete the archive of the job's project and user", permissions=["delete_archive"])
    def delete_archive(self, request: HttpRequest, queryset) -> None:
        pairs = set(queryset.values_list("project_id", "user_id"))
        owners = Q(pk__in=[])
        for project_id, user_id in pairs:
            owners |= Q(project_id=project_id, user_id=user_id)
        archive_ids = list(ProjectExportArchive.objects.filter(owners).values_list("pk", flat=True))
        deleted = sum(services.export_archive_delete(archive_id=pk) for pk in archive_ids)
        self.report(
            request,
            done=deleted,
            verb="Deleted",
            noun="archive(s)",
            problems=[] if deleted else ["The selected jobs have no archive to delete."],
        )


@admin.register(ProjectExportArchive)
class ProjectExportArchiveAdmin(ControlledAdmin):
    list_display = (
        "id",
        "project_shown",
        "user_shown",
        "size_shown",
        "sha256_short",
        "created_shown",
        "expires_shown",
        "download",
    )
    list_display_links = ("id", "project_shown")
    list_filter = ("created_at", "expires_at")
    list_select_related = ("project", "user")
    search_fields = ("project__path_with_namespace", "user__username", "=sha256")
    fields = (
        "project",
        "user",
        "job_shown",
        "filename",
        "size_shown",
        "sha256",
        "created_shown",
        "expires_shown",
        "download",
    )
    readonly_fields = fields
    actions = ["delete_archives"]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("project", "user", "job__project", "job__user")

    def has_delete_permission(self, request: HttpRequest, obj: ProjectExportArchive | None = None) -> bool:
        # The admin's own delete page stays (it goes through the service, see delete_model).
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    def get_actions(self, request: HttpRequest):
        actions = super().get_actions(request)
        # The generic bulk delete would leave the files behind.
        actions.pop("delete_selected", None)
        return actions

    def delete_model(self, request: HttpRequest, obj: ProjectExportArchive) -> None:
        services.export_archive_delete(archive_id=obj.pk)

    def get_urls(self):
        return [
            path(
                "<int:archive_id>/download/",
                self.admin_site.admin_view(self.download_view),
                name="exports_projectexportarchive_download",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="Project", ordering="project__path_with_namespace")
    def project_shown(self, obj: ProjectExportArchive) -> str:
        return clipped(obj.project.path_with_namespace, 28)

    @admin.display(description="User", ordering="user__username")
    def user_shown(self, obj: ProjectExportArchive) -> str:
        return clipped(obj.user.get_username(), 16)

    @admin.display(description="Export job")
    def job_shown(self, obj: ProjectExportArchive) -> str:
        return admin_link(obj.job)

    @admin.display(description="Size", ordering="size")
    def size_shown(self, obj: ProjectExportArchive) -> str:
        return _size(obj.size)

    @admin.display(description="SHA-256")
    def sha256_short(self, obj: ProjectExportArchive) -> str:
        return format_html('<code title="{}">{}…</code>', obj.sha256, obj.sha256[:12])

    created_shown = time_column("created_at", "Created")

    expires_shown = time_column("expires_at", "Expires")

    @admin.display(description="Download")
    def download(self, obj: ProjectExportArchive) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:exports_projectexportarchive_download", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, "expired" if obj.is_expired else "download")

    def download_view(self, request: HttpRequest, archive_id: int) -> HttpResponseBase:
        """Staff who may view archives may download them (``exports.view_projectexportarchive``)."""
        archive = ProjectExportArchive.objects.filter(pk=archive_id).select_related("project", "user").first()
        if archive is None or not self.has_view_permission(request, archive):
            self.message_user(request, f"Archive #{archive_id} does not exist.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:exports_projectexportarchive_changelist"))
        try:
            handle = services.archive_open(archive=archive)
        except AppError as exc:
            self.message_user(request, f"Archive #{archive_id}: {exc.message}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:exports_projectexportarchive_changelist"))
        response = FileResponse(handle, as_attachment=True, filename=archive.filename, content_type="application/gzip")
        response["Content-Length"] = str(archive.size)
        return response

    @admin.action(description="Delete selected archives (and their files)", permissions=["delete"])
    def delete_archives(self, request: HttpRequest, queryset) -> None:
        deleted = sum(services.export_archive_delete(archive_id=pk) for pk in queryset.values_list("pk", flat=True))
        self.report(request, done=deleted, verb="Deleted", noun="archive(s)")


# Registers the import jobs' admin (a module of its own, as the importer is).
from exports.importer import admin as _import_admin  # noqa: E402, F401
