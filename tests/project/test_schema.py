"""The served OpenAPI schema: what it says about input, errors and authentication, and the
response validator every API test runs through (``tests.support.openapi``)."""

from __future__ import annotations

import pytest
from django.http import JsonResponse
from django.test import RequestFactory
from drf_spectacular.validation import validate_schema

from tests.support.openapi import OpenApiValidator, UndocumentedResponse

pytestmark = pytest.mark.django_db

ALTERNATIVES = [{"PrivateToken": []}, {"BearerToken": []}, {"SessionCookie": []}]
#: The operations that read a public project (or list the public ones) without a token.
ANONYMOUS_READS = {
    "getProject",
    "listProjects",
    "listProjectIssues",
    "getProjectIssue",
    "listIssueNotes",
    "listIssueAwardEmoji",
    "listProjectLabels",
    "listProjectMembers",
    "listAllProjectMembers",
    "getProjectCatalogResource",
}


def _operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_the_served_schema_is_valid_openapi(openapi) -> None:
    validate_schema(openapi.schema)


def test_either_token_header_or_the_session_is_enough(openapi) -> None:
    for path, method, operation in _operations(openapi.schema):
        if path.startswith("/api/v4/internal/"):
            continue
        # A list of requirement objects: alternatives. One object naming both headers would
        # say that both are required. A public project may be read without any ({}).
        expected = [*ALTERNATIVES, {}] if operation["operationId"] in ANONYMOUS_READS else ALTERNATIVES
        assert operation["security"] == expected, (method, path)


def test_every_operation_documents_its_errors_with_the_bodies_the_api_sends(openapi) -> None:
    error = {"$ref": "#/components/schemas/Error"}
    for path, method, operation in _operations(openapi.schema):
        responses = operation["responses"]
        assert "401" in responses, (method, path)
        assert any(code.startswith("2") for code in responses), (method, path)
        for code, response in responses.items():
            if code.startswith("4"):
                expected = {"$ref": "#/components/schemas/TooManyRequests"} if code == "429" else error
                assert response["content"]["application/json"]["schema"] == expected, (method, path, code)
                assert response["description"], (method, path, code)
                if not path.startswith("/api/v4/internal/"):
                    assert "X-Error-Code" in response["headers"], (method, path, code)
    # Every operation that takes a token may answer the failed-authentication throttle's
    # 429 (and a malformed request's 400); the callback takes no token.
    rate_limited = {(m, p) for p, m, o in _operations(openapi.schema) if "429" in o["responses"]}
    assert rate_limited == {(m, p) for p, m, _ in _operations(openapi.schema) if not p.startswith("/api/v4/internal/")}
    for method, path in rate_limited:
        assert "400" in openapi.schema["paths"][path][method]["responses"]
        assert openapi.schema["paths"][path][method]["responses"]["429"]["headers"]["Retry-After"]["required"]


def test_error_shapes_are_the_exception_handlers(openapi) -> None:
    schemas = openapi.schema["components"]["schemas"]
    shapes = {ref["$ref"].rsplit("/", 1)[-1] for ref in schemas["Error"]["oneOf"]}
    assert shapes == {"MessageError", "ParameterError", "InsufficientScope"}
    assert schemas["MessageError"]["required"] == ["message"]
    assert schemas["ParameterError"]["required"] == ["error"]
    assert schemas["RateLimited"]["properties"]["message"] == {"$ref": "#/components/schemas/RateLimitedMessage"}


def test_the_callback_takes_json_only_and_documents_its_signature_headers(openapi) -> None:
    operation = openapi.schema["paths"]["/api/v4/internal/token_status/callback"]["post"]
    assert list(operation["requestBody"]["content"]) == ["application/json"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert headers["X-SDRS-Timestamp"]["required"]
    assert headers["X-SDRS-Signature"]["required"]
    body = openapi.schema["components"]["schemas"]["TokenStatusCallback"]
    assert set(body["required"]) == {"finding_id", "status", "request_id", "verified_at"}
    assert set(operation["responses"]) == {"200", "400", "401", "404", "415", "503"}


def test_the_findings_list_is_a_paginated_list(openapi) -> None:
    operation = openapi.schema["paths"]["/api/v4/projects/{project_id}/secret_detection/findings"]["get"]
    ok = operation["responses"]["200"]
    schema = ok["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = openapi.schema["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    assert schema == {"type": "array", "items": {"$ref": "#/components/schemas/Finding"}}
    assert {"X-Total", "X-Total-Pages", "X-Page", "X-Per-Page", "X-Next-Page", "X-Prev-Page", "Link"} <= set(
        ok["headers"]
    )
    query = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    assert query == {"page", "per_page", "status", "token_type"}


def test_the_export_parameters_are_documented_in_every_form_they_are_accepted(openapi) -> None:
    operation = openapi.schema["paths"]["/api/v4/projects/{project_id}/export"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-www-form-urlencoded", "multipart/form-data"}
    assert content["application/x-www-form-urlencoded"]["encoding"]["upload"] == {
        "style": "deepObject",
        "explode": True,
    }
    upload = next(p for p in operation["parameters"] if p["name"] == "upload")
    assert (upload["in"], upload["style"], upload["explode"]) == ("query", "deepObject", True)
    schemas = openapi.schema["components"]["schemas"]
    method = schemas["UploadParams"]["properties"]["http_method"]
    assert method["default"] == "PUT"
    assert schemas["HttpMethodEnum"]["enum"] == ["PUT", "POST"]
    assert schemas["ProjectExportRequest"]["properties"]["description"]["maxLength"] == 5000


# --- the validator ----------------------------------------------------------------------


def _answer(path: str, status: int, body: object, method: str = "get", **headers: str) -> JsonResponse:
    response = JsonResponse(body, status=status, safe=False)
    response.wsgi_request = getattr(RequestFactory(), method)(path)
    for name, value in headers.items():
        response[name] = value
    return response


USER = {
    "id": 1,
    "username": "u",
    "name": "u",
    "state": "active",
    "avatar_url": None,
    "web_url": "http://testserver/u",
    "created_at": "2026-01-01T00:00:00Z",
    "email": "u@example.com",
    "is_admin": False,
    "last_sign_in_at": None,
}


def test_the_validator_accepts_a_documented_response(openapi: OpenApiValidator) -> None:
    openapi.check(_answer("/api/v4/user", 200, USER))
    openapi.check(_answer("/api/v4/user", 401, {"message": "401 Unauthorized"}))


@pytest.mark.parametrize(
    ("response", "complaint"),
    [
        (_answer("/api/v4/user", 418, {"message": "x", "error": "x"}), "status 418 is not documented"),
        (_answer("/api/v4/user", 404, {"message": "x", "error": "x"}), "status 404 is not documented"),
        (_answer("/api/v4/user", 200, {**USER, "id": "1"}), "at $.id: '1' is not of type 'integer'"),
        (_answer("/api/v4/user", 200, {**USER, "secret": 1}), "'secret' was unexpected"),
        (_answer("/api/v4/user", 200, {k: v for k, v in USER.items() if k != "email"}), "'email' is a required"),
        (_answer("/api/v4/user", 200, {**USER, "created_at": "yesterday"}), "is not a 'date-time'"),
        (_answer("/api/v4/user", 401, {"message": "401 Unauthorized", "error": "x"}), "the body does not match"),
        (_answer("/api/v4/projects/1/secret_detection/findings", 200, []), "header(s) X-Total"),
        (_answer("/api/v4/user", 200, [USER]), "is not of type 'object'"),
        (_answer("/api/v4/projects/1/export", 429, {"message": "slow down"}, method="post"), "Retry-After"),
        (_answer("/api/v4/nothing-here", 200, {}), "only a 4xx error may answer there"),
        (_answer("/api/v4/nothing-here", 404, {"detail": "Not found."}), "not valid under any"),
        (_answer("/api/v4/user", 200, USER, method="delete"), "only a 4xx error may answer there"),
    ],
)
def test_the_validator_refuses_what_the_schema_does_not_document(openapi, response, complaint) -> None:
    with pytest.raises(UndocumentedResponse) as caught:
        openapi.check(response)
    assert complaint in str(caught.value)


def test_the_api_fixture_validates_every_response(api, owner, openapi, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(openapi, "check", seen.append)
    api(owner).get("/api/v4/user")
    api().get("/api/v4/user")
    assert [(r.status_code, r.wsgi_request.path) for r in seen] == [(200, "/api/v4/user"), (401, "/api/v4/user")]


def test_a_response_the_schema_does_not_document_fails_the_test_that_got_it(api, owner, openapi, monkeypatch) -> None:
    user = openapi.schema["paths"]["/api/v4/user"]["get"]
    monkeypatch.setitem(user, "responses", {k: v for k, v in user["responses"].items() if k != "200"})
    with pytest.raises(UndocumentedResponse, match=r"GET /api/v4/user answered 200: status 200 is not documented"):
        api(owner).get("/api/v4/user")


def test_every_operation_documents_the_503_of_an_unavailable_database(openapi) -> None:
    error = {"$ref": "#/components/schemas/Error"}
    for path, method, operation in _operations(openapi.schema):
        unavailable = operation["responses"]["503"]
        assert unavailable["content"]["application/json"]["schema"] == error, (method, path)
        assert unavailable["headers"]["Retry-After"]["required"], (method, path)
