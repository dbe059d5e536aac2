"""GitLab's project import API (``lib/api/project_import.rb``): start an import, poll it."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from exports.importer import services
from exports.importer.serializers import ProjectImportRequest, ProjectImportStatusSerializer, import_status_body
from project.api import ApiView, CleanFormParser, CleanMultiPartParser
from project.authentication import signed_in_user
from project.context import request_id
from project.schema import error_responses
from project.serializers import rack_params


class ProjectImportView(ApiView):
    """``POST /projects/import``: upload an export archive into a new project."""

    parser_classes = [CleanMultiPartParser, CleanFormParser]

    @extend_schema(
        request={"multipart/form-data": ProjectImportRequest},
        responses={
            201: OpenApiResponse(ProjectImportStatusSerializer, description="`import_status: scheduled`."),
            **error_responses(
                400,
                401,
                403,
                404,
                e400='A missing or invalid parameter (`{"error": "path is missing"}`), a project already at '
                'the path without `overwrite` (`{"message": "Name has already been taken"}`), or a file over '
                "the import size limit.",
                e404='`{"message": "404 Namespace Not Found"}`: a namespace the caller may not import into.',
            ),
        },
        operation_id="startProjectImport",
    )
    def post(self, request: Request) -> Response:
        params = ProjectImportRequest.parse(rack_params(request))
        job = services.import_request(
            user=signed_in_user(request),
            file=params["file"],
            path=params["path"],
            name=params.get("name") or None,
            namespace=params.get("namespace") or None,
            overwrite=params.get("overwrite", False),
        )
        return Response(import_status_body(job.project, job, correlation_id=request_id()), status=201)


class ProjectImportStatusView(ApiView):
    """``GET /projects/:id/import``: the status of the project's latest import."""

    @extend_schema(
        responses={200: ProjectImportStatusSerializer, **error_responses(401, 404)},
        operation_id="getProjectImportStatus",
    )
    def get(self, request: Request, project_id: str) -> Response:
        project, job = services.import_status_project(user=signed_in_user(request), ref=project_id)
        return Response(import_status_body(project, job, correlation_id=request_id()))
