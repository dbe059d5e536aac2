"""The export API's input and output (GitLab's ``lib/api/project_export.rb`` and
``Entities::ProjectExportStatus``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from exports import clients, services, status
from exports.models import ProjectExportArchive
from project.errors import ValidationFailed
from project.models import Project
from project.serializers import (
    PARAM_INVALID,
    ChoiceParam,
    InputSerializer,
    NestedParams,
    ProjectIdentitySerializer,
    StringParam,
    UrlParam,
)

# --- input ------------------------------------------------------------------------------


class UploadMethodParam(ChoiceParam):
    """``upload[http_method]``: cleaned by ``clients.upload_method_clean``, the one owner of
    the rule (PUT or POST, case-sensitive as GitLab's, PUT by default) and of its message."""

    default_error_messages = {"invalid": PARAM_INVALID}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=list(clients.METHODS), **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            return clients.upload_method_clean(data)
        except ValidationFailed as exc:
            raise serializers.ValidationError(exc.message, code="invalid_choice") from None


class UploadParams(NestedParams):
    """``upload``: where to send the archive once it is written."""

    url = UrlParam(
        required=False,
        allow_blank=True,
        allow_null=True,
        help_text="After the export, stream the archive to this http(s) URL (it may be signed).",
    )
    http_method = UploadMethodParam(
        required=False, allow_null=True, default="PUT", help_text="How to send the archive to `url`."
    )


class ProjectExportRequest(InputSerializer):
    """``POST /projects/:id/export``: from a form, the query string (``upload[url]=…``) or
    JSON (``{"upload": {"url": …}}``)."""

    description = StringParam(
        required=False,
        allow_blank=True,
        allow_null=True,
        trim_whitespace=False,
        max_length=services.MAX_DESCRIPTION_LENGTH,
        error_messages={"max_length": "description is too long (maximum is {max_length} characters)"},
        help_text="Replaces the project description in the archive's project.json.",
    )
    upload = UploadParams(required=False, allow_null=True)

    @classmethod
    def export_arguments(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``services.export_request``'s keyword arguments, from the parsed parameters."""
        upload = params.get("upload") or {}
        return {
            "description": params.get("description"),
            "upload_url": upload.get("url") or "",
            "upload_method": upload.get("http_method") or "PUT",
        }


# --- output -----------------------------------------------------------------------------

EXPORT_STATUSES = ["none", "queued", "started", "finished", "failed", "regeneration_in_progress"]
EXPORT_PHASES = ["queued", "waiting_for_slot", "retry_waiting", "exporting", "uploading"]


class ExportLinksSerializer(serializers.Serializer):
    api_url = serializers.SerializerMethodField()
    web_url = serializers.SerializerMethodField()

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_api_url(self, project: Project) -> str:
        return f"{settings.EXTERNAL_URL}/api/v4/projects/{project.pk}/export/download"

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_web_url(self, project: Project) -> str:
        return f"{project.web_url}/download_export"


class ExportProgressSerializer(serializers.Serializer):
    """Where the caller's active export is (figures of the running attempt)."""

    phase = serializers.ChoiceField(choices=EXPORT_PHASES)
    relations_done = serializers.IntegerField()
    relations_total = serializers.IntegerField()
    rows_written = serializers.IntegerField()
    started_at = serializers.DateTimeField(allow_null=True)


class ExportArchiveSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProjectExportArchive
        fields = ["size", "sha256", "created_at", "expires_at"]
        read_only_fields = fields


class ProjectExportStatusSerializer(ProjectIdentitySerializer):
    """GitLab's ``ProjectExportStatus`` plus ``export_progress``, ``export_error`` and
    ``export_archive``. The instance is the project; ``context["state"]`` is the caller's
    ``status.ExportState``. ``_links`` is there only when the status is ``finished``."""

    export_status = serializers.SerializerMethodField()
    _links = ExportLinksSerializer(
        source="*", required=False, label="_links", help_text="Only when export_status is finished."
    )
    export_progress = serializers.SerializerMethodField()
    export_error = serializers.SerializerMethodField()
    export_archive = serializers.SerializerMethodField()

    @property
    def state(self) -> status.ExportState:
        return self.context["state"]

    def to_representation(self, instance: Project) -> dict[str, Any]:
        body = super().to_representation(instance)
        if self.state.status != "finished":
            del body["_links"]
        return body

    @extend_schema_field(serializers.ChoiceField(choices=EXPORT_STATUSES))
    def get_export_status(self, project: Project) -> str:
        return self.state.status

    @extend_schema_field(ExportProgressSerializer(allow_null=True))
    def get_export_progress(self, project: Project) -> dict[str, Any] | None:
        job = self.state.active_job
        if job is None:
            return None
        # Live figures come from the job's run (the worker reports them to the toolkit).
        live = (job.job_run.progress if job.job_run and job.job_run.status == "running" else None) or {}
        progress = {
            "phase": status.export_phase(job),
            "relations_done": live.get("relations_done", 0),
            "relations_total": live.get("relations_total", job.relations_total),
            "rows_written": live.get("rows_written", 0),
            "started_at": job.started_at,
        }
        return ExportProgressSerializer(progress).data

    def get_export_error(self, project: Project) -> str | None:
        latest = self.state.latest_job
        return (latest.error or latest.error_code) if latest and latest.status == "failed" else None

    @extend_schema_field(ExportArchiveSerializer(allow_null=True))
    def get_export_archive(self, project: Project) -> dict[str, Any] | None:
        archive = self.state.archive
        return ExportArchiveSerializer(archive).data if archive is not None else None


#: Formats a datetime as DRF does (ISO 8601 in the current time zone, "Z" for UTC).
_DATETIME = serializers.DateTimeField()


def _datetime(value: Any) -> str | None:
    return _DATETIME.to_representation(value) if value else None


def export_status_body(project: Project, state: status.ExportState) -> dict[str, Any]:
    """``ProjectExportStatusSerializer(project, context={"state": state}).data``, built
    directly: GitLab clients poll the status every second, and a DRF serializer copies its
    dozen fields (and its nested serializers' fields) for every instance. The serializer
    stays the documented shape; ``tests/exports/test_status_queries.py`` checks that both
    give the same body in every state."""
    body: dict[str, Any] = {
        "id": project.pk,
        "description": project.description,
        "name": project.name,
        "name_with_namespace": f"{project.namespace_path} / {project.name}",
        "path": project.path,
        "path_with_namespace": project.path_with_namespace,
        "created_at": _datetime(project.created_at),
        "export_status": state.status,
    }
    if state.status == "finished":
        body["_links"] = {
            "api_url": f"{settings.EXTERNAL_URL}/api/v4/projects/{project.pk}/export/download",
            "web_url": f"{project.web_url}/download_export",
        }
    job = state.active_job
    progress = None
    if job is not None:
        run = job.job_run
        live = (run.progress if run is not None and run.status == "running" else None) or {}
        progress = {
            "phase": status.export_phase(job),
            "relations_done": int(live.get("relations_done", 0)),
            "relations_total": int(live.get("relations_total", job.relations_total)),
            "rows_written": int(live.get("rows_written", 0)),
            "started_at": _datetime(job.started_at),
        }
    body["export_progress"] = progress
    latest = state.latest_job
    body["export_error"] = (latest.error or latest.error_code) if latest and latest.status == "failed" else None
    archive = state.archive
    body["export_archive"] = (
        {
            "size": int(archive.size),
            "sha256": str(archive.sha256),
            "created_at": _datetime(archive.created_at),
            "expires_at": _datetime(archive.expires_at),
        }
        if archive is not None
        else None
    )
    return body
