"""Every API response the tests receive is checked against the served OpenAPI schema.

``OpenApiValidator`` is built once per session from ``/api/openapi.json``; the ``api``
fixture's client (``ValidatingAPIClient``) hands it each response to ``/api/v4/…``. A
response passes when

* its path and method resolve (with Django's own URL resolver, so exactly as served) to a
  documented operation, and its status code is documented for that operation;
* its media type is one the documented response has, and a JSON body is valid against the
  documented schema. Objects are checked strictly: a field the schema does not name fails
  too, so the schema cannot silently fall behind the serializers;
* the headers the documented response marks required are there (pagination, Retry-After).

A request outside every documented operation (an unknown route, a method a path does not
have) must be answered with a 4xx whose body is the documented ``Error`` shape.

Anything else raises ``UndocumentedResponse`` (an ``AssertionError``) in the test that
received it, naming the request, the operation and what does not match.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from typing import Any
from urllib.parse import urlsplit

from django.http import HttpResponseBase
from django.urls import Resolver404, resolve
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from rest_framework.test import APIClient

API_PREFIX = "/api/v4/"
SCHEMA_URL = "/api/openapi.json"
_BASE = "urn:openapi"
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUBSCHEMA = ("items", "not", "additionalProperties", "contains")


class UndocumentedResponse(AssertionError):
    """A response the served schema does not describe."""


def _formats() -> FormatChecker:
    checker = FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None

    @checker.checks("uri")
    def uri(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parts = urlsplit(value)
        return bool(parts.scheme and parts.netloc)

    return checker


def to_json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema object as JSON Schema (2020-12): ``nullable`` becomes a null
    alternative, local ``$ref``s point into the registry, and objects that list their
    properties allow no others (strict: the schema must name every field we send)."""
    if not isinstance(node, dict):
        return node
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/"):
            result[key] = _BASE + value
        elif key == "properties" and isinstance(value, dict):
            result[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            result[key] = [to_json_schema(sub) for sub in value]
        elif key in _SUBSCHEMA:
            result[key] = to_json_schema(value)
        elif key in ("nullable", "readOnly", "writeOnly", "discriminator", "xml", "externalDocs", "example"):
            continue
        else:
            result[key] = value
    if "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    if node.get("nullable") is True:
        return {"anyOf": [result, {"type": "null"}]}
    return result


def _template(route: str) -> str:
    """Django's route (``api/v4/projects/<path:project_id>``) as the schema's path key."""
    return "/" + _CONVERTER.sub(r"{\1}", route)


def _media_type(response: HttpResponseBase) -> str:
    return (response.get("Content-Type") or "").split(";")[0].strip().lower()


class OpenApiValidator:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        components = {"components": {"schemas": to_json_schema_map(schema.get("components", {}).get("schemas", {}))}}
        self.registry = Registry().with_resource(_BASE, DRAFT202012.create_resource(components))
        self.format_checker = _formats()
        self._validators: dict[tuple[str, ...], Draft202012Validator] = {}

    # --- lookup ---------------------------------------------------------------------------

    def operation(self, path: str, method: str) -> tuple[str | None, dict[str, Any] | None]:
        """(schema path, operation) for a request, either None when it has none."""
        try:
            match = resolve(path)
        except Resolver404:
            return None, None
        template = _template(match.route)
        item = self.schema["paths"].get(template)
        if item is None:
            return template, None
        return template, item.get(method.lower())

    def _validator(self, key: tuple[str, ...], schema: dict[str, Any]) -> Draft202012Validator:
        if key not in self._validators:
            self._validators[key] = Draft202012Validator(
                to_json_schema(schema), registry=self.registry, format_checker=self.format_checker
            )
        return self._validators[key]

    # --- checks ---------------------------------------------------------------------------

    def check(self, response: HttpResponseBase) -> None:
        request = response.wsgi_request
        path, method, status = request.path_info, request.method, response.status_code
        if not path.startswith(API_PREFIX):
            return
        where = f"{method} {path} answered {status}"
        template, operation = self.operation(path, method)
        if operation is None:
            self._check_outside_operations(response, where, template)
            return
        name = f"operation {operation.get('operationId')} ({method} {template})"
        documented = operation.get("responses", {})
        described = documented.get(str(status)) or documented.get("default")
        if described is None:
            raise UndocumentedResponse(
                f"{where}: status {status} is not documented for {name}; documented: {', '.join(sorted(documented))}"
            )
        self._check_headers(response, described, f"{where}, {name}")
        self._check_body(response, described, (template, method.lower(), str(status)), f"{where}, {name}")

    def _check_outside_operations(self, response: HttpResponseBase, where: str, template: str | None) -> None:
        context = f"no documented operation for this path and method (schema path: {template or 'none'})"
        if not 400 <= response.status_code < 500:
            raise UndocumentedResponse(f"{where}: {context}, and only a 4xx error may answer there")
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        self._check_body(response, error, ("<outside>", "Error"), f"{where} ({context})")

    def _check_headers(self, response: HttpResponseBase, described: dict[str, Any], where: str) -> None:
        missing = [
            header
            for header, spec in (described.get("headers") or {}).items()
            if spec.get("required") and not response.has_header(header)
        ]
        if missing:
            raise UndocumentedResponse(f"{where}: the documented header(s) {', '.join(missing)} are missing")

    def _check_body(
        self, response: HttpResponseBase, described: dict[str, Any], key: tuple[str, ...], where: str
    ) -> None:
        content = described.get("content") or {}
        media_type = _media_type(response)
        streaming = getattr(response, "streaming", False)
        if not content:
            if not streaming and response.content:
                raise UndocumentedResponse(f"{where}: the schema documents no body, but one came ({media_type})")
            return
        if media_type not in content:
            raise UndocumentedResponse(
                f"{where}: media type {media_type or 'none'!r} is not documented (documented: {', '.join(content)})"
            )
        if media_type != "application/json" or streaming:
            return
        try:
            body = json.loads(response.content)
        except ValueError:
            raise UndocumentedResponse(f"{where}: the body is not JSON: {response.content[:200]!r}") from None
        schema = content[media_type].get("schema") or {}
        validator = self._validator((*key, media_type), schema)
        error = best_match(validator.iter_errors(body))
        if error is not None:
            location = "$" + "".join(f"[{part!r}]" if isinstance(part, int) else f".{part}" for part in error.path)
            message = error.message if len(error.message) <= 300 else error.message[:300] + "…"
            raise UndocumentedResponse(
                f"{where}: the body does not match the documented schema at {location}: {message}\n"
                f"body: {json.dumps(body)[:1000]}"
            )


def to_json_schema_map(schemas: dict[str, Any]) -> dict[str, Any]:
    return {name: to_json_schema(copy.deepcopy(schema)) for name, schema in schemas.items()}


class ValidatingAPIClient(APIClient):
    """DRF's test client that checks every API response against the served schema."""

    def __init__(self, *args: Any, validator: OpenApiValidator, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.validator = validator

    def request(self, **kwargs: Any) -> HttpResponseBase:
        response = super().request(**kwargs)
        self.validator.check(response)
        return response


def served_schema() -> dict[str, Any]:
    """The schema as the site serves it (needs database access: the request runs through
    the whole middleware stack)."""
    response = APIClient().get(SCHEMA_URL)
    assert response.status_code == 200, response.content[:500]
    return json.loads(response.content)
