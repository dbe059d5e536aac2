from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from project import health, services
from project.api import ApiView
from project.serializers import project_detail, user_detail

logger = logging.getLogger(__name__)

_object = inline_serializer("GitLabObject", fields={"id": serializers.IntegerField()})


class CurrentUserView(ApiView):
    """The authenticated user (``GET /api/v4/user``)."""

    read_scopes = ("api", "read_api", "read_user")

    @extend_schema(responses={200: _object}, operation_id="getCurrentUser")
    def get(self, request: Request) -> Response:
        return Response(user_detail(request.user))


class ProjectView(ApiView):
    """A project by numeric id or URL-encoded ``namespace/path``."""

    @extend_schema(responses={200: _object}, operation_id="getProject")
    def get(self, request: Request, project_id: str) -> Response:
        project = services.project_require(user=request.user, ref=project_id)
        level = services.project_access_level(user=request.user, project=project)
        return Response(project_detail(project, access_level=level))


def liveness(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readiness(request: HttpRequest) -> JsonResponse:
    report = health.readiness_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


def metrics(request: HttpRequest) -> HttpResponse:
    from project.metrics import render

    body, content_type = render()
    return HttpResponse(body, content_type=content_type)
