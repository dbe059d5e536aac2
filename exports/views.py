"""GitLab's project export API (``lib/api/project_export.rb``): start, poll, download."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import FileResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from exports import services
from exports.clients import upload_method_clean
from project import services as core
from project.api import ApiView
from project.errors import NotFound, ValidationFailed
from project.models import AccessLevel, ApplicationSetting, Project
from project.ratelimit import rate_limit_hit
from project.serializers import project_identity

_status_schema = inline_serializer(
    "ProjectExportStatus",
    fields={
        "id": serializers.IntegerField(),
        "export_status": serializers.ChoiceField(
            choices=["none", "queued", "started", "finished", "failed", "regeneration_in_progress"]
        ),
    },
)


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _export_project(request: Request, project_id: str) -> tuple[Project, ApplicationSetting]:
    """GitLab's ``before`` block: 404 when exports are off, then maintainer or above."""
    app_settings = ApplicationSetting.current()
    if not app_settings.project_export_enabled:
        raise NotFound("404 Not Found")
    project = core.project_require(
        user=request.user, ref=project_id, min_access=AccessLevel.MAINTAINER, member_required=True
    )
    return project, app_settings


def _text_param(data: Any, key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"{key} is invalid")
    return value


def _upload_param(request: Request, key: str) -> str | None:
    upload = request.data.get("upload") if hasattr(request.data, "get") else None
    if upload is not None and not isinstance(upload, dict):
        raise ValidationFailed("upload is invalid")
    if upload and upload.get(key) is not None:
        return _text_param(upload, key)
    for source in (request.data, request.query_params):
        value = _text_param(source, f"upload[{key}]") if hasattr(source, "get") else None
        if value is not None:
            return value
    return None


def _export_params(request: Request) -> dict[str, Any]:
    """``description`` and ``upload[url]`` / ``upload[http_method]``, from a form, a query
    string or JSON (``{"upload": {"url": …}}``), as GitLab clients send them."""
    description = _text_param(request.data, "description") if hasattr(request.data, "get") else None
    if description is None:
        description = _text_param(request.query_params, "description")
    method = _upload_param(request, "http_method")
    if method is not None:
        method = upload_method_clean(method)
    url = (_upload_param(request, "url") or "").strip()
    return {"description": description, "upload_url": url, "upload_method": method or ""}


def export_status_body(project: Project, state: services.ExportState) -> dict[str, Any]:
    body: dict[str, Any] = {**project_identity(project), "export_status": state.status}
    if state.status == "finished":
        body["_links"] = {
            "api_url": f"{settings.EXTERNAL_URL}/api/v4/projects/{project.pk}/export/download",
            "web_url": f"{project.web_url}/download_export",
        }
    job = state.active_job
    body["export_progress"] = None
    if job is not None:
        # Live figures come from the job's run (the worker reports them to the toolkit).
        live = (job.job_run.progress if job.job_run and job.job_run.status == "running" else None) or {}
        body["export_progress"] = {
            "phase": services.export_phase(job),
            "relations_done": live.get("relations_done", 0),
            "relations_total": live.get("relations_total", job.relations_total),
            "rows_written": live.get("rows_written", 0),
            "started_at": _iso(job.started_at),
        }
    latest = state.latest_job
    body["export_error"] = (latest.error or latest.error_code) if latest and latest.status == "failed" else None
    archive = state.archive
    body["export_archive"] = (
        {
            "size": archive.size,
            "sha256": archive.sha256,
            "created_at": _iso(archive.created_at),
            "expires_at": _iso(archive.expires_at),
        }
        if archive is not None
        else None
    )
    return body


class ProjectExportView(ApiView):
    """``GET`` the caller's export status; ``POST`` to start a new export."""

    @extend_schema(responses={200: _status_schema}, operation_id="getProjectExportStatus")
    def get(self, request: Request, project_id: str) -> Response:
        project, _ = _export_project(request, project_id)
        state = services.export_state(project=project, user=request.user)
        return Response(export_status_body(project, state))

    @extend_schema(
        request=inline_serializer(
            "ProjectExportRequest",
            fields={
                "description": serializers.CharField(required=False),
                "upload[url]": serializers.URLField(required=False),
                "upload[http_method]": serializers.ChoiceField(choices=["PUT", "POST"], required=False),
            },
        ),
        responses={202: OpenApiResponse(description='{"message": "202 Accepted"}')},
        operation_id="startProjectExport",
    )
    def post(self, request: Request, project_id: str) -> Response:
        project, app_settings = _export_project(request, project_id)
        params = _export_params(request)
        rate_limit_hit(key=f"project_export:user:{request.user.pk}", limit=app_settings.project_export_limit)
        services.export_request(project=project, user=request.user, **params)
        return Response({"message": "202 Accepted"}, status=202)


class ProjectExportDownloadView(ApiView):
    """Stream the caller's archive."""

    @extend_schema(
        responses={200: OpenApiResponse(description="application/gzip archive")}, operation_id="downloadProjectExport"
    )
    def get(self, request: Request, project_id: str) -> FileResponse:
        project, app_settings = _export_project(request, project_id)
        rate_limit_hit(
            key=f"project_download_export:user:{request.user.pk}:project:{project.pk}",
            limit=app_settings.project_download_export_limit,
        )
        handle, archive = services.export_download_open(project=project, user=request.user)
        response = FileResponse(handle, as_attachment=True, filename=archive.filename, content_type="application/gzip")
        response["Content-Length"] = str(archive.size)
        return response
