"""GitLab's project export API (``lib/api/project_export.rb``): start, poll, download."""

from __future__ import annotations

from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import FileResponse, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from exports import services, status
from exports.serializers import ProjectExportRequest, ProjectExportStatusSerializer, export_status_body
from project import api
from project.api import ApiView
from project.authentication import request_token, signed_in_user
from project.middleware import client_address
from project.models import Project
from project.ratelimit import rate_limit_hit
from project.schema import RETRY_AFTER, MessageSerializer, error_responses, query_parameters, rack_request
from project.serializers import rack_params

_NOT_FOUND = "Unknown project, one the caller is not a member of, or exports are turned off."


def _export_project(request: Request, project_id: str) -> tuple[Project, status.ExportLimits]:
    """GitLab's ``before`` block: 404 when exports are off, then maintainer or above."""
    return status.export_project_require(user=signed_in_user(request), ref=project_id)


class ProjectExportView(ApiView):
    """``GET`` the caller's export status; ``POST`` to start a new export.

    GitLab clients poll the status about once a second. A poll with a token is answered
    from one statement, outside DRF's request handling (``_poll``): a third of a poll's
    time went to that handling and to two more round trips. Any other request, and any
    poll that is not a plain answer (an error, a session cookie), goes through ``get``.
    """

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method == "GET":
            answer = self._poll(request, kwargs["project_id"])
            if answer is not None:
                return answer
        return super().dispatch(request, *args, **kwargs)

    def _poll(self, request: HttpRequest, project_id: str) -> HttpResponse | None:
        token = request_token(request)
        if not token:
            return None
        try:
            api.reject_malformed([project_id], "the path")
            api.reject_malformed(request.GET, "the query string")
        except api.MalformedInput:
            return None
        try:
            poll = status.export_status_poll(token=token, address=client_address(request) or "unknown", ref=project_id)
        except (OperationalError, InterfaceError) as exc:  # the 503 of an outage, as through DRF
            return api.exception_answer(exc)
        if poll is None or not api.token_scoped(poll.token, api.scopes_needed(request, self)):
            return None
        return api.json_answer(export_status_body(poll.project, poll.state), headers=self.default_response_headers)

    @extend_schema(
        responses={200: ProjectExportStatusSerializer, **error_responses(401, 403, 404, e404=_NOT_FOUND)},
        operation_id="getProjectExportStatus",
    )
    def get(self, request: Request, project_id: str) -> Response:
        project, _ = _export_project(request, project_id)
        state = status.export_state(project=project, user=signed_in_user(request))
        return Response(export_status_body(project, state))

    @extend_schema(
        request=rack_request(ProjectExportRequest),
        # GitLab clients may also send the parameters in the query string.
        parameters=[*query_parameters(ProjectExportRequest), RETRY_AFTER],
        responses={
            202: OpenApiResponse(MessageSerializer, description='`{"message": "202 Accepted"}`'),
            **error_responses(400, 401, 403, 404, 429, e404=_NOT_FOUND),
        },
        operation_id="startProjectExport",
    )
    def post(self, request: Request, project_id: str) -> Response:
        project, limits = _export_project(request, project_id)
        params = ProjectExportRequest.parse(rack_params(request))
        rate_limit_hit(key=f"project_export:user:{request.user.pk}", limit=limits.export)
        services.export_size_check(project=project, max_size_mib=limits.max_size_mib)
        services.export_request(
            project=project, user=signed_in_user(request), **ProjectExportRequest.export_arguments(params)
        )
        return Response({"message": "202 Accepted"}, status=202)


class ProjectExportDownloadView(ApiView):
    """Stream the caller's archive."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "Content-Disposition",
                OpenApiTypes.STR,
                location=OpenApiParameter.HEADER,
                response=[200],
                required=True,
                description='`attachment; filename="<time>_<namespace>_<path>_export.tar.gz"; '
                "filename*=UTF-8''<the same, percent-encoded>` (the basename cut at 51 characters, as GitLab's)",
            ),
            RETRY_AFTER,
        ],
        responses={
            (200, "application/gzip"): OpenApiResponse(OpenApiTypes.BINARY, description="The archive (tar.gz)."),
            **error_responses(
                401,
                403,
                404,
                429,
                e404='No (unexpired) archive: "404 Not found or has expired"; the record exists but storage '
                'does not have the file: "The project export file is not available yet"; or as for the status.',
            ),
        },
        operation_id="downloadProjectExport",
    )
    def get(self, request: Request, project_id: str) -> FileResponse:
        project, limits = _export_project(request, project_id)
        rate_limit_hit(
            key=f"project_download_export:user:{request.user.pk}:project:{project.pk}", limit=limits.download
        )
        handle, archive = services.export_download_open(project=project, user=signed_in_user(request))
        response = FileResponse(handle, content_type="application/gzip")
        response["Content-Disposition"] = services.content_disposition(archive.filename)
        response["Content-Length"] = str(archive.size)
        return response
