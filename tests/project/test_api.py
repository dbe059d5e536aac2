"""The API base: authentication, scopes, GitLab's error shapes, project lookup, request ids."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import pytest
from django.utils import timezone

from project import services
from project.models import AccessToken, Visibility
from tests.support.openapi import ValidatingAPIClient

pytestmark = pytest.mark.django_db


def test_current_user_with_private_token_header(api, owner) -> None:
    response = api(owner).get("/api/v4/user")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == owner.pk
    assert body["username"] == "owner"
    assert body["is_admin"] is False
    assert {"name", "state", "web_url", "created_at"} <= body.keys()


def test_current_user_with_bearer_token(api, token_for, owner) -> None:
    client = api()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(owner)}")
    assert client.get("/api/v4/user").json()["username"] == "owner"


def test_missing_token_is_401_json(api) -> None:
    response = api().get("/api/v4/user")
    assert response.status_code == 401
    assert response.json() == {"message": "401 Unauthorized"}
    assert response["X-Error-Code"] == "unauthorized"


@pytest.mark.parametrize("state", ["unknown", "expired", "revoked", "blocked_user"])
def test_bad_expired_revoked_or_blocked_token_is_401(api, state, owner) -> None:
    token, value = services.access_token_create(user=owner, name="t", scopes=["api"])
    if state == "unknown":
        value = value[:-1] + ("x" if value[-1] != "x" else "y")
    elif state == "expired":
        AccessToken.objects.filter(pk=token.pk).update(expires_at=timezone.localdate())
    elif state == "revoked":
        services.access_token_revoke(token_id=token.pk)
    else:
        owner.is_active = False
        owner.save()
    client = api()
    client.credentials(HTTP_PRIVATE_TOKEN=value)
    response = client.get("/api/v4/user")
    assert response.status_code == 401
    assert response.json()["message"] == "401 Unauthorized"


def test_token_use_is_recorded(api, owner) -> None:
    api(owner).get("/api/v4/user")
    assert AccessToken.objects.get(user=owner).last_used_at is not None


def test_read_api_token_reads_but_cannot_write(api, owner, project) -> None:
    client = api(owner, scopes=("read_api",))
    assert client.get(f"/api/v4/projects/{project.pk}").status_code == 200
    response = client.post(f"/api/v4/projects/{project.pk}", {})
    assert response.status_code == 403
    # GitLab's OAuth 2 bearer-token error, exactly.
    assert response.json() == {
        "error": "insufficient_scope",
        "error_description": "The request requires higher privileges than provided by the access token.",
        "scope": "api",
    }


def test_read_user_token_can_only_read_the_user(api, owner, project) -> None:
    client = api(owner, scopes=("read_user",))
    assert client.get("/api/v4/user").status_code == 200
    assert client.get(f"/api/v4/projects/{project.pk}").status_code == 403


def test_project_by_id_has_gitlab_fields(api, owner, project) -> None:
    body = api(owner).get(f"/api/v4/projects/{project.pk}").json()
    assert body["id"] == project.pk
    assert body["path_with_namespace"] == "acme/widgets"
    assert body["visibility"] == "private"
    assert body["web_url"] == "http://testserver/acme/widgets"
    assert body["permissions"]["project_access"]["access_level"] == 50
    for field in ("name", "path", "description", "created_at", "name_with_namespace", "namespace"):
        assert field in body


def test_project_by_url_encoded_path(api, owner, project) -> None:
    response = api(owner).get(f"/api/v4/projects/{quote('acme/widgets', safe='')}")
    assert response.status_code == 200
    assert response.json()["id"] == project.pk


@pytest.mark.parametrize("ref", ["999999", "acme%2Fnope", "not-a-path", "-1", "%20"])
def test_unknown_or_malformed_project_is_404(api, owner, project, ref) -> None:
    response = api(owner).get(f"/api/v4/projects/{ref}")
    assert response.status_code == 404
    assert response.json() == {"message": "404 Project Not Found"}
    assert response["X-Error-Code"] == "not_found"


def test_private_project_of_someone_else_is_404(api, outsider, project) -> None:
    assert api(outsider).get(f"/api/v4/projects/{project.pk}").status_code == 404


def test_internal_project_is_visible_to_any_user(api, outsider, project) -> None:
    project.visibility_level = Visibility.INTERNAL
    project.save()
    assert api(outsider).get(f"/api/v4/projects/{project.pk}").status_code == 200


def test_admin_sees_every_project(api, admin_user, project) -> None:
    assert api(admin_user).get(f"/api/v4/projects/{project.pk}").status_code == 200


def test_unknown_api_route_is_404_json(api, owner) -> None:
    response = api(owner).get("/api/v4/nothing-here")
    assert response.status_code == 404
    assert response.json()["message"] == "404 Not Found"


def test_request_id_is_echoed_or_generated(api, owner) -> None:
    client = api(owner)
    given = client.get("/api/v4/user", HTTP_X_REQUEST_ID="abc-123")
    assert given["X-Request-ID"] == "abc-123"
    generated = client.get("/api/v4/user")
    assert len(generated["X-Request-ID"]) == 32
    unsafe = client.get("/api/v4/user", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert unsafe["X-Request-ID"] != "bad id\nwith newline"


def test_session_auth_requires_csrf_on_writes(openapi, owner, project) -> None:
    client = ValidatingAPIClient(enforce_csrf_checks=True, validator=openapi)
    client.force_login(owner)
    assert client.get("/api/v4/user").status_code == 200
    response = client.post(f"/api/v4/projects/{project.pk}", {})
    assert response.status_code == 403
    assert "message" in response.json()


def test_openapi_schema_is_served(client) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert "/api/v4/user" in response.content.decode()


def test_access_token_scopes_are_validated(owner) -> None:
    from project.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        services.access_token_create(user=owner, name="t", scopes=["sudo"])
    with pytest.raises(ValidationFailed):
        services.access_token_create(user=owner, name="t", scopes=[])
    with pytest.raises(ValidationFailed):
        services.access_token_create(
            user=owner, name="t", scopes=["api"], expires_at=timezone.localdate() - timedelta(days=1)
        )


def test_tokens_are_stored_hashed(owner) -> None:
    token, value = services.access_token_create(user=owner, name="t", scopes=["api"])
    assert value.startswith("glpat-")
    assert len(value) == 26
    stored = AccessToken.objects.filter(pk=token.pk).values().get()
    assert value not in str(stored)
    assert token.prefix == value[:8]


def test_openapi_schema_describes_token_authentication(client) -> None:
    response = client.get("/api/openapi.json")
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    schema = response.json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["PrivateToken"] == {
        "type": "apiKey",
        "in": "header",
        "name": "PRIVATE-TOKEN",
        "description": "Personal access token",
    }
    assert schemes["BearerToken"]["scheme"] == "bearer"
