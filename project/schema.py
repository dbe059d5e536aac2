"""How the OpenAPI schema describes the API beyond what the serializers say: the
authentication schemes (drf-spectacular extensions) and the error responses.

Imported from ``ProjectConfig.ready`` so the extensions are registered before any schema
is generated.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiRequest, OpenApiResponse
from rest_framework import serializers


class AccessTokenScheme(OpenApiAuthenticationExtension):
    target_class = "project.authentication.AccessTokenAuthentication"
    name = ["PrivateToken", "BearerToken"]

    def get_security_requirement(self, auto_schema):
        # Either header is enough: two alternatives, not one requirement naming both
        # (a requirement object lists schemes that must *all* be satisfied).
        return [{name: []} for name in self.name]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "apiKey", "in": "header", "name": "PRIVATE-TOKEN", "description": "Personal access token"},
            {"type": "http", "scheme": "bearer", "description": "Personal access token as a bearer token"},
        ]


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "project.authentication.CsrfSessionAuthentication"
    name = "SessionCookie"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid", "description": "Admin session (CSRF on writes)"}


# --- error responses --------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    """Every API error but the 429 (``project.api.error_response``)."""

    message = serializers.CharField(help_text='What GitLab clients read, e.g. "404 Project Not Found".')
    error = serializers.CharField(help_text='A stable code, e.g. "not_found", "invalid", "insufficient_scope".')
    scope = serializers.CharField(
        required=False, help_text="With insufficient_scope: the scopes that would allow the request."
    )


class RateLimitedMessageSerializer(serializers.Serializer):
    error = serializers.CharField()


class RateLimitedSerializer(serializers.Serializer):
    """GitLab's 429 body: ``message`` is an object."""

    message = RateLimitedMessageSerializer()


class MessageSerializer(serializers.Serializer):
    """A plain acknowledgement, e.g. ``{"message": "202 Accepted"}``."""

    message = serializers.CharField()


ERROR_DESCRIPTIONS = {
    400: "Invalid parameters; `message` says which and why.",
    401: "Missing, unknown, expired or revoked token, or a blocked user.",
    403: "The token lacks the scope (`insufficient_scope`) or the user the access level (`forbidden`).",
    404: "Unknown project, or one the caller may not see.",
    413: "The request body is too large.",
    415: "Unsupported request media type.",
    429: "Rate limited: retry after `Retry-After` seconds.",
}

RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    location=OpenApiParameter.HEADER,
    response=[429],
    required=True,
    description="Seconds until the rate limit window ends.",
)


def query_parameters(serializer_class: type[serializers.Serializer]) -> list[Any]:
    """An input serializer's fields as query parameters (``extend_schema(parameters=…)``);
    a nested one in Rack's form, ``upload[url]=…`` (OpenAPI's ``deepObject`` style)."""
    parameters: list[Any] = [serializer_class]
    for name, field in serializer_class().fields.items():
        if isinstance(field, serializers.BaseSerializer):
            parameters.append(
                OpenApiParameter(
                    name, field.__class__, style="deepObject", explode=True, description=field.help_text or ""
                )
            )
    return parameters


def rack_request(serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
    """``extend_schema(request=…)`` for an input serializer that takes JSON, a form or a
    multipart form; in the forms a nested field is sent as ``upload[url]=…`` (deepObject)."""
    encoding = {
        name: {"style": "deepObject", "explode": True}
        for name, field in serializer_class().fields.items()
        if isinstance(field, serializers.BaseSerializer)
    }
    return {
        "application/json": serializer_class,
        "application/x-www-form-urlencoded": OpenApiRequest(serializer_class, encoding=encoding or None),
        "multipart/form-data": OpenApiRequest(serializer_class, encoding=encoding or None),
    }


def error_responses(*codes: int, **descriptions: str) -> dict[int, OpenApiResponse]:
    """``extend_schema(responses=…)`` entries for these error statuses, with the body each
    has. ``descriptions`` override the generic ones by status (``e404="…"``)."""
    responses = {}
    for code in codes:
        description = descriptions.get(f"e{code}", ERROR_DESCRIPTIONS[code])
        body = RateLimitedSerializer if code == 429 else ErrorSerializer
        responses[code] = OpenApiResponse(body, description=description)
    return responses
