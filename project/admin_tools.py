"""What every admin page of the product shares: read-only records whose actions show as
buttons on their detail page, actions that each declare the permission they need, times
to the second (relative where that reads better), and lists that stay cheap on big tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString

from project.errors import AppError

COUNT_CAP = 10_000


# --- times ------------------------------------------------------------------------------


def seconds_text(seconds: float) -> str:
    """A short duration: 0.42 s, 12 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    seconds = abs(seconds)
    if seconds < 10:
        return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative(value: dt.datetime, now: dt.datetime | None = None) -> str:
    """ "in 12 s" or "3 min ago"."""
    delta = (value - (now or timezone.now())).total_seconds()
    if abs(delta) < 0.5:
        return "now"
    return f"in {seconds_text(delta)}" if delta > 0 else f"{seconds_text(delta)} ago"


def absolute(value: dt.datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")


def when(value: dt.datetime | None, *, now: dt.datetime | None = None, empty: str = "-") -> str:
    """A time as "3 min ago" / "in 12 s" within a day (the exact time, to the second, on
    hover), and as the exact time when further away."""
    if value is None:
        return empty
    now = now or timezone.now()
    if abs((value - now).total_seconds()) < 86400:
        return format_html(
            '<time datetime="{}" title="{}">{}</time>', value.isoformat(), absolute(value), relative(value, now)
        )
    return format_html('<time datetime="{}">{}</time>', value.isoformat(), absolute(value))


def time_column(field: str, description: str, *, empty: str = "-") -> Callable[[Any, Any], str]:
    """A list or detail column that shows a time field with ``when()``:
    ``created_shown = time_column("created_at", "Created")`` in a ModelAdmin."""

    @admin.display(description=description, ordering=field)
    def shown(model_admin: Any, obj: Any) -> str:
        return when(getattr(obj, field), empty=empty)

    shown.__name__ = f"{field}_shown"
    return shown


def duration(start: dt.datetime | None, end: dt.datetime | None) -> str:
    if start is None:
        return "-"
    return seconds_text(((end or timezone.now()) - start).total_seconds())


def clipped(text: str, length: int = 60) -> str:
    """Text cut to ``length`` characters, the whole of it on hover."""
    if not text:
        return ""
    if len(text) <= length:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[: length - 1])


def badge(label: str, colour: str) -> SafeString:
    return format_html('<span class="badge" style="--badge:{}">{}</span>', colour, label)


def admin_link(obj: Model | None, text: str | None = None) -> str:
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else str(obj))


# --- lists that stay cheap --------------------------------------------------------------


class CappedPaginator(Paginator):
    """Counts at most COUNT_CAP + 1 rows: the exact total of a million-row table is not
    worth a scan on every page view."""

    @cached_property
    def count(self) -> int:
        if isinstance(self.object_list, QuerySet):
            return self.object_list.order_by()[: COUNT_CAP + 1].count()
        return len(self.object_list)


def estimated_rows(table: str) -> int:
    """PostgreSQL's own estimate of a table's size (no scan)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE relname = %s", [table])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


# --- controlled records -----------------------------------------------------------------

_ActionFunc = TypeVar("_ActionFunc", bound=Callable[..., Any])


def detail_button(label: str) -> Callable[[_ActionFunc], _ActionFunc]:
    """The label of an admin action's button on the detail page (see ``ControlledAdmin``);
    without it the button shows the action's description."""

    def decorate(func: _ActionFunc) -> _ActionFunc:
        func.__dict__["button_label"] = label
        return func

    return decorate


class ControlledAdmin(admin.ModelAdmin):
    """Read-only records an operator acts on.

    * Nobody edits or adds them here: the detail page has no Save buttons.
    * ``detail_actions`` names admin actions that also show as buttons on the detail page
      (POSTed to ``<pk>/act/<name>/``), when the user holds their permission and
      ``action_applies(obj, name)`` says they make sense for that record.
    * Every action declares its permissions (``@admin.action(permissions=[...])``). A
      POST of an action the user may not run is refused with 403, on the list and on
      the detail page alike.
    """

    detail_actions: Sequence[str] = ()
    change_form_template = "admin/controlled_change_form.html"
    paginator = CappedPaginator
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def action_applies(self, obj: Any, name: str) -> bool:
        return True

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None):
        # Every field a controlled record's page shows is read-only: the fieldsets name
        # them once.
        if self.fieldsets:
            return flatten_fieldsets(self.fieldsets)
        return super().get_readonly_fields(request, obj)

    # -- permission enforcement

    def _declared_actions(self) -> dict[str, Callable[..., Any]]:
        return {name: func for func, name, _ in self._get_base_actions()}  # type: ignore[attr-defined]  # private Django API, not in django-stubs

    def _refuse_unpermitted(self, request: HttpRequest, name: str) -> None:
        if name in self._declared_actions() and name not in self.get_actions(request):
            raise PermissionDenied(f"You may not run {name!r} here.")

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if request.method == "POST" and "action" in request.POST:
            for name in request.POST.getlist("action"):
                self._refuse_unpermitted(request, name)
        return super().changelist_view(request, extra_context)

    # -- the detail page's buttons

    def get_urls(self):
        opts = self.model._meta
        return [
            path(
                "<path:object_id>/act/<str:action>/",
                self.admin_site.admin_view(self.detail_action_view),
                name=f"{opts.app_label}_{opts.model_name}_act",
            ),
            *super().get_urls(),
        ]

    def detail_buttons(self, request: HttpRequest, obj: Any) -> list[dict[str, str]]:
        actions = self.get_actions(request)
        opts = self.model._meta
        buttons = []
        for name in self.detail_actions:
            entry = actions.get(name)
            if entry is not None and self.action_applies(obj, name):
                func, _, description = entry
                buttons.append(
                    {
                        "name": name,
                        "label": getattr(func, "button_label", None) or str(description),
                        "url": reverse(f"admin:{opts.app_label}_{opts.model_name}_act", args=[obj.pk, name]),
                    }
                )
        return buttons

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None):
        extra = dict(extra_context or {})
        obj = self.get_object(request, object_id)
        if obj is not None:
            extra["detail_buttons"] = self.detail_buttons(request, obj)
        return super().change_view(request, object_id, form_url, extra)

    def detail_action_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(status=405)
        if action not in self.detail_actions:
            raise PermissionDenied(f"{action!r} is not an action of this page.")
        self._refuse_unpermitted(request, action)
        entry = self.get_actions(request).get(action)
        if entry is None:
            raise PermissionDenied(f"{action!r} is not an action of this page.")
        queryset = self.get_queryset(request).filter(pk=object_id)
        if not queryset.exists():
            self.message_user(request, f"#{object_id} does not exist.", messages.ERROR)
            return HttpResponseRedirect(
                reverse(f"admin:{self.model._meta.app_label}_{self.model._meta.model_name}_changelist")
            )
        # An action returns a response or None (django-stubs types its result as str).
        response = cast("HttpResponse | None", entry[0](self, request, queryset))
        if response is not None:
            return response
        return HttpResponseRedirect(
            reverse(f"admin:{self.model._meta.app_label}_{self.model._meta.model_name}_change", args=[object_id])
        )

    # -- reporting

    def report(
        self,
        request: HttpRequest,
        *,
        done: int,
        verb: str,
        noun: str,
        problems: Sequence[str] = (),
        detail: str = "",
    ) -> None:
        """One message for a bulk action: a success when something was done, a warning
        when nothing was; then one warning per record left alone, and why. ``detail``
        replaces the count when a single record was acted on (a detail page's button)."""
        for problem in problems:
            self.message_user(request, problem, messages.WARNING)
        if done:
            self.message_user(request, detail or f"{verb} {done} {noun}.", messages.SUCCESS)
        else:
            self.message_user(request, f"Nothing was {verb.lower()}.", messages.WARNING)

    def each(
        self, request: HttpRequest, queryset: QuerySet, act: Callable[[Any], object], *, verb: str, noun: str
    ) -> int:
        """Run ``act`` on each selected record; an ``AppError`` leaves that record alone and
        its message is shown."""
        done, problems, said = 0, [], []
        selected = list(queryset)
        for obj in selected:
            try:
                outcome = act(obj)
            except AppError as exc:
                problems.append(f"{obj}: {exc.message}")
            else:
                done += 1
                said.append(outcome if isinstance(outcome, str) else getattr(outcome, "message", ""))
        detail = said[0] if len(selected) == 1 and said and said[0] else ""
        self.report(request, done=done, verb=verb, noun=noun, problems=problems, detail=detail)
        return done
