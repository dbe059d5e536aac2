"""Findings (tokens masked), token statuses with "Verify now" / "Refresh now", the partner
token type registry, report imports, and the SDRS "check connection" view."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from project.admin_tools import ControlledAdmin, admin_link, badge, clipped, detail_button, time_column, when
from project.errors import AppError
from project.jobs import JobRun
from project.models import ApplicationSetting
from secret_detection import console, services
from secret_detection.models import (
    DirectPartner,
    Finding,
    FindingTokenStatus,
    PartnerTokenType,
    ReportImport,
    TokenStatus,
)

VERIFY_JOB = "secret_detection.verify_partner_token"
DIRECT_VERIFY_JOB = "secret_detection.verify_direct_token"
VERIFY_PERMISSION = "secret_detection.verify_finding"

# A live leaked token is the alarming case, so active is red.
_COLOURS = {"active": "#c62828", "inactive": "#2e7d32", "pending": "#2a7ae2", "unknown": "#777"}


def _badge(status: str) -> str:
    return badge(status, _COLOURS.get(status, "#000"))


def clipped_tail(text: str, length: int) -> str:
    """A path cut from the left, so the file name and line stay; the whole of it on hover."""
    if len(text) <= length:
        return text
    return format_html('<span title="{}">…{}</span>', text, text[-(length - 1) :])


def verification_runs(finding_id: int) -> str:
    """A link to the finding's verification runs (SDRS, and direct when it has some), with
    how many there are."""
    links = []
    for job, label in ((VERIFY_JOB, "verification run(s)"), (DIRECT_VERIFY_JOB, "direct verification run(s)")):
        count = JobRun.objects.filter(name=job, target_id=finding_id).count()
        if count or job == VERIFY_JOB:
            query = urlencode({"job": job, "kind": "all", "target_id": finding_id})
            url = f"{reverse('admin:jobs_jobrun_changelist')}?{query}"
            links.append(format_html('<a href="{}">{} {}</a>', url, count, label))
    return format_html_join(", ", "{}", ((link,) for link in links))


def verify_now_report(model_admin: admin.ModelAdmin, request: HttpRequest, finding_ids: list[int]) -> None:
    counts = services.token_statuses_verify_now(finding_ids=finding_ids, user_id=request.user.pk)
    parts = []
    if counts.get("enqueued"):
        parts.append(f"{counts['enqueued']} sent for partner verification")
    if counts.get("checked_locally"):
        parts.append(f"{counts['checked_locally']} checked against our tokens")
    skipped = {reason: n for reason, n in counts.items() if reason not in ("enqueued", "checked_locally")}
    for reason, number in skipped.items():
        parts.append(f"{number} not verifiable ({reason.replace('_', ' ')})")
    # Green only when every selected token went to a verifier.
    level = messages.WARNING if skipped or not parts else messages.SUCCESS
    model_admin.message_user(request, "Verify now: " + ("; ".join(parts) or "nothing was verified") + ".", level)


class StatusFilter(admin.SimpleListFilter):
    title = "token status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin):
        return TokenStatus.choices

    def queryset(self, request: HttpRequest, queryset):
        return queryset.filter(token_status__status=self.value()) if self.value() else queryset


@admin.register(PartnerTokenType)
class PartnerTokenTypeAdmin(admin.ModelAdmin):
    """The partner token types (GitLab's PartnerTokens::Registry) with a switch per type.
    Switching needs the change permission and goes through ``partner_type_switch``, which
    records who switched."""

    list_display = ("token_type", "partner", "enabled", "verifier", "updated_shown", "updated_by")
    list_editable = ("enabled", "verifier")
    list_filter = ("partner", "enabled", "verifier")
    search_fields = ("token_type",)

    def get_fields(self, request: HttpRequest, obj: PartnerTokenType | None = None):
        if obj is None:
            return ("token_type", "partner", "enabled", "verifier")
        return ("token_type", "partner", "enabled", "verifier", "updated_shown", "updated_by")

    def get_readonly_fields(self, request: HttpRequest, obj: PartnerTokenType | None = None):
        # Once added, a type is only switched on or off (through the service).
        if obj is None:
            return ()
        return ("token_type", "partner", "updated_shown", "updated_by")

    def save_model(self, request: HttpRequest, obj: PartnerTokenType, form, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        if "enabled" in form.changed_data:
            console.partner_type_switch(type_id=obj.pk, enabled=obj.enabled, by=request.user.get_username())
        if "verifier" in form.changed_data:
            try:
                services.partner_type_route(type_id=obj.pk, verifier=obj.verifier, by=request.user.get_username())
            except AppError as exc:
                self.message_user(request, str(exc), messages.ERROR)

    updated_shown = time_column("updated_at", "Updated")

    def get_urls(self):
        check = path(
            "check-connection/",
            self.admin_site.admin_view(self.check_connection_view),
            name="secret_detection_sdrs_check",
        )
        return [check, *super().get_urls()]

    def check_connection_view(self, request: HttpRequest) -> HttpResponse:
        """Linked from the application settings: probe SDRS, report the result there."""
        target = reverse("admin:project_applicationsetting_change", args=[ApplicationSetting.current().pk])
        # (An anonymous user has no permission; the first test says so to the type checker.)
        if not request.user.is_authenticated or not request.user.has_perm("project.change_applicationsetting"):
            self.message_user(request, "You may not change the application settings.", messages.ERROR)
            return HttpResponseRedirect(target)
        check = services.sdrs_connection_check(user_id=request.user.pk)
        self.message_user(
            request, f"SDRS connection: {check.message}", messages.SUCCESS if check.ok else messages.ERROR
        )
        for warning in check.warnings:
            self.message_user(request, warning, messages.WARNING)
        return HttpResponseRedirect(target)


@admin.register(DirectPartner)
class DirectPartnerAdmin(admin.ModelAdmin):
    """The partners verified through their own API: a switch each (through
    ``direct_partner_switch``, which records who switched), the rate limits met, and
    "Check connection" (a value that cannot exist; the answer and latency are shown)."""

    list_display = (
        "partner",
        "enabled",
        "paused_until",
        "rate_limit_hits",
        "last_rate_limit_at",
        "last_check_result",
        "last_check_at",
        "updated_by",
    )
    list_editable = ("enabled",)
    readonly_fields = (
        "partner",
        "paused_until",
        "rate_limit_hits",
        "last_rate_limit_at",
        "last_check_result",
        "last_check_ms",
        "last_check_at",
        "updated_by",
    )
    fields = ("partner", "enabled", *readonly_fields[1:])
    actions = ["check_connection"]

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        services.direct_partners_ensure()  # one row per client, so each has its switch
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DirectPartner | None = None) -> bool:
        return False

    def has_check_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("secret_detection.check_directpartner")

    def save_model(self, request: HttpRequest, obj: DirectPartner, form, change: bool) -> None:
        if "enabled" in form.changed_data:
            services.direct_partner_switch(partner=obj.partner, enabled=obj.enabled, by=request.user.get_username())

    @admin.action(description="Check connection", permissions=["check"])
    def check_connection(self, request: HttpRequest, queryset) -> None:
        for row in queryset:
            check = services.direct_partner_check(partner=row.partner)
            self.message_user(request, check.message, messages.SUCCESS if check.ok else messages.ERROR)


@admin.register(Finding)
class FindingAdmin(ControlledAdmin):
    list_display = (
        "id",
        "project_shown",
        "token_type_shown",
        "value_fingerprint",
        "location_shown",
        "severity",
        "status_shown",
        "last_verified_shown",
    )
    list_display_links = ("id", "token_type_shown")
    list_filter = (
        StatusFilter,
        ("token_type", admin.AllValuesFieldListFilter),
        ("project", admin.RelatedOnlyFieldListFilter),
        "severity",
    )
    list_select_related = ("project", "token_status")
    search_fields = ("=id", "project__path_with_namespace", "token_type", "file_path", "=report_finding_id")
    # The raw value is never shown; the fingerprint identifies it.
    fieldsets = [
        (
            None,
            {
                "fields": (
                    "project",
                    "name",
                    "token_type",
                    "value_fingerprint",
                    "severity",
                    "confidence",
                    "location_full",
                    "commit_sha",
                    "description",
                )
            },
        ),
        ("Verification", {"fields": ("token_status_shown", "status_shown", "last_verified_shown", "runs_shown")}),
        (
            "Report",
            {"fields": ("report_finding_id", "scanner_id", "identifiers", "imported_by", "created_shown")},
        ),
    ]
    actions = ["verify_now"]
    detail_actions = ("verify_now",)
    list_per_page = 50

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("project", "token_status", "imported_by")

    def has_delete_permission(self, request: HttpRequest, obj: Finding | None = None) -> bool:
        # Findings may be deleted (their token status goes with them).
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    def has_verify_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(VERIFY_PERMISSION)

    @admin.display(description="Project", ordering="project__path_with_namespace")
    def project_shown(self, obj: Finding) -> str:
        return clipped(obj.project.path_with_namespace, 16)

    @admin.display(description="Type", ordering="token_type")
    def token_type_shown(self, obj: Finding) -> str:
        return clipped(obj.token_type or obj.name or "-", 16)

    @admin.display(description="Location", ordering="file_path")
    def location_shown(self, obj: Finding) -> str:
        return clipped_tail(obj.location, 24)

    @admin.display(description="Location")
    def location_full(self, obj: Finding) -> str:
        if obj.end_line and obj.end_line != obj.start_line:
            return f"{obj.location}-{obj.end_line}"
        return obj.location or "-"

    @admin.display(description="Status", ordering="token_status__status")
    def status_shown(self, obj: Finding) -> str:
        status = getattr(obj, "token_status", None)
        return _badge(status.status) if status else "-"

    @admin.display(description="Verified", ordering="token_status__last_verified_at")
    def last_verified_shown(self, obj: Finding) -> str:
        status = getattr(obj, "token_status", None)
        return when(status.last_verified_at if status else None, empty="never")

    @admin.display(description="Token status")
    def token_status_shown(self, obj: Finding) -> str:
        status = getattr(obj, "token_status", None)
        return admin_link(status, "Token status page") if status else "-"

    @admin.display(description="Runs")
    def runs_shown(self, obj: Finding) -> str:
        return verification_runs(obj.pk)

    created_shown = time_column("created_at", "Imported")

    @admin.action(description="Verify now", permissions=["verify"])
    def verify_now(self, request: HttpRequest, queryset) -> None:
        # A finding and its token status share their id.
        verify_now_report(self, request, list(queryset.values_list("pk", flat=True)))


@admin.register(FindingTokenStatus)
class FindingTokenStatusAdmin(ControlledAdmin):
    # Fits a 1400 px window: the verifier, token, attempts and other times are on the detail page.
    list_display = (
        "finding_shown",
        "project_shown",
        "token_type",
        "status_badge",
        "verified_shown",
        "error_shown",
        "request_shown",
        "next_refresh_shown",
    )
    list_filter = (
        "status",
        "verifier",
        ("partner", admin.AllValuesFieldListFilter),
        ("finding__token_type", admin.AllValuesFieldListFilter),
        ("project", admin.RelatedOnlyFieldListFilter),
        ("last_error_code", admin.AllValuesFieldListFilter),
    )
    list_select_related = ("finding__project", "project")
    search_fields = ("=finding__id", "=last_request_id", "project__path_with_namespace", "finding__token_type")
    fieldsets = [
        (None, {"fields": ("finding_full", "project", "token_type", "token", "status_badge", "verifier", "partner")}),
        (
            "Verification",
            {
                "fields": (
                    "verified_shown",
                    "attempts",
                    "last_error_code",
                    "last_request_id",
                    "next_refresh_shown",
                    "runs_shown",
                )
            },
        ),
        (
            "Times",
            {"fields": ("routed_shown", "pending_shown", "accepted_shown", "created_shown", "updated_shown")},
        ),
    ]
    actions = ["verify_now", "refresh_now"]
    detail_actions = ("verify_now", "refresh_now")
    list_per_page = 50

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("finding__project", "project")

    def has_verify_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(VERIFY_PERMISSION)

    def action_applies(self, obj: FindingTokenStatus, name: str) -> bool:
        if name == "refresh_now":
            return obj.status != TokenStatus.PENDING  # a pending status waits for its callback
        return True

    # -- columns

    @admin.display(description="Finding", ordering="finding_id")
    def finding_shown(self, obj: FindingTokenStatus) -> str:
        return admin_link(obj.finding, format_html("#{} {}", obj.finding_id, clipped_tail(obj.finding.location, 14)))

    @admin.display(description="Finding")
    def finding_full(self, obj: FindingTokenStatus) -> str:
        return admin_link(obj.finding, f"#{obj.finding_id} {obj.finding}")

    @admin.display(description="Project", ordering="project__path_with_namespace")
    def project_shown(self, obj: FindingTokenStatus) -> str:
        return clipped(obj.project.path_with_namespace, 14)

    @admin.display(description="Type", ordering="finding__token_type")
    def token_type(self, obj: FindingTokenStatus) -> str:
        return clipped(obj.finding.token_type, 14)

    @admin.display(description="Request id", ordering="last_request_id")
    def request_shown(self, obj: FindingTokenStatus) -> str:
        return clipped(obj.last_request_id, 8)

    @admin.display(description="Token")
    def token(self, obj: FindingTokenStatus) -> str:
        return obj.finding.value_fingerprint

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: FindingTokenStatus) -> str:
        return _badge(obj.status)

    verified_shown = time_column("last_verified_at", "Verified", empty="never")

    @admin.display(description="Error", ordering="last_error_code")
    def error_shown(self, obj: FindingTokenStatus) -> str:
        return clipped(obj.last_error_code, 12)

    next_refresh_shown = time_column("next_refresh_at", "Next refresh")

    @admin.display(description="Runs")
    def runs_shown(self, obj: FindingTokenStatus) -> str:
        return verification_runs(obj.finding_id)

    routed_shown = time_column("routed_at", "Routed")

    pending_shown = time_column("pending_since", "Pending since")

    accepted_shown = time_column("accepted_at", "Accepted by SDRS")

    created_shown = time_column("created_at", "Created")

    updated_shown = time_column("updated_at", "Updated")

    # -- actions (through secret_detection.services)

    @admin.action(description="Verify now", permissions=["verify"])
    def verify_now(self, request: HttpRequest, queryset) -> None:
        verify_now_report(self, request, list(queryset.values_list("pk", flat=True)))

    @detail_button("Refresh now")
    @admin.action(description="Refresh now (make due and start a refresh tick)", permissions=["verify"])
    def refresh_now(self, request: HttpRequest, queryset) -> None:
        due = services.token_statuses_refresh_now(finding_ids=list(queryset.values_list("pk", flat=True)))
        if due:
            self.message_user(request, f"{due} status(es) are due now; a refresh tick was started.", messages.SUCCESS)
        else:
            self.message_user(request, "Nothing to refresh: the selected statuses are pending.", messages.WARNING)


_IMPORT_COLOURS = {"queued": "#777", "running": "#2a7ae2", "finished": "#2e7d32", "failed": "#c62828"}


@admin.register(ReportImport)
class ReportImportAdmin(ControlledAdmin):
    """Uploaded reports and what importing them did (read-only: the job records them)."""

    list_display = (
        "id",
        "project_shown",
        "user",
        "status_shown",
        "size_shown",
        "findings",
        "findings_created",
        "duplicates",
        "error_code",
        "created_shown",
        "run_shown",
    )
    list_filter = (
        "status",
        ("error_code", admin.AllValuesFieldListFilter),
        ("project", admin.RelatedOnlyFieldListFilter),
    )
    list_select_related = ("project", "user", "job_run")
    search_fields = ("=id", "project__path_with_namespace", "user__username")
    fieldsets = [
        (None, {"fields": ("project", "user", "status_shown", "size_shown", "run_shown", "routing_run_shown")}),
        (
            "Result",
            {
                "fields": (
                    "findings",
                    "findings_created",
                    "findings_updated",
                    "findings_unchanged",
                    "duplicates",
                    "warnings",
                )
            },
        ),
        ("Failure", {"fields": ("error_code", "error_message", "problems")}),
        ("Times", {"fields": ("created_shown", "started_shown", "finished_shown")}),
    ]
    list_per_page = 50

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("project", "user", "job_run", "routing_run")

    @admin.display(description="Project", ordering="project__path_with_namespace")
    def project_shown(self, obj: ReportImport) -> str:
        return clipped(obj.project.path_with_namespace, 16)

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: ReportImport) -> str:
        return badge(obj.status, _IMPORT_COLOURS.get(obj.status, "#000"))

    @admin.display(description="Size", ordering="size")
    def size_shown(self, obj: ReportImport) -> str:
        return f"{obj.size / 1024 / 1024:.1f} MB" if obj.size >= 1024 * 1024 else f"{obj.size / 1024:.1f} KB"

    @admin.display(description="Import run")
    def run_shown(self, obj: ReportImport) -> str:
        return admin_link(obj.job_run, f"#{obj.job_run_id}") if obj.job_run_id else "-"

    @admin.display(description="Routing run")
    def routing_run_shown(self, obj: ReportImport) -> str:
        return admin_link(obj.routing_run, f"#{obj.routing_run_id}") if obj.routing_run_id else "-"

    created_shown = time_column("created_at", "Uploaded")
    started_shown = time_column("started_at", "Started")
    finished_shown = time_column("finished_at", "Ended")
