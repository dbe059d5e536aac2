from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from exports import services
from exports.models import ProjectExportArchive, ProjectExportJob
from project.errors import AppError

_COLOURS = {"queued": "#777", "started": "#2a7ae2", "finished": "#2e7d32", "failed": "#c62828"}


def _size(value: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


@admin.register(ProjectExportJob)
class ProjectExportJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "project",
        "user",
        "status_badge",
        "progress_shown",
        "created_at",
        "duration_shown",
        "error_shown",
        "exported_by_admin",
    )
    list_filter = ("status", ("project", admin.RelatedOnlyFieldListFilter), "created_at", "exported_by_admin")
    list_select_related = ("project", "user")
    date_hierarchy = "created_at"
    search_fields = ("=id", "project__path_with_namespace", "user__username", "error_code")
    # The upload URL may carry a signature: the admin shows its host only.
    exclude = ("upload_url",)
    readonly_fields = [f.name for f in ProjectExportJob._meta.fields if f.name != "upload_url"] + ["upload_shown"]
    actions = ["retry", "mark_failed", "delete_archive"]
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: ProjectExportJob) -> str:
        label = obj.status
        stale = timezone.now() - timedelta(seconds=settings.EXPORT_STUCK_AFTER)
        if obj.status == ProjectExportJob.Status.STARTED and (obj.heartbeat_at is None or obj.heartbeat_at < stale):
            label = "started (no heartbeat)"
        return format_html('<b style="color:{}">{}</b>', _COLOURS.get(obj.status, "#000"), label)

    @admin.display(description="Progress")
    def progress_shown(self, obj: ProjectExportJob) -> str:
        if not obj.relations_total:
            return "-"
        return f"{obj.relations_done}/{obj.relations_total} relations, {obj.rows_written:,} rows"

    @admin.display(description="Duration")
    def duration_shown(self, obj: ProjectExportJob) -> str:
        duration = obj.duration
        return f"{duration.total_seconds():.1f} s" if duration is not None else "-"

    @admin.display(description="Error", ordering="error_code")
    def error_shown(self, obj: ProjectExportJob) -> str:
        if not obj.error and not obj.error_code:
            return ""
        short = obj.error if len(obj.error) <= 80 else obj.error[:79] + "…"
        return format_html('<span title="{}">{}: {}</span>', obj.error, obj.error_code, short)

    @admin.display(description="Upload")
    def upload_shown(self, obj: ProjectExportJob) -> str:
        if not obj.upload_url:
            return "-"
        return f"{obj.upload_method} to {obj.upload_host} (URL hidden)"

    @admin.action(description="Retry (queue a new export for the same project and user)")
    def retry(self, request: HttpRequest, queryset) -> None:
        queued = 0
        for job in queryset:
            try:
                new = services.export_job_retry(export_job_id=job.pk)
            except AppError as exc:
                self.message_user(request, f"Export #{job.pk}: {exc.message}", messages.ERROR)
            else:
                queued += 1
                self.message_user(request, f"Export #{job.pk}: queued export #{new.pk}.", messages.SUCCESS)
        if not queued:
            self.message_user(request, "No export was queued.", messages.WARNING)

    @admin.action(description="Mark failed (queued or started jobs)")
    def mark_failed(self, request: HttpRequest, queryset) -> None:
        reason = f"Marked failed by {request.user.get_username()} in the admin."
        ids = list(queryset.values_list("pk", flat=True))
        failed = sum(services.export_job_mark_failed(export_job_id=pk, reason=reason) for pk in ids)
        self.message_user(
            request, f"Marked {failed} export job(s) failed.", messages.SUCCESS if failed else messages.INFO
        )
        if len(ids) - failed:
            self.message_user(
                request,
                f"{len(ids) - failed} job(s) were already finished or failed and were left alone.",
                messages.WARNING,
            )

    @admin.action(description="Delete the archive of the job's project and user")
    def delete_archive(self, request: HttpRequest, queryset) -> None:
        pairs = set(queryset.values_list("project_id", "user_id"))
        owners = Q(pk__in=[])
        for project_id, user_id in pairs:
            owners |= Q(project_id=project_id, user_id=user_id)
        archive_ids = list(ProjectExportArchive.objects.filter(owners).values_list("pk", flat=True))
        deleted = sum(services.export_archive_delete(archive_id=pk) for pk in archive_ids)
        if deleted:
            self.message_user(request, f"Deleted {deleted} archive(s).", messages.SUCCESS)
        else:
            self.message_user(request, "The selected jobs have no archive to delete.", messages.WARNING)


@admin.register(ProjectExportArchive)
class ProjectExportArchiveAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "user", "size_shown", "sha256_short", "created_at", "expires_at", "download")
    list_filter = ("created_at", "expires_at")
    list_select_related = ("project", "user")
    search_fields = ("project__path_with_namespace", "user__username", "=sha256")
    readonly_fields = [f.name for f in ProjectExportArchive._meta.fields] + ["download"]
    actions = ["delete_archives"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

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

    @admin.display(description="Size", ordering="size")
    def size_shown(self, obj: ProjectExportArchive) -> str:
        return _size(obj.size)

    @admin.display(description="SHA-256")
    def sha256_short(self, obj: ProjectExportArchive) -> str:
        return format_html('<code title="{}">{}…</code>', obj.sha256, obj.sha256[:12])

    @admin.display(description="Download")
    def download(self, obj: ProjectExportArchive) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:exports_projectexportarchive_download", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, "expired" if obj.is_expired else "download")

    def download_view(self, request: HttpRequest, archive_id: int) -> HttpResponse:
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

    @admin.action(description="Delete selected archives (and their files)")
    def delete_archives(self, request: HttpRequest, queryset) -> None:
        deleted = sum(services.export_archive_delete(archive_id=pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Deleted {deleted} archive(s).", messages.SUCCESS)
