"""The secret detection API's input and output. A finding's token appears only as its
fingerprint."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from project.pagination import PageParams
from project.serializers import (
    AwareDateTimeField,
    InputSerializer,
    JsonIntegerField,
    StringParam,
    messages_for,
)
from secret_detection.models import Finding, FindingTokenStatus, ReportImport, Severity, TokenStatus
from secret_detection.services.callbacks import RESULT_STATUSES

# --- findings ---------------------------------------------------------------------------


class FindingListQuery(PageParams):
    """``GET /projects/:id/secret_detection/findings``: filters and GitLab's pagination."""

    status = serializers.ChoiceField(
        choices=TokenStatus.values,
        required=False,
        allow_blank=True,
        error_messages=messages_for(f"status must be one of {', '.join(TokenStatus.values)}"),
        help_text="Only findings whose token has this status.",
    )
    token_type = StringParam(
        required=False, allow_blank=True, help_text="Only this token type (the gitleaks rule id, any case)."
    )


class TokenStatusSerializer(serializers.ModelSerializer):
    verifier = serializers.CharField(allow_null=True)
    last_error_code = serializers.CharField(allow_null=True)
    last_request_id = serializers.CharField(allow_null=True)

    class Meta:
        model = FindingTokenStatus
        fields = [
            "status",
            "verifier",
            "last_verified_at",
            "attempts",
            "last_error_code",
            "last_request_id",
            "next_refresh_at",
        ]
        read_only_fields = fields

    def to_representation(self, instance: FindingTokenStatus) -> dict[str, Any]:
        body = super().to_representation(instance)
        for key in ("verifier", "last_error_code", "last_request_id"):
            body[key] = body[key] or None  # unset is null, not ""
        return body


class FindingLocationSerializer(serializers.Serializer):
    file = serializers.CharField(source="file_path")
    start_line = serializers.IntegerField(allow_null=True)
    end_line = serializers.IntegerField(allow_null=True)
    commit_sha = serializers.SerializerMethodField()

    def get_commit_sha(self, finding: Finding) -> str | None:
        return finding.commit_sha or None


class FindingSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    project_id = serializers.IntegerField()
    report_id = serializers.CharField(source="report_finding_id")
    name = serializers.CharField()
    severity = serializers.ChoiceField(choices=Severity.values)
    token_type = serializers.CharField()
    token = serializers.SerializerMethodField(help_text="The masked fingerprint of the token, never the token.")
    location = FindingLocationSerializer(source="*")
    created_at = serializers.DateTimeField()
    token_status = TokenStatusSerializer(allow_null=True)

    def get_token(self, finding: Finding) -> str | None:
        return finding.value_fingerprint or None


# --- report import ----------------------------------------------------------------------


class ReportUpload(InputSerializer):
    """The multipart form of ``POST /projects/:id/secret_detection/reports``."""

    file = serializers.FileField(
        allow_empty_file=True,  # an empty report is refused by its import, with the others
        error_messages=messages_for(
            "file is missing: upload the report as the multipart field `file`", "required", "null", "invalid"
        ),
        help_text="gl-secret-detection-report.json (at most REPORT_IMPORT_MAX_BYTES, 50 MB by default).",
    )


#: The JSON form: the report itself. The import job checks it whole against
#: secret_detection/report_schema/ (and lists every problem), so this only names its parts.
REPORT_SCHEMA = {
    "type": "object",
    "description": "A gl-secret-detection-report.json (GitLab's secret detection report format, schema 15.x), "
    "at most REPORT_IMPORT_MAX_BYTES (50 MB by default).",
    "properties": {
        "version": {"type": "string", "description": "A schema version GitLab supports (15.0.0 to 15.2.x)."},
        "scan": {"type": "object", "properties": {"type": {"type": "string", "enum": ["secret_detection"]}}},
        "vulnerabilities": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["version", "scan", "vulnerabilities"],
}


class ReportImportAcceptedSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The import's id.")
    status = serializers.ChoiceField(choices=[ReportImport.Status.QUEUED])
    status_url = serializers.URLField(help_text="`GET` it for the import's status and result.")


class ReportImportResultSerializer(serializers.Serializer):
    findings = serializers.IntegerField(help_text="Distinct findings in the report.")
    created = serializers.IntegerField()
    updated = serializers.IntegerField(help_text="Known findings whose token value changed (verified again).")
    unchanged = serializers.IntegerField()
    duplicates = serializers.IntegerField(
        help_text="Vulnerabilities dropped because an earlier one had the same rule, file and lines."
    )
    routing_run_id = serializers.IntegerField(
        allow_null=True, help_text="The job run that routes the new findings to their verifier, if any."
    )


class ReportImportErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="`invalid_report`, `expired`, `worker_lost`, `timeout`, `cancelled`, …")
    message = serializers.CharField()
    problems = serializers.ListField(
        child=serializers.CharField(),
        help_text="With invalid_report: the first 50 problems, each a path in the report and a rule, never a value.",
    )


class ReportImportSerializer(serializers.Serializer):
    """``GET /projects/:id/secret_detection/reports/:import_id``."""

    id = serializers.IntegerField(source="pk")
    project_id = serializers.IntegerField()
    status = serializers.ChoiceField(
        choices=ReportImport.Status.values,
        help_text="queued, running (the job is reading it), finished (see `result`) or failed (see `error`).",
    )
    status_url = serializers.SerializerMethodField()
    size = serializers.IntegerField(help_text="Bytes uploaded.")
    result = serializers.SerializerMethodField()
    warnings = serializers.ListField(
        child=serializers.CharField(), help_text="What was imported with a caveat (duplicates, the schema version)."
    )
    error = serializers.SerializerMethodField()
    job_run_id = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_status_url(self, record: ReportImport) -> str:
        return self.context["status_url"]

    @extend_schema_field(ReportImportResultSerializer(allow_null=True))
    def get_result(self, record: ReportImport) -> dict | None:
        if record.status != ReportImport.Status.FINISHED:
            return None
        return {
            "findings": record.findings,
            "created": record.findings_created,
            "updated": record.findings_updated,
            "unchanged": record.findings_unchanged,
            "duplicates": record.duplicates,
            "routing_run_id": record.routing_run_id,
        }

    @extend_schema_field(ReportImportErrorSerializer(allow_null=True))
    def get_error(self, record: ReportImport) -> dict | None:
        if record.status != ReportImport.Status.FAILED:
            return None
        return {"code": record.error_code, "message": record.error_message, "problems": record.problems}


# --- SDRS's callback --------------------------------------------------------------------

_STATUS_MESSAGE = f"status must be one of {', '.join(RESULT_STATUSES)}"
#: The largest finding id PostgreSQL's bigint holds.
_MAX_ID = 2**63 - 1


class TokenStatusCallback(InputSerializer):
    """SDRS's result for one finding (``POST /internal/token_status/callback``, JSON only).

    The rules and messages are those of the callback's contract: the first problem (in
    this field order) is the answer, ``400 {"message": …, "error": "invalid_callback"}``.
    What depends on the clock or the data (a ``verified_at`` in the future, an unknown
    finding) is ``services.callback_result_apply``'s to refuse, for every caller.
    """

    error_code = "invalid_callback"
    first_error_only = True
    default_error_messages = {"invalid": "the body must be a JSON object"}

    finding_id = JsonIntegerField(
        min_value=1, max_value=_MAX_ID, error_messages=messages_for("finding_id must be a positive integer")
    )
    status = serializers.ChoiceField(choices=list(RESULT_STATUSES), error_messages=messages_for(_STATUS_MESSAGE))
    request_id = StringParam(
        min_length=1,
        max_length=64,
        trim_whitespace=False,
        error_messages=messages_for(
            "request_id must be a string of 1 to 64 characters",
            "invalid",
            "required",
            "null",
            "blank",
            "min_length",
            "max_length",
        ),
        help_text="SDRS's id of the verification request.",
    )
    verified_at = AwareDateTimeField(
        error_messages=messages_for(
            "verified_at must be an ISO-8601 time with a time zone", "invalid", "required", "null"
        ),
        help_text="When SDRS verified the token; with a time zone.",
    )


class CallbackResultSerializer(serializers.Serializer):
    message = serializers.CharField()
    result = serializers.ChoiceField(
        choices=["applied", "duplicate", "stale"],
        help_text="applied; duplicate (the same result again); stale (older than the stored one).",
    )
