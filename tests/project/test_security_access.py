"""Who may see and do what through the API: administrators are explicit (defect 1), GitLab's
visibility rules (defect 5), and GitLab's error bodies with our code in a header (defect 5)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group, Permission

from exports.models import ProjectExportJob
from project import services
from project.models import User, Visibility

pytestmark = pytest.mark.django_db

ADMINISTER = "project.administer_instance"


def _grant(user: User, codename: str = "administer_instance") -> User:
    user.user_permissions.add(Permission.objects.get(content_type__app_label="project", codename=codename))
    return User.objects.get(pk=user.pk)  # a fresh instance: permissions are cached per object


@pytest.fixture
def staff(db) -> User:
    """Staff with every permission of the admin's job pages, but no administrator."""
    user = User.objects.create_user("staffer", "staffer@example.com", "pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.exclude(codename="administer_instance"))
    return User.objects.get(pk=user.pk)


# --- 1. staff is not an instance administrator ------------------------------------------------


def test_staff_without_the_permission_is_not_an_administrator(api, staff, project) -> None:
    assert staff.is_admin is False
    client = api(staff)
    assert client.get("/api/v4/user").json()["is_admin"] is False
    assert client.get(f"/api/v4/projects/{project.pk}").status_code == 404


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("post", "/export"), ("get", "/export"), ("get", "/export/download"), ("post", "/secret_detection/reports")],
)
def test_staff_cannot_export_download_or_import_on_a_private_project_it_is_not_member_of(
    api, staff, project, method, suffix
) -> None:
    response = getattr(api(staff), method)(f"/api/v4/projects/{project.pk}{suffix}", {}, format="json")
    assert response.status_code == 404, response.content
    assert response.json() == {"message": "404 Project Not Found"}
    assert not ProjectExportJob.objects.exists()


def test_the_permission_granted_in_the_admin_makes_an_administrator(api, staff, project) -> None:
    admin = _grant(staff)
    assert admin.is_admin is True
    client = api(admin)
    assert client.get("/api/v4/user").json()["is_admin"] is True
    assert client.get(f"/api/v4/projects/{project.pk}").status_code == 200
    assert client.post(f"/api/v4/projects/{project.pk}/export").status_code == 202
    assert ProjectExportJob.objects.get().exported_by_admin is True


def test_the_permission_through_a_group_counts_too(outsider, project) -> None:
    group = Group.objects.create(name="instance admins")
    group.permissions.add(Permission.objects.get(codename="administer_instance"))
    outsider.groups.add(group)
    assert User.objects.get(pk=outsider.pk).is_admin is True


def test_a_superuser_is_an_administrator_and_an_inactive_one_is_not(admin_user) -> None:
    assert admin_user.is_admin is True
    admin_user.is_active = False
    admin_user.save()
    assert User.objects.get(pk=admin_user.pk).is_admin is False
    granted = _grant(User.objects.create_user("blocked", is_active=False))
    assert granted.is_admin is False


def test_the_permission_exists_with_its_description() -> None:
    permission = Permission.objects.get(content_type__app_label="project", codename="administer_instance")
    assert permission.name == "Is a GitLab instance administrator (sees and manages every project in the API)"
    assert f"{permission.content_type.app_label}.{permission.codename}" == ADMINISTER


# --- 5. GitLab's visibility rules ----------------------------------------------------------


@pytest.fixture
def projects(owner):
    return {
        level.label: services.project_create(
            namespace_path="vis", path=level.label, name=level.label, owner=owner, visibility_level=level
        )
        for level in Visibility
    }


def test_anyone_may_read_a_public_project_without_a_token(api, projects) -> None:
    public = projects["public"]
    for ref in (public.pk, "vis%2Fpublic"):
        response = api().get(f"/api/v4/projects/{ref}")
        assert response.status_code == 200
        body = response.json()
        assert body["visibility"] == "public"
        assert "permissions" not in body  # GitLab presents the plain Project, not ProjectWithAccess


@pytest.mark.parametrize("level", ["internal", "private"])
def test_without_a_token_internal_and_private_projects_are_not_found(api, projects, level) -> None:
    response = api().get(f"/api/v4/projects/{projects[level].pk}")
    assert response.status_code == 404
    assert response.json() == {"message": "404 Project Not Found"}


def test_internal_projects_are_visible_to_every_signed_in_user_private_ones_to_members(
    api, projects, outsider, owner
) -> None:
    outsider_client = api(outsider)
    assert outsider_client.get(f"/api/v4/projects/{projects['internal'].pk}").status_code == 200
    assert outsider_client.get(f"/api/v4/projects/{projects['public'].pk}").status_code == 200
    assert outsider_client.get(f"/api/v4/projects/{projects['private'].pk}").status_code == 404
    assert api(owner).get(f"/api/v4/projects/{projects['private'].pk}").status_code == 200


def test_a_bad_token_is_401_even_on_a_public_project(api, projects) -> None:
    client = api()
    client.credentials(HTTP_PRIVATE_TOKEN="glpat-not-a-real-token-00")
    response = client.get(f"/api/v4/projects/{projects['public'].pk}")
    assert response.status_code == 401
    assert response.json() == {"message": "401 Unauthorized"}


def test_exports_and_the_user_still_need_a_token(api, projects) -> None:
    client = api()
    assert client.get("/api/v4/user").status_code == 401
    for method, suffix in [("get", "/export"), ("post", "/export"), ("get", "/export/download")]:
        response = getattr(client, method)(f"/api/v4/projects/{projects['public'].pk}{suffix}")
        assert response.status_code == 401, suffix
    assert not ProjectExportJob.objects.exists()


def test_the_project_operation_documents_anonymous_access(openapi) -> None:
    security = openapi.schema["paths"]["/api/v4/projects/{project_id}"]["get"]["security"]
    assert {} in security
    assert {} not in openapi.schema["paths"]["/api/v4/user"]["get"]["security"]


# --- 5. GitLab's error bodies; our code in X-Error-Code ------------------------------------


@pytest.mark.parametrize(
    ("request_args", "status", "body", "code"),
    [
        (("get", "/api/v4/user", {}), 401, {"message": "401 Unauthorized"}, "unauthorized"),
        (("get", "/api/v4/projects/999999", {"token": True}), 404, {"message": "404 Project Not Found"}, "not_found"),
        (("get", "/api/v4/nothing-here", {"token": True}), 404, {"message": "404 Not Found"}, "not_found"),
        (
            ("get", "/api/v4/projects/{project}/secret_detection/findings?page=x", {"token": True}),
            400,
            {"error": "page is invalid"},
            "invalid",
        ),
        (
            ("post", "/api/v4/projects/{project}/export", {"as": "developer"}),
            403,
            {"message": "403 Forbidden"},
            "forbidden",
        ),
    ],
)
def test_error_bodies_are_gitlabs_and_the_code_is_a_header(
    request, api, project, owner, request_args, status, body, code
) -> None:
    method, url, options = request_args
    user = request.getfixturevalue(options["as"]) if "as" in options else owner if options.get("token") else None
    response = getattr(api(user), method)(url.format(project=project.pk))
    assert response.status_code == status
    assert response.json() == body
    assert response["X-Error-Code"] == code


def test_no_error_body_carries_both_message_and_error(api, owner, project) -> None:
    """python-gitlab shows ``error`` over ``message`` when both are there: never both."""
    client = api(owner, scopes=("read_api",))
    bodies = [
        client.get("/api/v4/projects/999999").json(),
        client.post(f"/api/v4/projects/{project.pk}/export").json(),  # insufficient scope
        api().get("/api/v4/user").json(),
    ]
    for body in bodies:
        assert not {"message", "error"} <= body.keys(), body


def test_the_schema_error_component_is_one_of_gitlabs_shapes(openapi) -> None:
    schemas = openapi.schema["components"]["schemas"]
    shapes = [ref["$ref"].rsplit("/", 1)[-1] for ref in schemas["Error"]["oneOf"]]
    assert shapes == ["MessageError", "ParameterError", "InsufficientScope"]
    assert schemas["MessageError"]["required"] == ["message"]
    assert schemas["ParameterError"]["required"] == ["error"]
    assert set(schemas["InsufficientScope"]["properties"]) == {"error", "error_description", "scope"}
    too_many = [ref["$ref"].rsplit("/", 1)[-1] for ref in schemas["TooManyRequests"]["oneOf"]]
    assert too_many == ["RateLimited", "MessageError"]
    assert "X-Error-Code" in json.dumps(openapi.schema["paths"]["/api/v4/user"]["get"]["responses"]["401"])
