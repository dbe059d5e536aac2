from django.urls import path

from exports import views
from exports.importer import views as import_views

# The download route first: <path:> would otherwise swallow "…/export/download". The
# import routes come before project/urls.py's catch-all ``projects/<path:project_id>``.
urlpatterns = [
    path("projects/import", import_views.ProjectImportView.as_view(), name="api-project-import"),
    path(
        "projects/<path:project_id>/export/download",
        views.ProjectExportDownloadView.as_view(),
        name="api-project-export-download",
    ),
    path("projects/<path:project_id>/export", views.ProjectExportView.as_view(), name="api-project-export"),
    path(
        "projects/<path:project_id>/import",
        import_views.ProjectImportStatusView.as_view(),
        name="api-project-import-status",
    ),
]
