"""The admin site: the job console first, django-q2's transport tables out of the index."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

#: django-q2's own models describe messages in transit, not the record of a job (that is
#: the job run). They stay reachable from the console, not from the index.
TRANSPORT_APPS = ("django_q",)


class AdminSite(admin.AdminSite):
    site_header = "Background jobs administration"
    site_title = "Background jobs"
    index_title = "Overview"
    site_url = None  # there is no public site to go to
    # The sidebar's 250 px are what the lists need to fit a 1400 px window; the index
    # and the breadcrumbs lead everywhere it does.
    enable_nav_sidebar = False

    def get_urls(self):
        from project.jobs import console  # the toolkit's admin pages

        return console.urls(self) + super().get_urls()

    def get_app_list(self, request: HttpRequest, app_label: str | None = None):
        apps = super().get_app_list(request, app_label)
        if app_label is None:
            apps = [app for app in apps if app["app_label"] not in TRANSPORT_APPS]
        # The jobs first: the console and its runs are where an operator starts.
        return sorted(apps, key=lambda app: app["app_label"] != "jobs")

    def index(self, request: HttpRequest, extra_context: dict | None = None) -> TemplateResponse:
        from project.jobs import console  # the toolkit's admin pages

        return super().index(request, {**console.summary_context(request), **(extra_context or {})})
