"""REST endpoints: report import, findings, and SDRS's callback."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from project import services as core
from project.api import ApiView
from project.errors import ValidationFailed
from project.models import AccessLevel
from project.pagination import PAGINATION_HEADERS, GitLabPagination
from project.schema import error_responses
from secret_detection import metrics, services
from secret_detection.models import Finding
from secret_detection.serializers import (
    REPORT_SCHEMA,
    CallbackResultSerializer,
    FindingListQuery,
    FindingSerializer,
    ImportResultSerializer,
    ReportUpload,
    TokenStatusCallback,
)
from secret_detection.services import callbacks

MAX_REPORT_BYTES = 50 * 1024 * 1024


def _too_large() -> ValidationFailed:
    return ValidationFailed("413 Request Entity Too Large", code="report_too_large", http_status=413)


def _report_content(request: Request) -> bytes:
    """The report: the ``file`` of a multipart upload, or else the raw request body."""
    if request.content_type.startswith("multipart/form-data"):
        upload = ReportUpload.parse(request.data)["file"]
        if upload.size > MAX_REPORT_BYTES:
            raise _too_large()
        return upload.read()
    try:
        return request.body
    except RequestDataTooBig:
        raise _too_large() from None


class ReportImportView(ApiView):
    """Import a secret detection report (``gl-secret-detection-report.json``) into a project."""

    # The JSON body is read raw (report_parse reports its own errors); these name the two
    # forms in the schema and parse the multipart one.
    parser_classes = [JSONParser, MultiPartParser]

    @extend_schema(
        request={"application/json": REPORT_SCHEMA, "multipart/form-data": ReportUpload},
        responses={
            201: OpenApiResponse(ImportResultSerializer, description="New or changed findings were stored."),
            200: OpenApiResponse(ImportResultSerializer, description="Nothing new: every finding was known."),
            **error_responses(
                400,
                401,
                403,
                404,
                413,
                e400='The report is invalid: `{"message": "The secret detection report is invalid: …", '
                '"error": "invalid_report"}` lists every problem.',
            ),
        },
        operation_id="importSecretDetectionReport",
    )
    def post(self, request: Request, project_id: str) -> Response:
        project = core.project_require(user=request.user, ref=project_id, min_access=AccessLevel.DEVELOPER)
        report = services.report_parse(content=_report_content(request))
        result = services.report_import(project=project, user=request.user, report=report)
        body = ImportResultSerializer(result).data
        return Response(body, status=201 if result.created or result.updated else 200)


class FindingListView(ApiView):
    """A project's secret detection findings with their token status (tokens masked),
    paginated as GitLab does (``page``, ``per_page``; ``X-Total``, ``Link``, … headers)."""

    pagination_class = GitLabPagination

    @extend_schema(
        parameters=[FindingListQuery, *PAGINATION_HEADERS],
        responses={200: FindingSerializer(many=True), **error_responses(400, 401, 403, 404)},
        operation_id="listSecretDetectionFindings",
    )
    def get(self, request: Request, project_id: str) -> Response:
        project = core.project_require(user=request.user, ref=project_id, min_access=AccessLevel.DEVELOPER)
        query = FindingListQuery.parse(request.query_params)
        findings = Finding.objects.filter(project=project).select_related("token_status").order_by("id")
        if query.get("status"):
            findings = findings.filter(token_status__status=query["status"])
        if query.get("token_type"):
            findings = findings.filter(token_type__iexact=query["token_type"])
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(findings, request, self, params=query)
        return paginator.get_paginated_response(FindingSerializer(page, many=True).data)


def _signature_header(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(
        name, OpenApiTypes.STR, location=OpenApiParameter.HEADER, required=True, description=description
    )


class TokenStatusCallbackView(APIView):
    """SDRS posts verification results here. It authenticates with a signature over the raw
    body (see ``services.callbacks``), not with a user's token, so DRF's authentication is
    off. The body is JSON only."""

    authentication_classes = []
    permission_classes = [AllowAny]
    parser_classes = [JSONParser]

    @extend_schema(
        request=TokenStatusCallback,
        parameters=[
            _signature_header("X-SDRS-Timestamp", "Unix seconds; at most SDRS_CALLBACK_MAX_SKEW (300 s) off."),
            _signature_header(
                "X-SDRS-Signature", '`sha256=<hex>`: HMAC-SHA256 of `timestamp + "." + raw body` under the secret.'
            ),
        ],
        responses={
            200: CallbackResultSerializer,
            **error_responses(
                400,
                401,
                404,
                415,
                e400='A malformed result: `{"message": …, "error": "invalid_callback"}`.',
                e401="Signature or timestamp missing, wrong or stale, or no callback secret configured; "
                "`error` says which.",
                e404='`{"message": "404 Finding Not Found", "error": "finding_not_found"}`.',
                e415="The body is not JSON (`Content-Type: application/json`).",
            ),
        },
        operation_id="tokenStatusCallback",
    )
    def post(self, request: Request) -> Response:
        body = _callback_body(request)
        timestamp = request.headers.get("X-SDRS-Timestamp")
        signature = request.headers.get("X-SDRS-Signature")
        services.callback_authenticate(body=body, timestamp=timestamp, signature=signature)
        result = _callback_parse(request, body)
        outcome = services.callback_result_apply(**result)
        return Response({"message": "200 OK", "result": outcome})


def _invalid_callback(message: str) -> ValidationFailed:
    metrics.CALLBACKS.labels(result="invalid").inc()
    return ValidationFailed(message, code="invalid_callback")


def _callback_body(request: Request) -> bytes:
    """The raw body the signature covers, bounded."""
    try:
        body = request.body
    except RequestDataTooBig:
        raise _invalid_callback("the body is too large") from None
    if len(body) > callbacks.MAX_BODY_BYTES:
        raise _invalid_callback("the body is too large")
    return body


def _callback_parse(request: Request, body: bytes) -> dict:
    """The result, once the signature is known good: JSON (the view's only parser), then
    ``TokenStatusCallback``'s rules."""
    if not body:
        raise _invalid_callback("the body is not valid JSON")
    if not request.content_type:
        # DRF would read a body without a media type as empty; say what is wrong instead.
        raise exceptions.UnsupportedMediaType("")
    try:
        data = request.data  # 415 for anything but JSON
    except exceptions.ParseError:
        raise _invalid_callback("the body is not valid JSON") from None
    try:
        return TokenStatusCallback.parse(data)
    except ValidationFailed:
        metrics.CALLBACKS.labels(result="invalid").inc()
        raise
