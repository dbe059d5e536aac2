from django.urls import path

from exports import views

# The download route first: <path:> would otherwise swallow "…/export/download".
urlpatterns = [
    path(
        "projects/<path:project_id>/export/download",
        views.ProjectExportDownloadView.as_view(),
        name="api-project-export-download",
    ),
    path("projects/<path:project_id>/export", views.ProjectExportView.as_view(), name="api-project-export"),
]
