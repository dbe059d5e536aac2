"""REST endpoints: report import, findings, and SDRS's callback."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse
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
from project.authentication import signed_in_user
from project.errors import NotFound, ValidationFailed
from project.models import AccessLevel
from project.pagination import PAGINATION_HEADERS, GitLabPagination
from project.ratelimit import rate_limit_hit
from project.schema import RETRY_AFTER, ErrorSerializer, error_responses
from secret_detection import metrics, services
from secret_detection.models import Finding, ReportImport
from secret_detection.serializers import (
    REPORT_SCHEMA,
    CallbackResultSerializer,
    FindingListQuery,
    FindingSerializer,
    ReportImportAcceptedSerializer,
    ReportImportSerializer,
    ReportUpload,
    TokenStatusCallback,
)
from secret_detection.services import callbacks

#: Room for a multipart body's boundaries and part headers around the report itself.
MULTIPART_OVERHEAD = 64 * 1024
READ_CHUNK = 256 * 1024
_FILE_MISSING = "file is missing: upload the report as the multipart field `file`"


def _length_required() -> ValidationFailed:
    return ValidationFailed("411 Length Required", code="length_required", http_status=411)


def _receive_body(request: HttpRequest, write: Callable[[bytes], None]) -> None:
    """The raw body, as it arrives, in chunks. ``request.body`` (and with it Django's
    DATA_UPLOAD_MAX_MEMORY_SIZE) is never involved: nothing is held whole in memory."""
    while chunk := request.read(READ_CHUNK):
        write(chunk)


class _ReportFileHandler(FileUploadHandler):
    """Django's multipart parser hands the ``file`` part here, chunk by chunk, to ``write``;
    any other file part is dropped."""

    chunk_size = 64 * 1024

    def __init__(self, write: Callable[[bytes], None]) -> None:
        super().__init__()
        self.write = write
        self.found = False
        self.active = False

    def new_file(self, field_name: str, *args, **kwargs) -> None:
        self.active = field_name == "file" and not self.found
        self.found = self.found or self.active
        raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if self.active:
            self.write(raw_data)

    def file_complete(self, file_size: int) -> None:
        self.active = False


def _receive_multipart(request: HttpRequest, write: Callable[[bytes], None]) -> None:
    if hasattr(request, "_files"):
        # Django parsed the form already (a session's CSRF check reads request.POST): the
        # file is in its upload handlers' temporary file.
        upload = request.FILES.get("file")
        if upload is None:
            raise ValidationFailed(_FILE_MISSING)
        for chunk in upload.chunks(READ_CHUNK):
            write(chunk)
        return
    handler = _ReportFileHandler(write)
    try:
        DjangoMultiPartParser(request.META, request, [handler], request.encoding).parse()
    except (MultiPartParserError, RequestDataTooBig, SuspiciousOperation):
        raise ValidationFailed("the multipart body is malformed") from None
    if not handler.found:
        raise ValidationFailed(_FILE_MISSING)


def _declared_size(request: Request) -> bool:
    """Refuse the upload from its headers alone, before a byte of the body is read: no
    Content-Length (411), or more than the limit (413). Whether it is a multipart form."""
    multipart = (request.content_type or "").startswith("multipart/form-data")
    try:
        length = int(request._request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        raise _length_required() from None
    if length < 0:
        raise _length_required()
    if length > settings.REPORT_IMPORT_MAX_BYTES + (MULTIPART_OVERHEAD if multipart else 0):
        raise services.ReportTooLarge()
    return multipart


def _receive_report(request: Request, upload: services.ReportUpload, *, multipart: bool) -> None:
    """Stream the report, the raw body or the ``file`` of a multipart form, into ``upload``
    (which stops at the limit whatever the headers said)."""
    if multipart:
        _receive_multipart(request._request, upload.write)
    else:
        _receive_body(request._request, upload.write)


def _status_url(request: Request, record: ReportImport) -> str:
    return request.build_absolute_uri(
        reverse("secret-detection-report", kwargs={"project_id": record.project_id, "import_id": record.pk})
    )


#: The 411 is ours alone: it carries the error code header like the shared error responses.
_ERROR_CODE_411 = OpenApiParameter(
    "X-Error-Code",
    OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    response=[411],
    description="`length_required`.",
)
_LOCATION = OpenApiParameter(
    "Location",
    OpenApiTypes.URI,
    location=OpenApiParameter.HEADER,
    response=[202],
    description="The import's status URL (`status_url`).",
)


class ReportImportView(ApiView):
    """Upload a secret detection report (``gl-secret-detection-report.json``): it is stored
    and imported by a background job; poll ``status_url`` for the outcome."""

    # The body is read raw, streamed to disk (see _receive_report); these only name the two
    # forms in the schema.
    parser_classes = [JSONParser, MultiPartParser]

    @extend_schema(
        request={"application/json": REPORT_SCHEMA, "multipart/form-data": ReportUpload},
        parameters=[_LOCATION, _ERROR_CODE_411, RETRY_AFTER],
        responses={
            202: OpenApiResponse(
                ReportImportAcceptedSerializer,
                description="Stored and queued: `GET status_url` says how the import went.",
            ),
            **error_responses(
                400,
                401,
                403,
                404,
                413,
                429,
                e400="A multipart form without its `file`, or a malformed one. The report itself is checked by "
                "the import job: an invalid report ends as a failed import listing every problem.",
                e413=f"The body is larger than {settings.REPORT_IMPORT_MAX_BYTES} bytes (`REPORT_IMPORT_MAX_BYTES`), "
                'refused from its Content-Length before it is read: `{"message": "413 Request Entity Too Large"}` '
                "(`X-Error-Code: report_too_large`).",
                e429="More than `REPORT_IMPORT_RATE_LIMIT` imports by this user in a minute.",
            ),
            411: OpenApiResponse(
                ErrorSerializer,
                description='No Content-Length: `{"message": "411 Length Required"}` '
                "(`X-Error-Code: length_required`).",
            ),
        },
        operation_id="importSecretDetectionReport",
    )
    def post(self, request: Request, project_id: str) -> Response:
        project = core.project_require(user=request.user, ref=project_id, min_access=AccessLevel.DEVELOPER)
        rate_limit_hit(
            key=f"secret_detection_report_import:user:{request.user.pk}", limit=settings.REPORT_IMPORT_RATE_LIMIT
        )
        multipart = _declared_size(request)
        with services.report_upload() as upload:
            _receive_report(request, upload, multipart=multipart)
            record = services.report_import_request(project=project, user=signed_in_user(request), upload=upload)
        url = _status_url(request, record)
        body = ReportImportAcceptedSerializer({"id": record.pk, "status": record.status, "status_url": url}).data
        return Response(body, status=202, headers={"Location": url})


class ReportImportStatusView(ApiView):
    """A report import's status and, once it ended, its result or why it failed."""

    @extend_schema(
        responses={
            200: ReportImportSerializer,
            **error_responses(401, 403, 404, e404="Unknown project or import, or one the caller may not see."),
        },
        operation_id="getSecretDetectionReportImport",
    )
    def get(self, request: Request, project_id: str, import_id: int) -> Response:
        project = core.project_require(user=request.user, ref=project_id, min_access=AccessLevel.DEVELOPER)
        record = ReportImport.objects.filter(project=project, pk=import_id).first()
        if record is None:
            raise NotFound("404 Report import Not Found")
        return Response(ReportImportSerializer(record, context={"status_url": _status_url(request, record)}).data)


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
        try:
            callbacks.callback_refusals_flush()  # a refusal of this process, once the database is back
            services.callback_authenticate(body=body, timestamp=timestamp, signature=signature)
            result = _callback_parse(request, body)
            outcome = services.callback_result_apply(**result)
        except (OperationalError, InterfaceError):
            # Refused (503 with Retry-After, by the API's error handler): SDRS may give up on
            # it, so the findings it could answer are verified again once the database is back.
            callbacks.callback_refused_note()
            raise
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
