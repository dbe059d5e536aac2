from django.urls import path

import project.converters  # noqa: F401 - registers <project_ref:>
from catalog import views

urlpatterns = [
    path(
        "projects/<project_ref:project_id>/catalog_resource",
        views.CatalogResourceView.as_view(),
        name="api-catalog-resource",
    ),
]
