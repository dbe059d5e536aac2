from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView

import project.converters  # noqa: F401 - registers <project_ref:>
from project import read_api, views
from project.api import json_error_view, server_error

# Order matters: project routes take a <path:> id (namespace/path may contain "/"), so
# the app routes with a suffix come before the bare project route. The read API's take a
# <project_ref:> id, which lets a project whose path ends in "issues" reach the bare route.
api_v4: list[URLPattern | URLResolver] = [
    path("", include("exports.urls")),
    path("", include("catalog.urls")),
    path("", include("secret_detection.urls")),
    path("user", views.CurrentUserView.as_view(), name="api-user"),
    path("projects", read_api.ProjectListView.as_view(), name="api-projects"),
    path(
        "projects/<project_ref:project_id>/issues/<int:issue_iid>/notes",
        read_api.IssueNoteListView.as_view(),
        name="api-issue-notes",
    ),
    path(
        "projects/<project_ref:project_id>/issues/<int:issue_iid>/award_emoji",
        read_api.IssueAwardEmojiListView.as_view(),
        name="api-issue-award-emoji",
    ),
    path("projects/<project_ref:project_id>/issues/<int:issue_iid>", read_api.IssueView.as_view(), name="api-issue"),
    path("projects/<project_ref:project_id>/issues", read_api.IssueListView.as_view(), name="api-issues"),
    path("projects/<project_ref:project_id>/labels", read_api.LabelListView.as_view(), name="api-labels"),
    path("projects/<project_ref:project_id>/members/all", read_api.AllMemberListView.as_view(), name="api-members-all"),
    path("projects/<project_ref:project_id>/members", read_api.MemberListView.as_view(), name="api-members"),
    path("projects/<path:project_id>", views.ProjectView.as_view(), name="api-project"),
]

urlpatterns = [
    path("api/v4/", include(api_v4)),
    path("api/openapi.json", SpectacularJSONAPIView.as_view(), name="openapi-schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="openapi-schema"), name="api-docs"),
    path("-/liveness", views.liveness, name="liveness"),
    path("-/readiness", views.readiness, name="readiness"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
]

handler404 = json_error_view(404, "404 Not Found", "not_found")
# A 500, or the 503 with Retry-After when the database is unavailable (project.api).
handler500 = server_error
