from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.db.models import BooleanField, ExpressionWrapper, F, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from catalog import services
from catalog.models import CatalogResource, SyncEvent
from project.errors import AppError

#: Computed in SQL next to the project's columns, so the list needs no query per row.
IN_SYNC = ExpressionWrapper(
    Q(name=F("project__name"))
    & Q(description=F("project__description"))
    & Q(visibility_level=F("project__visibility_level")),
    output_field=BooleanField(),
)


def _process_now(model_admin: admin.ModelAdmin, request: HttpRequest) -> None:
    if not services.catalog_sync_enabled():
        model_admin.message_user(
            request,
            "CI catalog sync is switched off in the application settings; events are kept until it is on again.",
            messages.ERROR,
        )
        return
    pending = services.catalog_sync_events_pending_stats()["pending"]
    if not pending:
        model_admin.message_user(request, "No event is pending.", messages.INFO)
    elif services.catalog_sync_request(source="admin"):
        model_admin.message_user(
            request, f"A processor run was queued for {pending} pending event(s).", messages.SUCCESS
        )
    else:
        model_admin.message_user(
            request, f"A processor is running; it takes the {pending} pending event(s) before it stops.", messages.INFO
        )


class InSyncFilter(admin.SimpleListFilter):
    title = "in sync with the project"
    parameter_name = "in_sync"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin):
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(is_in_sync=self.value() == "yes")
        return queryset


@admin.register(CatalogResource)
class CatalogResourceAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "project_link", "state", "visibility_level", "in_sync", "synced_at", "updated_at")
    list_filter = ("state", InSyncFilter, "visibility_level")
    list_select_related = ("project",)
    search_fields = ("name", "project__path_with_namespace")
    autocomplete_fields = ("project",)
    actions = ["resync_selected", "process_pending_now"]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).annotate(is_in_sync=IN_SYNC)

    def get_fields(self, request: HttpRequest, obj: CatalogResource | None = None):
        if obj is None:
            return ("project", "state")
        return ("project", "state", "name", "description", "visibility_level", "in_sync", "synced_at", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: CatalogResource | None = None):
        if obj is None:
            return ()
        return ("project", "name", "description", "visibility_level", "in_sync", "synced_at", "created_at")

    @admin.display(description="Project", ordering="project__path_with_namespace")
    def project_link(self, obj: CatalogResource) -> str:
        url = reverse("admin:project_project_change", args=[obj.project_id])
        return format_html('<a href="{}">{}</a>', url, obj.project.path_with_namespace)

    @admin.display(description="In sync", boolean=True, ordering="is_in_sync")
    def in_sync(self, obj: CatalogResource) -> bool:
        return obj.is_in_sync

    def save_model(self, request: HttpRequest, obj: CatalogResource, form, change: bool) -> None:
        if change:
            services.catalog_resource_set_state(resource_id=obj.pk, state=obj.state)
            return
        created = services.catalog_resource_create(project_id=obj.project_id, state=obj.state)
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False

    @admin.action(description="Resync selected resources")
    def resync_selected(self, request: HttpRequest, queryset) -> None:
        result = services.catalog_resources_resync(resource_ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(
            request,
            f"Resynced {result['checked']} resource(s): {result['updated']} updated, "
            f"{result['checked'] - result['updated']} already in sync.",
            messages.SUCCESS,
        )

    @admin.action(description="Process pending events now")
    def process_pending_now(self, request: HttpRequest, queryset) -> None:
        _process_now(self, request)


@admin.register(SyncEvent)
class SyncEventAdmin(admin.ModelAdmin):
    list_display = ("id", "status_shown", "resource_link", "project_link", "created_at", "processed_at", "lag_shown")
    list_filter = ("status", "created_at", "processed_at")
    search_fields = ("=id", "=catalog_resource_id", "=project_id")
    readonly_fields = ("catalog_resource_id", "project_id", "status", "created_at", "processed_at", "lag_shown")
    actions = ["process_pending_now"]
    list_per_page = 50
    # A full count of a large event table on every page view is not worth it.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: SyncEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: SyncEvent | None = None) -> bool:
        return False

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: SyncEvent) -> str:
        colour = "#777" if obj.status == SyncEvent.Status.PENDING else "#2e7d32"
        return format_html('<b style="color:{}">{}</b>', colour, obj.get_status_display())

    @admin.display(description="Catalog resource", ordering="catalog_resource_id")
    def resource_link(self, obj: SyncEvent) -> str:
        # Linked by id without a lookup: the resource may be gone (an orphan event).
        url = reverse("admin:catalog_catalogresource_change", args=[obj.catalog_resource_id])
        return format_html('<a href="{}">{}</a>', url, obj.catalog_resource_id)

    @admin.display(description="Project", ordering="project_id")
    def project_link(self, obj: SyncEvent) -> str:
        url = reverse("admin:project_project_change", args=[obj.project_id])
        return format_html('<a href="{}">{}</a>', url, obj.project_id)

    @admin.display(description="Lag")
    def lag_shown(self, obj: SyncEvent) -> str:
        lag = obj.lag
        return f"{lag.total_seconds():.3f} s" if lag is not None else "-"

    @admin.action(description="Process pending events now")
    def process_pending_now(self, request: HttpRequest, queryset) -> None:
        _process_now(self, request)

    def get_urls(self):
        process = self.admin_site.admin_view(require_POST(self.process_view))
        return [path("process/", process, name="catalog_syncevent_process"), *super().get_urls()]

    def process_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            return HttpResponseRedirect(reverse("admin:index"))
        try:
            _process_now(self, request)
        except AppError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        return HttpResponseRedirect(reverse("admin:catalog_syncevent_changelist"))

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        stats = services.catalog_sync_events_pending_stats()
        context = {
            "catalog_pending": stats["pending"],
            "catalog_oldest_created_at": stats["oldest_created_at"],
            "catalog_oldest_age": timedelta(seconds=round(stats["oldest_age_seconds"])),
            "catalog_sync_enabled": services.catalog_sync_enabled(),
            "catalog_processor_running": services.catalog_processor_running(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)
