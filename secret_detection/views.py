"""REST endpoints: report import, findings, and SDRS's callback."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from project import services as core
from project.api import ApiView
from project.errors import ValidationFailed
from project.models import AccessLevel
from secret_detection import services
from secret_detection.models import Finding, TokenStatus
from secret_detection.serializers import finding_detail

MAX_REPORT_BYTES = 50 * 1024 * 1024
MAX_PER_PAGE = 100

_import_result = inline_serializer(
    "SecretDetectionImport",
    fields={
        "findings": serializers.IntegerField(),
        "created": serializers.IntegerField(),
        "updated": serializers.IntegerField(),
        "unchanged": serializers.IntegerField(),
        "routing_job_id": serializers.IntegerField(allow_null=True),
    },
)


def _too_large() -> ValidationFailed:
    return ValidationFailed("413 Request Entity Too Large", code="report_too_large", http_status=413)


def _report_content(request: Request) -> bytes:
    """The report: the ``file`` of a multipart upload, or else the raw request body."""
    if request.content_type.startswith("multipart/form-data"):
        upload = request.FILES.get("file")
        if upload is None:
            raise ValidationFailed("file is missing: upload the report as the multipart field `file`")
        if upload.size > MAX_REPORT_BYTES:
            raise _too_large()
        return upload.read()
    try:
        return request.body
    except RequestDataTooBig:
        raise _too_large() from None


class ReportImportView(ApiView):
    """Import a secret detection report (``gl-secret-detection-report.json``) into a project."""

    @extend_schema(
        request={"application/json": dict, "multipart/form-data": dict},
        responses={201: _import_result, 200: _import_result},
        operation_id="importSecretDetectionReport",
    )
    def post(self, request: Request, project_id: str) -> Response:
        project = core.project_require(user=request.user, ref=project_id, min_access=AccessLevel.DEVELOPER)
        report = services.report_parse(content=_report_content(request))
        result = services.report_import(project=project, user=request.user, report=report)
        return Response(result.as_dict(), status=201 if result.created or result.updated else 200)


class FindingListView(ApiView):
    """A project's secret detection findings with their token status (tokens masked)."""

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=TokenStatus.values),
            OpenApiParameter("token_type", str),
            OpenApiParameter("page", int),
            OpenApiParameter("per_page", int),
        ],
        responses={200: inline_serializer("SecretDetectionFinding", fields={"id": serializers.IntegerField()})},
        operation_id="listSecretDetectionFindings",
    )
    def get(self, request: Request, project_id: str) -> Response:
        project = core.project_require(user=request.user, ref=project_id, min_access=AccessLevel.DEVELOPER)
        findings = Finding.objects.filter(project=project).select_related("token_status").order_by("id")
        status = request.query_params.get("status")
        if status:
            if status not in TokenStatus.values:
                raise ValidationFailed(f"status must be one of {', '.join(TokenStatus.values)}")
            findings = findings.filter(token_status__status=status)
        if request.query_params.get("token_type"):
            findings = findings.filter(token_type__iexact=request.query_params["token_type"])
        try:
            page = max(1, int(request.query_params.get("page", 1)))
            per_page = min(MAX_PER_PAGE, max(1, int(request.query_params.get("per_page", 20))))
        except ValueError:
            raise ValidationFailed("page and per_page must be integers") from None
        total = findings.count()
        items = findings[(page - 1) * per_page : page * per_page]
        headers = {"X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(total)}
        return Response([finding_detail(finding) for finding in items], headers=headers)


class TokenStatusCallbackView(APIView):
    """SDRS posts verification results here. It authenticates with a signature (see
    ``services.callbacks``), not with a user's token, so DRF's authentication is off."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=inline_serializer(
            "TokenStatusCallback",
            fields={
                "finding_id": serializers.IntegerField(),
                "status": serializers.ChoiceField(choices=["active", "inactive", "unknown"]),
                "verified_at": serializers.DateTimeField(),
                "request_id": serializers.CharField(),
            },
        ),
        responses={200: inline_serializer("TokenStatusCallbackResult", fields={"result": serializers.CharField()})},
        operation_id="tokenStatusCallback",
    )
    def post(self, request: Request) -> Response:
        try:
            body = request.body
        except RequestDataTooBig:
            raise ValidationFailed("the body is too large", code="invalid_callback") from None
        outcome = services.callback_apply(
            body=body,
            timestamp=request.headers.get("X-SDRS-Timestamp"),
            signature=request.headers.get("X-SDRS-Signature"),
        )
        return Response({"message": "200 OK", "result": outcome})
