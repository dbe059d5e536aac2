"""CI catalog resources (added and published here) and their sync events (read-only), with
"Resync" and "Process pending events now"; both need ``catalog.sync_catalogresource``."""

from __future__ import annotations

import functools
import operator
from datetime import timedelta
from typing import TYPE_CHECKING, TypedDict
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import BooleanField, ExpressionWrapper, F, Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from catalog import services
from catalog.models import SYNCED_FIELDS, CatalogResource, SyncEvent
from project.admin_tools import ControlledAdmin, admin_link, badge, clipped, detail_button, seconds_text, time_column
from project.errors import AppError
from project.jobs import JobRun

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

PROCESS_JOB = "catalog.process_sync_events"
SYNC_PERMISSION = "catalog.sync_catalogresource"


class _InSync(TypedDict):
    is_in_sync: bool


#: Computed in SQL next to the project's columns, so the list needs no query per row.
IN_SYNC = ExpressionWrapper(
    functools.reduce(operator.and_, (Q(**{field: F(f"project__{field}")}) for field in SYNCED_FIELDS)),
    output_field=BooleanField(),
)


def processor_runs_url() -> str:
    return f"{reverse('admin:jobs_jobrun_changelist')}?{urlencode({'job': PROCESS_JOB, 'kind': 'all'})}"


def _process_now(model_admin: admin.ModelAdmin, request: HttpRequest) -> None:
    """Queue a processor run. Only a queued run is a success; anything else says why
    nothing was done."""
    if not services.catalog_sync_enabled():
        model_admin.message_user(
            request,
            "CI catalog sync is switched off in the application settings; events are kept until it is on again.",
            messages.ERROR,
        )
        return
    pending = services.catalog_sync_events_pending_stats()["pending"]
    if not pending:
        model_admin.message_user(request, "No event is pending.", messages.WARNING)
    elif services.catalog_sync_request(source="admin"):
        model_admin.message_user(
            request, f"A processor run was queued for {pending} pending event(s).", messages.SUCCESS
        )
    else:
        model_admin.message_user(
            request,
            f"A processor is running; it takes the {pending} pending event(s) before it stops.",
            messages.WARNING,
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
class CatalogResourceAdmin(ControlledAdmin):
    """Resources are added (from a project) and published here; their copied fields are
    read-only and kept by sync."""

    list_display = (
        "id",
        "name_shown",
        "project_link",
        "state",
        "visibility_level",
        "in_sync",
        "synced_shown",
    )
    list_display_links = ("id", "name_shown")
    list_filter = ("state", InSyncFilter, "visibility_level")
    list_select_related = ("project",)
    search_fields = ("name", "project__path_with_namespace")
    autocomplete_fields = ("project",)
    actions = ["resync_selected", "process_pending_now"]
    detail_actions = ("resync_selected",)

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("project").annotate(is_in_sync=IN_SYNC)

    # Adding a resource and changing its state are edits, by the model's own permissions.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return admin.ModelAdmin.has_add_permission(self, request)

    def has_change_permission(self, request: HttpRequest, obj: CatalogResource | None = None) -> bool:
        return admin.ModelAdmin.has_change_permission(self, request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: CatalogResource | None = None) -> bool:
        return admin.ModelAdmin.has_delete_permission(self, request, obj)

    def has_sync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(SYNC_PERMISSION)

    def get_fields(self, request: HttpRequest, obj: CatalogResource | None = None):
        if obj is None:
            return ("project", "state")
        return (
            "project",
            "state",
            "name",
            "description",
            "visibility_level",
            "in_sync",
            "synced_shown",
            "created_shown",
            "updated_shown",
            "events_shown",
            "runs_shown",
        )

    def get_readonly_fields(self, request: HttpRequest, obj: CatalogResource | None = None):
        # A resource's state is all an operator edits; the rest is copied from its project.
        if obj is None:
            return ()
        return tuple(field for field in self.get_fields(request, obj) if field != "state")

    @admin.display(description="Name", ordering="name")
    def name_shown(self, obj: CatalogResource) -> str:
        return clipped(obj.name, 28)

    @admin.display(description="Project", ordering="project__path_with_namespace")
    def project_link(self, obj: CatalogResource) -> str:
        return admin_link(obj.project, clipped(obj.project.path_with_namespace, 28))

    @admin.display(description="In sync", boolean=True, ordering="is_in_sync")
    def in_sync(self, obj: WithAnnotations[CatalogResource, _InSync]) -> bool:
        return obj.is_in_sync

    synced_shown = time_column("synced_at", "Synced", empty="never")

    created_shown = time_column("created_at", "Created")

    updated_shown = time_column("updated_at", "Updated")

    @admin.display(description="Sync events")
    def events_shown(self, obj: CatalogResource) -> str:
        pending = SyncEvent.objects.pending().filter(catalog_resource_id=obj.pk).count()
        url = f"{reverse('admin:catalog_syncevent_changelist')}?{urlencode({'catalog_resource_id': obj.pk})}"
        return format_html('<a href="{}">Events of this resource</a> ({} pending)', url, pending)

    @admin.display(description="Processor runs")
    def runs_shown(self, obj: CatalogResource) -> str:
        latest = JobRun.objects.filter(name=PROCESS_JOB).order_by("-id").first()
        last = format_html(", latest {} ({})", admin_link(latest, f"#{latest.pk}"), latest.status) if latest else ""
        return format_html('<a href="{}">Runs of {}</a>{}', processor_runs_url(), PROCESS_JOB, last)

    def save_model(self, request: HttpRequest, obj: CatalogResource, form, change: bool) -> None:
        if change:
            services.catalog_resource_set_state(resource_id=obj.pk, state=obj.state)
            return
        created = services.catalog_resource_create(project_id=obj.project_id, state=obj.state)
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False

    @detail_button("Resync")
    @admin.action(description="Resync selected resources from their projects", permissions=["sync"])
    def resync_selected(self, request: HttpRequest, queryset) -> None:
        result = services.catalog_resources_resync(resource_ids=list(queryset.values_list("pk", flat=True)))
        if not result["checked"]:
            self.message_user(request, "Nothing was resynced.", messages.WARNING)
            return
        level = messages.SUCCESS if result["updated"] else messages.WARNING
        self.message_user(
            request,
            f"Resynced {result['checked']} resource(s): {result['updated']} updated, "
            f"{result['checked'] - result['updated']} already in sync.",
            level,
        )

    @admin.action(description="Process pending events now", permissions=["sync"])
    def process_pending_now(self, request: HttpRequest, queryset) -> None:
        _process_now(self, request)


class EventChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        attach_resources(self.result_list)


def attach_resources(events) -> None:
    """Load the events' resources (and projects) in one query: events carry ids only."""
    ids = {event.catalog_resource_id for event in events}
    found = CatalogResource.objects.select_related("project").in_bulk(ids) if ids else {}
    for event in events:
        event.resource_obj = found.get(event.catalog_resource_id)


@admin.register(SyncEvent)
class SyncEventAdmin(ControlledAdmin):
    list_display = (
        "id",
        "status_shown",
        "resource_link",
        "project_link",
        "created_shown",
        "processed_shown",
        "lag_shown",
    )
    list_filter = ("status", "created_at", "processed_at")
    search_fields = ("=id", "=catalog_resource_id", "=project_id")
    fields = ("status_shown", "resource_link", "project_link", "created_shown", "processed_shown", "lag_shown")
    readonly_fields = fields
    actions = ["process_pending_now"]
    list_per_page = 50

    def get_changelist(self, request: HttpRequest, **kwargs):
        return EventChangeList

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None):
        event = super().get_object(request, object_id, from_field)
        if event is not None:
            attach_resources([event])
        return event

    def has_sync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(SYNC_PERMISSION)

    @admin.display(description="Status", ordering="status")
    def status_shown(self, obj: SyncEvent) -> str:
        colour = "#777" if obj.status == SyncEvent.Status.PENDING else "#2e7d32"
        return badge(obj.get_status_display(), colour)

    @admin.display(description="Catalog resource", ordering="catalog_resource_id")
    def resource_link(self, obj: SyncEvent) -> str:
        resource = getattr(obj, "resource_obj", None)
        if resource is None:
            # Events carry no foreign key: the resource may be gone (an orphan event).
            return f"#{obj.catalog_resource_id} (deleted)"
        return admin_link(resource, clipped(resource.name or f"#{resource.pk}", 28))

    @admin.display(description="Project", ordering="project_id")
    def project_link(self, obj: SyncEvent) -> str:
        resource = getattr(obj, "resource_obj", None)
        if resource is None or resource.project_id != obj.project_id:
            url = reverse("admin:project_project_change", args=[obj.project_id])
            return format_html('<a href="{}">#{}</a>', url, obj.project_id)
        return admin_link(resource.project, clipped(resource.project.path_with_namespace, 28))

    created_shown = time_column("created_at", "Created")

    processed_shown = time_column("processed_at", "Processed", empty="")

    @admin.display(description="Lag")
    def lag_shown(self, obj: SyncEvent) -> str:
        lag = obj.lag
        return seconds_text(lag.total_seconds()) if lag is not None else ""

    @admin.action(description="Process pending events now", permissions=["sync"])
    def process_pending_now(self, request: HttpRequest, queryset) -> None:
        _process_now(self, request)

    def get_urls(self):
        process = self.admin_site.admin_view(require_POST(self.process_view))
        return [path("process/", process, name="catalog_syncevent_process"), *super().get_urls()]

    def process_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_sync_permission(request):
            raise PermissionDenied("You may not process catalog sync events.")
        try:
            _process_now(self, request)
        except AppError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(reverse("admin:catalog_syncevent_changelist"))

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        stats = services.catalog_sync_events_pending_stats()
        context = {
            "catalog_pending": stats["pending"],
            "catalog_oldest_created_at": stats["oldest_created_at"],
            "catalog_oldest_age": timedelta(seconds=round(stats["oldest_age_seconds"])),
            "catalog_sync_enabled": services.catalog_sync_enabled(),
            "catalog_processor_running": services.catalog_processor_running(),
            "catalog_can_process": self.has_sync_permission(request),
            "catalog_runs_url": processor_runs_url(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)
