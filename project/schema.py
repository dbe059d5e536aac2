"""How the OpenAPI schema describes the API beyond what the serializers say: the
authentication schemes (drf-spectacular extensions) and the error responses.

Imported from ``ProjectConfig.ready`` so the extensions are registered before any schema
is generated.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    Direction,
    OpenApiParameter,
    OpenApiRequest,
    OpenApiResponse,
    PolymorphicProxySerializer,
)
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
# GitLab's bodies, exactly, because clients read them: python-gitlab shows ``message`` and,
# when there is one, ``error`` instead. Our own stable code travels in the ``X-Error-Code``
# response header, which no GitLab client reads.


class MessageErrorSerializer(serializers.Serializer):
    """Most errors: ``{"message": "404 Project Not Found"}``."""

    message = serializers.CharField(help_text='What GitLab clients show, e.g. "404 Project Not Found".')


class ParameterErrorSerializer(serializers.Serializer):
    """A parameter grape's validation refuses: ``{"error": "page is invalid"}``."""

    error = serializers.CharField(help_text='Every refused parameter, e.g. "page is invalid, per_page is missing".')


class InsufficientScopeSerializer(serializers.Serializer):
    """A token without the needed scope (GitLab's OAuth 2 bearer-token error)."""

    error = serializers.ChoiceField(choices=["insufficient_scope"])
    error_description = serializers.CharField(
        help_text="The request requires higher privileges than provided by the access token."
    )
    scope = serializers.CharField(help_text="The scopes that would allow the request, space-separated.")


ERROR_SHAPES = [MessageErrorSerializer, ParameterErrorSerializer, InsufficientScopeSerializer]

#: Every API error but the 429 (``project.api.error_response``): one of GitLab's shapes.
ErrorSerializer = PolymorphicProxySerializer(
    component_name="Error", serializers=ERROR_SHAPES, resource_type_field_name=None
)

#: The code of an error (``not_found``, ``invalid``, ``insufficient_scope``…), for logs and
#: scripts; GitLab clients do not read it.
ERROR_CODE = OpenApiParameter(
    "X-Error-Code",
    OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    response=[400, 401, 403, 404, 405, 413, 415, 429],
    required=False,
    description="A stable code of the error, e.g. not_found, invalid, forbidden, auth_throttled.",
)


class RateLimitedMessageSerializer(serializers.Serializer):
    error = serializers.CharField()


class RateLimitedSerializer(serializers.Serializer):
    """GitLab's 429 body of an application rate limit: ``message`` is an object."""

    message = RateLimitedMessageSerializer()


#: A 429: an application rate limit (``RateLimited``), or failed token authentications
#: from the client's address (``{"message": "Retry later"}``, as GitLab's Rack::Attack).
TooManyRequestsSerializer = PolymorphicProxySerializer(
    component_name="TooManyRequests",
    serializers=[RateLimitedSerializer, MessageErrorSerializer],
    resource_type_field_name=None,
)


class MessageSerializer(serializers.Serializer):
    """A plain acknowledgement, e.g. ``{"message": "202 Accepted"}``."""

    message = serializers.CharField()


ERROR_DESCRIPTIONS = {
    400: 'Invalid parameters (`{"error": "<param> is invalid"}`, grape\'s shape), or a malformed request '
    '(`{"message": "400 Bad request - …"}`: a NUL byte or broken Unicode in the path or a parameter).',
    401: "Missing, unknown, expired or revoked token, or a blocked user.",
    403: "The token lacks the scope (GitLab's `insufficient_scope` body) or the user the access level.",
    404: "Unknown project, or one the caller may not see.",
    413: "The request body is too large.",
    415: "Unsupported request media type.",
    429: "Rate limited: retry after `Retry-After` seconds. Too many failed token authentications from the "
    'client\'s address answer `{"message": "Retry later"}`.',
}

RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    location=OpenApiParameter.HEADER,
    response=[429],
    required=True,
    description="Seconds until the rate limit window ends.",
)

#: Any operation of ``ApiView`` refuses a malformed path or query string.
MALFORMED_DESCRIPTION = (
    'A malformed request: `{"message": "400 Bad request - the path contains a NUL byte or malformed Unicode"}` '
    "(or the query string, or the body)."
)

#: The 429 of the failed-authentication throttle can answer any operation that takes a token.
AUTH_THROTTLE_DESCRIPTION = (
    'Too many failed token authentications from the client\'s address: `{"message": "Retry later"}`; '
    "retry after `Retry-After` seconds."
)


def query_parameters(serializer_class: type[serializers.Serializer]) -> list[Any]:
    """An input serializer's fields as query parameters (``extend_schema(parameters=…)``);
    a nested one in Rack's form, ``upload[url]=…`` (OpenAPI's ``deepObject`` style)."""
    parameters: list[Any] = [serializer_class]
    for name, field in serializer_class().fields.items():
        if isinstance(field, serializers.BaseSerializer):
            parameters.append(
                OpenApiParameter(
                    name,
                    field.__class__,  # type: ignore[arg-type]  # any serializer class; the hint names Serializer only
                    style="deepObject",
                    explode=True,
                    description=field.help_text or "",
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


class ApiAutoSchema(AutoSchema):
    """drf-spectacular's inspector for ``ApiView`` (the operations that take a token): each
    may answer the 400 of a malformed request and the 429 of the failed-authentication
    throttle, every 429 documents ``Retry-After``, and every error the ``X-Error-Code``
    header, without each view listing them."""

    def _get_response_bodies(self, direction: Direction = "response") -> dict[str, Any]:
        # (The hook after @extend_schema's responses: its subclass answers
        # get_response_serializers itself.)
        responses = super()._get_response_bodies(direction)
        if "400" not in responses:
            malformed = OpenApiResponse(ErrorSerializer, description=MALFORMED_DESCRIPTION)
            responses["400"] = self._get_response_for_code(malformed, "400", direction=direction)
        if "401" in responses and "429" not in responses:
            throttled = OpenApiResponse(TooManyRequestsSerializer, description=AUTH_THROTTLE_DESCRIPTION)
            responses["429"] = self._get_response_for_code(throttled, "429", direction=direction)
        return responses

    def get_override_parameters(self) -> list[Any]:
        parameters = list(super().get_override_parameters())
        named = {parameter.name for parameter in parameters if isinstance(parameter, OpenApiParameter)}
        parameters += [extra for extra in (RETRY_AFTER, ERROR_CODE) if extra.name not in named]
        return parameters


def error_responses(*codes: int, **descriptions: str) -> dict[int, OpenApiResponse]:
    """``extend_schema(responses=…)`` entries for these error statuses, with the body each
    has. ``descriptions`` override the generic ones by status (``e404="…"``)."""
    responses = {}
    for code in codes:
        description = descriptions.get(f"e{code}", ERROR_DESCRIPTIONS[code])
        body = TooManyRequestsSerializer if code == 429 else ErrorSerializer
        responses[code] = OpenApiResponse(body, description=description)
    return responses


#: Every operation, the callback's too, answers this while the database is unavailable.
UNAVAILABLE_DESCRIPTION = (
    'The database is unavailable (restarting, unreachable): `{"message": "503 Service Unavailable"}`. '
    "Nothing was done; send the request again after `Retry-After` seconds."
)


def document_database_unavailable(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict:
    """drf-spectacular post-processing hook: the 503 of ``project.api`` (with
    ``Retry-After`` and ``X-Error-Code``) on every operation, from the one place that sends it."""
    headers = {
        "Retry-After": {"schema": {"type": "integer"}, "required": True, "description": "Seconds to wait."},
        "X-Error-Code": {"schema": {"type": "string"}, "description": "`database_unavailable`."},
    }
    for item in result.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault(
                    "503",
                    {
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        "headers": headers,
                        "description": UNAVAILABLE_DESCRIPTION,
                    },
                )
    return result
