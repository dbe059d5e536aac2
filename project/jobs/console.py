"""The job console at ``/admin/jobs/``: one page that answers "what is running, what
failed, what retries when, is anything stuck", with the controls to act on it.

The page refreshes its figures every few seconds by fetching ``?partial=1`` (a local
script, no network). Every control is a POST to ``/admin/jobs/control/``, checked
against the permission it needs and carried out by ``project.jobs.control`` or by the
switch's own service.
"""

from __future__ import annotations

import datetime as dt
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString

from project.errors import AppError
from project.jobs import control, overview
from project.jobs.admin import attach_targets, progress_text, status_badge, target_link
from project.jobs.models import JobRun

VIEW_PERMISSION = "jobs.view_jobrun"
#: The console lists the running runs, oldest first, up to this many.
RUNNING_SHOWN = 15
CONTROL_PERMISSION = "jobs.control_jobrun"
REFRESH_SECONDS = 5


def urls(site: AdminSite) -> list[URLPattern]:
    return [
        path("jobs/", site.admin_view(console_view), name="jobs_console"),
        path("jobs/control/", site.admin_view(control_view), name="jobs_control"),
    ]


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"This needs the {permission} permission.")


def console_view(request: HttpRequest) -> HttpResponse:
    _require(request, VIEW_PERMISSION)
    data = overview.overview()
    running = list(JobRun.objects.filter(status=JobRun.Status.RUNNING).order_by("started_at")[:RUNNING_SHOWN])
    attach_targets(running)
    context = {
        "running": [(run, target_link(run), status_badge(run), progress_text(run, length=60)) for run in running],
        "running_more": max(0, data.totals["running"] - len(running)),
        "overview": data,
        # Jobs with nothing queued, running, paused or finished in 24 h fold away.
        "busy_jobs": [row for row in data.jobs if not row.idle],
        "idle_jobs": [row for row in data.jobs if row.idle],
        "chart": chart_svg(data.chart, now=data.now),
        "can_control": request.user.has_perm(CONTROL_PERMISSION),
        "switches": [(switch, request.user.has_perm(switch.permission)) for switch in data.switches],
        "refresh_seconds": REFRESH_SECONDS,
        "runs_url": reverse("admin:jobs_jobrun_changelist"),
    }
    if request.GET.get("partial"):
        return TemplateResponse(request, "admin/jobs/_live.html", context)
    from django.contrib import admin

    return TemplateResponse(
        request,
        "admin/jobs/console.html",
        {**admin.site.each_context(request), "title": "Job console", **context},
    )


def _back(request: HttpRequest) -> HttpResponseRedirect:
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("admin:jobs_console")
    return HttpResponseRedirect(target or reverse("admin:jobs_console"))


def control_view(request: HttpRequest) -> HttpResponse:
    """One POST endpoint for the console's buttons."""
    if request.method != "POST":
        return HttpResponse(status=405)
    op = request.POST.get("op", "")
    by = request.user.get_username()
    if op == "switch":
        key = request.POST.get("key", "")
        found = overview.switch_source(key)
        if found is None:
            messages.error(request, f"There is no switch {key!r}.")
            return _back(request)
        source, switch = found
        _require(request, switch.permission)
        on = request.POST.get("on") == "1"
        try:
            messages.success(request, source.flip(key, on, by))
        except AppError as exc:
            messages.error(request, str(exc))
        return _back(request)
    operations = {
        "pause": lambda: control.job_pause(name=request.POST.get("name", ""), by=by),
        "resume": lambda: control.job_resume(name=request.POST.get("name", ""), by=by),
        "run_schedule": lambda: control.schedule_run_now(name=request.POST.get("name", ""), by=by),
        "cancel": lambda: control.run_cancel(run_id=_run_id(request), by=by),
        "retry_now": lambda: control.run_retry_now(run_id=_run_id(request), by=by),
        "rerun": lambda: control.run_rerun(run_id=_run_id(request), by=by),
    }
    if op not in operations:
        messages.error(request, f"Unknown control {op!r}.")
        return _back(request)
    _require(request, CONTROL_PERMISSION)
    try:
        messages.success(request, operations[op]().message)
    except AppError as exc:
        messages.warning(request, str(exc))
    return _back(request)


def _run_id(request: HttpRequest) -> int:
    from project.errors import ValidationFailed

    try:
        return int(request.POST.get("run_id", ""))
    except ValueError:
        raise ValidationFailed("A run id is a number.") from None


# --- the chart --------------------------------------------------------------------------

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM = 1200, 140, 40, 18


def chart_svg(rows: list[tuple[dt.datetime, int, int]], *, now: dt.datetime | None = None) -> SafeString:
    """Runs that succeeded (green) and failed (red) per minute over the last 24 h, as an
    inline SVG drawn here: no script, no network."""
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    start = now - timedelta(hours=24)
    minutes = 24 * 60
    succeeded = [0] * (minutes + 1)
    failed = [0] * (minutes + 1)
    for minute, ok, bad in rows:
        index = int((minute - start).total_seconds() // 60)
        if 0 <= index <= minutes:
            succeeded[index] += ok
            failed[index] += bad
    peak = max([*succeeded, *failed, 1])
    plot_w, plot_h = WIDTH - PAD_LEFT - 4, HEIGHT - PAD_BOTTOM - 6

    def points(values: list[int]) -> str:
        return " ".join(
            f"{PAD_LEFT + plot_w * i / minutes:.1f},{6 + plot_h * (1 - value / peak):.1f}"
            for i, value in enumerate(values)
        )

    ticks = []
    for hours_ago in range(24, -1, -4):
        x = PAD_LEFT + plot_w * (minutes - hours_ago * 60) / minutes
        label = timezone.localtime(now - timedelta(hours=hours_ago)).strftime("%H:%M")
        ticks.append((f"{x:.1f}", HEIGHT - 4, label))
    total_ok, total_bad = sum(succeeded), sum(failed)
    return format_html(
        '<svg class="console-chart" viewBox="0 0 {w} {h}" width="100%" height="{h}" role="img" '
        'aria-label="Runs per minute over the last 24 hours: {ok} succeeded, {bad} failed">'
        '<line x1="{pl}" y1="6" x2="{pl}" y2="{base}" stroke="#999"/>'
        '<line x1="{pl}" y1="{base}" x2="{right}" y2="{base}" stroke="#999"/>'
        '<text x="{tx}" y="14" font-size="10" text-anchor="end">{peak}/min</text>'
        '<text x="{tx}" y="{base}" font-size="10" text-anchor="end">0</text>'
        '<polyline fill="none" stroke="#2e7d32" stroke-width="1" points="{ok_points}"/>'
        '<polyline fill="none" stroke="#c62828" stroke-width="1.2" points="{bad_points}"/>'
        "{ticks}</svg>",
        w=WIDTH,
        h=HEIGHT,
        ok=total_ok,
        bad=total_bad,
        pl=PAD_LEFT,
        base=6 + plot_h,
        right=WIDTH - 4,
        tx=PAD_LEFT - 4,
        peak=peak,
        ok_points=points(succeeded),
        bad_points=points(failed),
        ticks=format_html_join("", '<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>', ticks),
    )


def summary_context(request: HttpRequest) -> dict[str, Any]:
    """The admin index's panel: the console's verdict in one line."""
    if not request.user.has_perm(VIEW_PERMISSION):
        return {}
    data = overview.Overview(
        now=timezone.now(),
        jobs=overview.job_rows(),
        clusters=overview.cluster_rows(),
        broker={},
        oldest_due_age_seconds=None,
        schedules=[],
        backlogs=[],
        switches=[],
    )
    due = [row.oldest_due_at for row in data.jobs if row.oldest_due_at is not None and not row.paused]
    data.oldest_due_age_seconds = (data.now - min(due)).total_seconds() if due else None
    return {"console_summary": data}
