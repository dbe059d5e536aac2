from django.urls import path

from catalog import views

urlpatterns = [
    path(
        "projects/<path:project_id>/catalog_resource",
        views.CatalogResourceView.as_view(),
        name="api-catalog-resource",
    ),
]
