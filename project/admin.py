from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db.models import Count, Exists, OuterRef
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django_q import admin as q_admin
from django_q.models import Failure, Success

from project import services
from project.admin_tools import ControlledAdmin, badge, clipped, detail_button, time_column
from project.errors import AppError
from project.forms import AccessTokenCreateForm, ApplicationSettingForm
from project.models import (
    AccessToken,
    ApplicationSetting,
    Issue,
    Label,
    LabelLink,
    Note,
    Project,
    ProjectMember,
    User,
)

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class _IssueTotal(TypedDict):
    issue_total: int


class _IsLive(TypedDict):
    is_live: bool


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "is_staff", "is_active", "date_joined")


class MemberInline(admin.TabularInline):
    model = ProjectMember
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("id", "path_with_namespace", "name", "visibility_level", "issue_count", "created_shown")
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
    def issue_count(self, obj: WithAnnotations[Project, _IssueTotal]) -> int:
        return obj.issue_total

    created_shown = time_column("created_at", "Created")


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


class LabelLinkInline(admin.TabularInline):
    # The labels relation has its own model (timestamps), which filter_horizontal cannot edit.
    model = LabelLink
    extra = 0
    fields = ("label", "created_at")
    readonly_fields = ("created_at",)
    raw_id_fields = ("label",)


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
    inlines = [LabelLinkInline, NoteInline]


@admin.register(AccessToken)
class AccessTokenAdmin(ControlledAdmin):
    """Tokens are created here and shown once; afterwards only the prefix is visible. A
    token's expiry may be changed; revoking it needs ``project.revoke_accesstoken``."""

    list_display = (
        "name_shown",
        "user_shown",
        "prefix_shown",
        "scopes_shown",
        "state_shown",
        "expires_at",
        "last_used_shown",
    )
    list_filter = ("revoked_at", "expires_at")
    list_select_related = ("user",)
    search_fields = ("name", "user__username", "prefix")
    readonly_fields = (
        "user",
        "name",
        "prefix_shown",
        "scopes_shown",
        "state_shown",
        "last_used_shown",
        "created_shown",
        "revoked_shown",
    )
    fields = (*readonly_fields, "expires_at")
    actions = ["revoke"]
    detail_actions = ("revoke",)

    # Creating a token and changing its expiry are edits, by the model's own permissions.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return admin.ModelAdmin.has_add_permission(self, request)

    def has_change_permission(self, request: HttpRequest, obj: AccessToken | None = None) -> bool:
        return admin.ModelAdmin.has_change_permission(self, request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: AccessToken | None = None) -> bool:
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("project.revoke_accesstoken")

    def action_applies(self, obj: AccessToken, name: str) -> bool:
        if name == "revoke":
            return obj.revoked_at is None
        return True

    @admin.display(description="Name", ordering="name")
    def name_shown(self, obj: AccessToken) -> str:
        return clipped(obj.name, 28)

    @admin.display(description="User", ordering="user__username")
    def user_shown(self, obj: AccessToken) -> str:
        return clipped(obj.user.get_username(), 16)

    @admin.display(description="Token")
    def prefix_shown(self, obj: AccessToken) -> str:
        return f"{obj.prefix}…"

    def get_queryset(self, request: HttpRequest):
        live = AccessToken.objects.live().filter(pk=OuterRef("pk"))
        return super().get_queryset(request).annotate(is_live=Exists(live))

    @admin.display(description="Scopes")
    def scopes_shown(self, obj: AccessToken) -> str:
        return ", ".join(obj.scopes or []) or "-"

    @admin.display(description="State", ordering="revoked_at")
    def state_shown(self, obj: WithAnnotations[AccessToken, _IsLive]) -> str:
        if obj.revoked_at is not None:
            return badge("revoked", "#5d4037")
        if not obj.is_live:  # annotated from AccessToken.objects.live(), the one definition
            return badge("expired", "#777")
        return badge("live", "#2e7d32")

    last_used_shown = time_column("last_used_at", "Last used", empty="never")

    created_shown = time_column("created_at", "Created")

    revoked_shown = time_column("revoked_at", "Revoked")

    def get_form(self, request: HttpRequest, obj: AccessToken | None = None, change: bool = False, **kwargs):
        if obj is None:
            return AccessTokenCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: AccessToken | None = None):
        if obj is None:
            return ("user", "name", "scopes", "expires_at")
        return self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: AccessToken | None = None):
        return () if obj is None else self.readonly_fields

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        if request.method != "POST":
            return super().add_view(request, form_url, extra_context)
        if not self.has_add_permission(request):
            return super().add_view(request, form_url, extra_context)  # refuses with 403
        form = AccessTokenCreateForm(request.POST)
        if not form.is_valid():
            return super().add_view(request, form_url, extra_context)
        try:
            token, value = services.access_token_create(**form.cleaned_data)
        except AppError as exc:
            self.message_user(request, str(exc), messages.ERROR)
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

    @detail_button("Revoke")
    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset) -> None:
        done, problems = 0, []
        for token in queryset:
            if services.access_token_revoke(token_id=token.pk):
                done += 1
            else:
                problems.append(f"{token}: already revoked.")
        self.report(request, done=done, verb="Revoked", noun="token(s)", problems=problems)


@admin.register(ApplicationSetting)
class ApplicationSettingAdmin(admin.ModelAdmin):
    """A single row: the list page opens it directly.

    A field the environment fixes (``ApplicationSetting.set_by_environment()``) is shown
    read-only, with the variable that sets it, in place of its input."""

    form = ApplicationSettingForm
    readonly_fields = ("updated_at", "sdrs_connection")
    #: The read-only stand-in shown for each field the environment may fix.
    FIXED_BY_ENVIRONMENT = {
        "sdrs_url": "env_sdrs_url",
        "sdrs_jwt_signing_key": "env_sdrs_jwt_signing_key",
        "sdrs_callback_secret": "env_sdrs_callback_secret",
        "sdrs_timeout": "env_sdrs_timeout",
    }
    fieldsets = [
        (
            "Project exports and imports",
            {
                "fields": (
                    "project_export_enabled",
                    "project_export_limit",
                    "project_download_export_limit",
                    "max_export_size",
                    "max_import_size",
                    "max_decompressed_archive_size",
                )
            },
        ),
        ("CI catalog", {"fields": ("catalog_sync_enabled",)}),
        (
            "Secret detection: partner token verification (SDRS)",
            {
                "description": "The switch is owned here (and on the job console). The URL, signing key, "
                "callback secret and timeout are deployment facts: when the environment sets one "
                "(SDRS_URL, SDRS_JWT_SIGNING_KEY_FILE, SDRS_CALLBACK_SECRET or SDRS_CALLBACK_SECRET_FILE, "
                "SDRS_TIMEOUT; see .env.example) its value is the one in force and shows here read-only; "
                "otherwise it is set here.",
                "fields": (
                    "sdrs_enabled",
                    "sdrs_url",
                    "sdrs_jwt_signing_key",
                    "clear_sdrs_jwt_signing_key",
                    "sdrs_callback_secret",
                    "clear_sdrs_callback_secret",
                    "sdrs_timeout",
                    "sdrs_connection",
                ),
            },
        ),
        (None, {"fields": ("updated_at",)}),
    ]

    def get_fieldsets(self, request: HttpRequest, obj: ApplicationSetting | None = None) -> list:
        fixed = ApplicationSetting.set_by_environment()
        hidden = {f"clear_{name}" for name in fixed}
        fieldsets = []
        for title, options in super().get_fieldsets(request, obj):
            fields = tuple(
                self.FIXED_BY_ENVIRONMENT[name] if name in fixed else name
                for name in options["fields"]
                if name not in hidden
            )
            fieldsets.append((title, {**options, "fields": fields}))
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: ApplicationSetting | None = None) -> tuple:
        fixed = ApplicationSetting.set_by_environment()
        return (*super().get_readonly_fields(request, obj), *(self.FIXED_BY_ENVIRONMENT[name] for name in fixed))

    @staticmethod
    def _set_by_environment(name: str, shown: object) -> str:
        variable = ApplicationSetting.set_by_environment().get(name, "")
        return format_html('{} <span class="help">set by the environment ({})</span>', shown, variable)

    @admin.display(description="SDRS URL")
    def env_sdrs_url(self, obj: ApplicationSetting) -> str:
        return self._set_by_environment("sdrs_url", obj.effective_sdrs().url)

    @admin.display(description="SDRS JWT signing key")
    def env_sdrs_jwt_signing_key(self, obj: ApplicationSetting) -> str:
        return self._set_by_environment("sdrs_jwt_signing_key", f"read from {obj.effective_sdrs().signing_key_file}")

    @admin.display(description="SDRS callback secret")
    def env_sdrs_callback_secret(self, obj: ApplicationSetting) -> str:
        return self._set_by_environment("sdrs_callback_secret", "a secret (not shown)")

    @admin.display(description="SDRS timeout (s)")
    def env_sdrs_timeout(self, obj: ApplicationSetting) -> str:
        return self._set_by_environment("sdrs_timeout", f"{obj.effective_sdrs().timeout:g}")

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


# --- django-q2's task tables -------------------------------------------------------------
# Its "resubmit" action declares no permission; resubmitting a task is a control of the
# job toolkit's, so it needs ``jobs.control_jobrun`` like the run admin's controls.


@admin.action(description="Resubmit selected tasks to queue", permissions=["control"])
def resubmit_task(model_admin: admin.ModelAdmin, request: HttpRequest, queryset) -> None:
    q_admin.resubmit_task(model_admin, request, queryset)


class _ControlledTasks:
    actions = [resubmit_task]

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.control_jobrun")


class SuccessAdmin(_ControlledTasks, q_admin.TaskAdmin):
    pass


class FailureAdmin(_ControlledTasks, q_admin.FailAdmin):
    pass


for _model, _admin_class in ((Success, SuccessAdmin), (Failure, FailureAdmin)):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, _admin_class)
