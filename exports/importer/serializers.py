"""The import API's input and output (GitLab's ``lib/api/project_import.rb`` and
``Entities::ProjectImportStatus``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from exports.models import ProjectImportJob
from project.models import Project
from project.serializers import PARAM_INVALID, PARAM_MISSING, InputSerializer, ProjectIdentitySerializer, StringParam

IMPORT_STATUSES = ["none", "scheduled", "started", "finished", "failed"]


class ProjectImportRequest(InputSerializer):
    """``POST /projects/import`` (multipart)."""

    path = StringParam(help_text="The new project's path.")
    file = serializers.FileField(
        help_text="The export archive (tar.gz).",
        error_messages={"required": PARAM_MISSING, "invalid": PARAM_INVALID, "empty": PARAM_INVALID},
    )
    name = StringParam(required=False, allow_blank=True, help_text="The project's name (default: the path).")
    namespace = StringParam(
        required=False, allow_blank=True, help_text="The namespace to import into (default: the caller's)."
    )
    overwrite = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Replace the project at the same path once the import finishes.",
        error_messages={"invalid": PARAM_INVALID},
    )


# Built with type(): a declared field named ``source`` would shadow Field.source for mypy.
FailedRelationSerializer = type(
    "FailedRelationSerializer",
    (serializers.Serializer,),
    {
        "__doc__": "One relation item that could not be saved (GitLab's ``ProjectImportFailedRelation``).",
        "id": serializers.IntegerField(),
        "created_at": serializers.CharField(),
        "exception_class": serializers.CharField(),
        "exception_message": serializers.CharField(),
        "source": serializers.CharField(),
        "relation_name": serializers.CharField(),
        "line_number": serializers.IntegerField(help_text="The item's index in its relation file, from 0."),
    },
)


class ImportStatsSerializer(serializers.Serializer):
    imported = serializers.DictField(child=serializers.IntegerField(), help_text="Rows imported per relation.")
    skipped = serializers.DictField(
        help_text="What the archive holds that this product does not model: `relations` and `fields` "
        "(by name, with counts) and `files`."
    )


class ProjectImportStatusSerializer(ProjectIdentitySerializer):
    import_status = serializers.ChoiceField(choices=IMPORT_STATUSES)
    import_type = serializers.CharField(allow_null=True)
    correlation_id = serializers.CharField(allow_null=True)
    failed_relations = FailedRelationSerializer(many=True)
    import_error = serializers.CharField(allow_null=True)
    stats = ImportStatsSerializer(allow_null=True)
    _links = serializers.DictField(required=False, help_text="`web_url` of the project once the import finished.")


def import_status_body(project: Project, job: ProjectImportJob | None, *, correlation_id: str | None = None) -> dict:
    """GitLab's ``ProjectImportStatus``: the project's identity and its latest import."""
    body: dict[str, Any] = dict(ProjectIdentitySerializer(project).data)
    if job is None:
        body.update(
            import_status="none",
            import_type=None,
            correlation_id=correlation_id,
            failed_relations=[],
            import_error=None,
            stats=None,
        )
        return body
    body.update(
        import_status=job.status,
        import_type="gitlab_project",
        correlation_id=correlation_id,
        failed_relations=list(job.failed_relations or []),
        import_error=job.error or None,
        stats={"imported": dict(job.counts or {}), "skipped": dict(job.skipped or {})}
        if job.status == ProjectImportJob.Status.FINISHED
        else None,
    )
    if job.status == ProjectImportJob.Status.FINISHED:
        body["_links"] = {"web_url": f"{settings.EXTERNAL_URL}/{project.path_with_namespace}"}
    return body
