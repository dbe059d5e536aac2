from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from project import services
from project.errors import AppError
from project.forms import AccessTokenCreateForm, ApplicationSettingForm
from project.models import AccessToken, ApplicationSetting, Issue, Label, Note, Project, ProjectMember, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "is_staff", "is_active", "date_joined")


class MemberInline(admin.TabularInline):
    model = ProjectMember
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("id", "path_with_namespace", "name", "visibility_level", "issue_count", "created_at")
    list_filter = ("visibility_level",)
    search_fields = ("path_with_namespace", "name")
    readonly_fields = ("path_with_namespace", "created_at", "updated_at")
    inlines = [MemberInline]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).annotate(issue_total=Count("issues", distinct=True))

    def save_model(self, request: HttpRequest, obj: Project, form, change: bool) -> None:
        if change:
            services.project_update(project=obj, fields=form.changed_data)
        else:
            super().save_model(request, obj, form, change)

    @admin.display(description="Issues", ordering="issue_total")
    def issue_count(self, obj: Project) -> int:
        return obj.issue_total


@admin.register(ProjectMember)
class ProjectMemberAdmin(admin.ModelAdmin):
    list_display = ("project", "user", "access_level", "created_at")
    list_filter = ("access_level",)
    list_select_related = ("project", "user")
    search_fields = ("project__path_with_namespace", "user__username")
    autocomplete_fields = ("project", "user")


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    list_display = ("title", "project", "color")
    list_select_related = ("project",)
    search_fields = ("title", "project__path_with_namespace")
    autocomplete_fields = ("project",)


class NoteInline(admin.TabularInline):
    model = Note
    extra = 0
    fields = ("author", "note", "created_at")
    raw_id_fields = ("author",)


@admin.register(Issue)
class IssueAdmin(admin.ModelAdmin):
    list_display = ("iid", "title", "project", "state", "created_at")
    list_filter = ("state",)
    list_select_related = ("project",)
    search_fields = ("title", "project__path_with_namespace")
    raw_id_fields = ("project", "author")
    filter_horizontal = ("labels",)
    inlines = [NoteInline]


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    """Tokens are created here and shown once; afterwards only the prefix is visible."""

    list_display = ("name", "user", "prefix_shown", "scopes", "expires_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at", "expires_at")
    list_select_related = ("user",)
    search_fields = ("name", "user__username")
    readonly_fields = ("user", "name", "prefix_shown", "scopes", "last_used_at", "created_at", "revoked_at")
    fields = (*readonly_fields, "expires_at")
    actions = ["revoke"]

    @admin.display(description="Token")
    def prefix_shown(self, obj: AccessToken) -> str:
        return f"{obj.prefix}…"

    def get_form(self, request: HttpRequest, obj: AccessToken | None = None, **kwargs):
        if obj is None:
            return AccessTokenCreateForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request: HttpRequest, obj: AccessToken | None = None):
        if obj is None:
            return ("user", "name", "scopes", "expires_at")
        return self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: AccessToken | None = None):
        return () if obj is None else self.readonly_fields

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        if request.method != "POST":
            return super().add_view(request, form_url, extra_context)
        form = AccessTokenCreateForm(request.POST)
        if not form.is_valid():
            return super().add_view(request, form_url, extra_context)
        try:
            token, value = services.access_token_create(**form.cleaned_data)
        except AppError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return super().add_view(request, form_url, extra_context)
        # Rendered directly, never stored in a message or session, and never shown again.
        return TemplateResponse(
            request,
            "admin/project/accesstoken/created.html",
            {
                **self.admin_site.each_context(request),
                "title": "Personal access token created",
                "token": token,
                "value": value,
                "opts": self.model._meta,
                "changelist_url": reverse("admin:project_accesstoken_changelist"),
            },
        )

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset) -> None:
        revoked = sum(services.access_token_revoke(token_id=pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)


@admin.register(ApplicationSetting)
class ApplicationSettingAdmin(admin.ModelAdmin):
    """A single row: the list page opens it directly."""

    form = ApplicationSettingForm
    readonly_fields = ("updated_at", "sdrs_connection")
    fieldsets = [
        (
            "Project exports",
            {"fields": ("project_export_enabled", "project_export_limit", "project_download_export_limit")},
        ),
        ("CI catalog", {"fields": ("catalog_sync_enabled",)}),
        (
            "Secret detection: partner token verification (SDRS)",
            {
                "fields": (
                    "sdrs_enabled",
                    "sdrs_url",
                    "sdrs_jwt_signing_key",
                    "clear_sdrs_jwt_signing_key",
                    "sdrs_callback_secret",
                    "clear_sdrs_callback_secret",
                    "sdrs_timeout",
                    "sdrs_connection",
                )
            },
        ),
        (None, {"fields": ("updated_at",)}),
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ApplicationSetting | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ApplicationSetting, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        changed = [name.removeprefix("clear_") for name in form.changed_data]
        services.setting_changes_record(
            changes={name: getattr(obj, name, "") for name in dict.fromkeys(changed) if hasattr(obj, name)},
            by=request.user.get_username(),
        )

    @admin.display(description="Connection")
    def sdrs_connection(self, obj: ApplicationSetting) -> str:
        return format_html(
            '<a class="button" href="{}">Check connection</a>&nbsp; Probes SDRS with the saved settings and a '
            "signed request that carries no token. Save changes first.",
            reverse("admin:secret_detection_sdrs_check"),
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        row = ApplicationSetting.current()
        return HttpResponseRedirect(reverse("admin:project_applicationsetting_change", args=[row.pk]))
