from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from rest_framework import permissions
from rest_framework.request import Request
from rest_framework.response import Response

from project import health, services
from project.api import ApiView, TokenScopes
from project.schema import error_responses
from project.serializers import ProjectSerializer, UserSerializer

logger = logging.getLogger(__name__)


class CurrentUserView(ApiView):
    """The authenticated user (``GET /api/v4/user``)."""

    read_scopes = ("api", "read_api", "read_user")

    @extend_schema(
        responses={200: UserSerializer, **error_responses(401, 403)},
        operation_id="getCurrentUser",
    )
    def get(self, request: Request) -> Response:
        return Response(UserSerializer(request.user).data)


class ProjectView(ApiView):
    """A project by numeric id or URL-encoded ``namespace/path``. Anyone may read a public
    project, as in GitLab: without a token it is visible, the rest is 404."""

    permission_classes = [permissions.IsAuthenticatedOrReadOnly, TokenScopes]

    @extend_schema(
        responses={200: ProjectSerializer, **error_responses(401, 403, 404)},
        operation_id="getProject",
    )
    def get(self, request: Request, project_id: str) -> Response:
        project = services.project_require(user=request.user, ref=project_id)
        level = services.project_access_level(user=request.user, project=project)
        context = {"access_level": level, "anonymous": not request.user.is_authenticated}
        return Response(ProjectSerializer(project, context=context).data)


def liveness(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readiness(request: HttpRequest) -> JsonResponse:
    report = health.readiness_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus' scrape. With ``METRICS_TOKEN`` or ``METRICS_BASIC_AUTH`` set, only a
    scraper that presents it gets the figures (401 otherwise)."""
    from project.metrics import render, scrape_authorized

    if not scrape_authorized(request):
        response = HttpResponse("401 Unauthorized\n", status=401, content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = (
            'Basic realm="metrics"' if settings.METRICS_BASIC_AUTH else 'Bearer realm="metrics"'
        )
        return response
    body, content_type = render()
    return HttpResponse(body, content_type=content_type)
