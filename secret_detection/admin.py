"""Findings (tokens masked), token statuses with "Verify now" / "Refresh now", the partner
token type registry, and the SDRS "check connection" view."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from project.models import ApplicationSetting
from secret_detection import services
from secret_detection.models import Finding, FindingTokenStatus, PartnerTokenType, TokenStatus

# A live leaked token is the alarming case, so active is red.
_COLOURS = {"active": "#c62828", "inactive": "#2e7d32", "pending": "#2a7ae2", "unknown": "#777"}


def _badge(status: str) -> str:
    return format_html('<b style="color:{}">{}</b>', _COLOURS.get(status, "#000"), status)


class StatusFilter(admin.SimpleListFilter):
    title = "token status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin):
        return TokenStatus.choices

    def queryset(self, request: HttpRequest, queryset):
        return queryset.filter(token_status__status=self.value()) if self.value() else queryset


@admin.register(PartnerTokenType)
class PartnerTokenTypeAdmin(admin.ModelAdmin):
    """The partner token types (GitLab's PartnerTokens::Registry) with a switch per type."""

    list_display = ("token_type", "partner", "enabled", "updated_at")
    list_editable = ("enabled",)
    list_filter = ("partner", "enabled")
    search_fields = ("token_type",)

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
        if not request.user.has_perm("project.change_applicationsetting"):
            self.message_user(request, "You may not change the application settings.", messages.ERROR)
            return HttpResponseRedirect(target)
        check = services.sdrs_connection_check(user_id=request.user.pk)
        self.message_user(
            request, f"SDRS connection: {check.message}", messages.SUCCESS if check.ok else messages.ERROR
        )
        for warning in check.warnings:
            self.message_user(request, warning, messages.WARNING)
        return HttpResponseRedirect(target)


@admin.register(Finding)
class FindingAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "project",
        "token_type",
        "value_fingerprint",
        "location_shown",
        "severity",
        "status_shown",
        "last_verified_shown",
    )
    list_filter = (
        StatusFilter,
        ("token_type", admin.AllValuesFieldListFilter),
        ("project", admin.RelatedOnlyFieldListFilter),
        "severity",
    )
    list_select_related = ("project", "token_status")
    search_fields = ("=id", "project__path_with_namespace", "token_type", "file_path", "=report_finding_id")
    # The raw value is never shown; the fingerprint identifies it.
    fields = (
        "project",
        "name",
        "token_type",
        "value_fingerprint",
        "severity",
        "confidence",
        "file_path",
        "start_line",
        "end_line",
        "commit_sha",
        "report_finding_id",
        "scanner_id",
        "identifiers",
        "description",
        "imported_by",
        "created_at",
        "status_shown",
        "last_verified_shown",
    )
    readonly_fields = fields
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Finding | None = None) -> bool:
        return False

    @admin.display(description="Location")
    def location_shown(self, obj: Finding) -> str:
        return obj.location

    @admin.display(description="Status", ordering="token_status__status")
    def status_shown(self, obj: Finding) -> str:
        status = getattr(obj, "token_status", None)
        return _badge(status.status) if status else "-"

    @admin.display(description="Last verified", ordering="token_status__last_verified_at")
    def last_verified_shown(self, obj: Finding):
        status = getattr(obj, "token_status", None)
        return status.last_verified_at if status else None


@admin.register(FindingTokenStatus)
class FindingTokenStatusAdmin(admin.ModelAdmin):
    list_display = (
        "finding_shown",
        "project",
        "token_type",
        "token",
        "status_badge",
        "verifier",
        "last_verified_at",
        "attempts",
        "last_error_code",
        "last_request_id",
        "next_refresh_at",
    )
    list_filter = (
        "status",
        "verifier",
        ("finding__token_type", admin.AllValuesFieldListFilter),
        ("project", admin.RelatedOnlyFieldListFilter),
        ("last_error_code", admin.AllValuesFieldListFilter),
    )
    list_select_related = ("finding", "project")
    search_fields = ("=finding__id", "=last_request_id", "project__path_with_namespace", "finding__token_type")
    fields = (
        "finding_shown",
        "project",
        "token_type",
        "token",
        "status_badge",
        "verifier",
        "last_verified_at",
        "attempts",
        "last_error_code",
        "last_request_id",
        "next_refresh_at",
        "routed_at",
        "pending_since",
        "accepted_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    actions = ["verify_now", "refresh_now"]
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: FindingTokenStatus | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: FindingTokenStatus | None = None) -> bool:
        return False  # one per finding: it goes with its finding

    @admin.display(description="Finding", ordering="finding_id")
    def finding_shown(self, obj: FindingTokenStatus) -> str:
        url = reverse("admin:secret_detection_finding_change", args=[obj.finding_id])
        return format_html('<a href="{}">#{} {}</a>', url, obj.finding_id, obj.finding.location)

    @admin.display(description="Type", ordering="finding__token_type")
    def token_type(self, obj: FindingTokenStatus) -> str:
        return obj.finding.token_type

    @admin.display(description="Token")
    def token(self, obj: FindingTokenStatus) -> str:
        return obj.finding.value_fingerprint

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: FindingTokenStatus) -> str:
        return _badge(obj.status)

    @admin.action(description="Verify now")
    def verify_now(self, request: HttpRequest, queryset) -> None:
        counts = services.token_statuses_verify_now(
            finding_ids=list(queryset.values_list("pk", flat=True)), user_id=request.user.pk
        )
        parts = []
        if counts.get("enqueued"):
            parts.append(f"{counts['enqueued']} sent for partner verification")
        if counts.get("checked_locally"):
            parts.append(f"{counts['checked_locally']} checked against our tokens")
        skipped = {reason: n for reason, n in counts.items() if reason not in ("enqueued", "checked_locally")}
        for reason, number in skipped.items():
            parts.append(f"{number} not verifiable ({reason.replace('_', ' ')})")
        level = messages.WARNING if skipped else messages.SUCCESS
        self.message_user(request, "Verify now: " + ("; ".join(parts) or "nothing selected") + ".", level)

    @admin.action(description="Refresh now")
    def refresh_now(self, request: HttpRequest, queryset) -> None:
        due = services.token_statuses_refresh_now(finding_ids=list(queryset.values_list("pk", flat=True)))
        if due:
            self.message_user(request, f"{due} status(es) are due now; a refresh tick was started.", messages.SUCCESS)
        else:
            self.message_user(request, "Nothing to refresh: the selected statuses are pending.", messages.WARNING)
