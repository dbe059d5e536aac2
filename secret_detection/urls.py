from django.urls import path

from secret_detection import views

urlpatterns = [
    path(
        "projects/<path:project_id>/secret_detection/reports/<int:import_id>",
        views.ReportImportStatusView.as_view(),
        name="secret-detection-report",
    ),
    path(
        "projects/<path:project_id>/secret_detection/reports",
        views.ReportImportView.as_view(),
        name="secret-detection-reports",
    ),
    path(
        "projects/<path:project_id>/secret_detection/findings",
        views.FindingListView.as_view(),
        name="secret-detection-findings",
    ),
    path("internal/token_status/callback", views.TokenStatusCallbackView.as_view(), name="token-status-callback"),
]
