"""The catalog read API (``GET /projects/:id/catalog_resource``)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from catalog.read_services import catalog_resource_require
from catalog.serializers import CatalogResourceSerializer
from project import services
from project.read_api import ReadView
from project.schema import error_responses


class CatalogResourceView(ReadView):
    """A project's CI catalog resource and whether its copy of the project is current."""

    @extend_schema(
        responses={
            200: CatalogResourceSerializer,
            **error_responses(
                401,
                403,
                404,
                e404="Unknown or invisible project, no catalog resource, or a draft the caller may not see.",
            ),
        },
        operation_id="getProjectCatalogResource",
    )
    def get(self, request: Request, project_id: str) -> Response:
        project = services.project_require(user=request.user, ref=project_id)
        resource = catalog_resource_require(user=request.user, project=project)
        return Response(CatalogResourceSerializer(resource).data)
