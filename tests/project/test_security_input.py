"""Hostile input (defect 3): a NUL byte or a lone surrogate anywhere in the API's text input
is a 400 in GitLab's shape, never a 500 with a traceback."""

from __future__ import annotations

import json

import pytest

from exports.models import ProjectExportJob

pytestmark = pytest.mark.django_db

MALFORMED = "400 Bad request - {where} contains a NUL byte or malformed Unicode"


def _assert_malformed(response, where: str) -> None:
    assert response.status_code == 400, response.content
    assert response.json() == {"message": MALFORMED.format(where=where)}
    assert response["X-Error-Code"] == "malformed_request"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v4/projects/a%2Fb%00"),
        ("get", "/api/v4/projects/acme%2Fwidgets%00"),
        ("get", "/api/v4/projects/%00"),
        ("get", "/api/v4/projects/acme%2Fwidgets%00/export"),
        ("post", "/api/v4/projects/acme%2Fwidgets%00/export"),
        ("get", "/api/v4/projects/acme%2Fwidgets%00/export/download"),
        ("get", "/api/v4/projects/acme%2Fwidgets%00/secret_detection/findings"),
    ],
)
def test_a_nul_byte_in_the_project_path_is_a_400(api, maintainer, project, method, path) -> None:
    _assert_malformed(getattr(api(maintainer), method)(path), "the path")


def test_a_malformed_path_is_refused_before_authentication(api) -> None:
    _assert_malformed(api().get("/api/v4/projects/a%2Fb%00"), "the path")


def test_broken_utf8_in_the_path_is_not_a_server_error(api, maintainer, project) -> None:
    # Django keeps undecodable bytes percent-encoded: no such project.
    response = api(maintainer).get("/api/v4/projects/acme%2Fwidgets%ED%A0%80")
    assert response.status_code == 404
    assert response.json() == {"message": "404 Project Not Found"}


@pytest.mark.parametrize(
    "body",
    [
        {"description": "\ud800"},
        {"description": "before\x00after"},
        {"upload": {"url": "https://example.test/\x00"}},
        {"upload": {"url": "https://example.test/\udcff"}},
        {"upload": {"url": "https://example.test/x", "http_method": "PUT\x00"}},
        {"description\x00": "a key"},
    ],
)
def test_malformed_json_parameters_are_a_400(api, maintainer, project, body) -> None:
    encoded = json.dumps(body)  # lone surrogates as \ud800 escapes, NUL as \u0000
    response = api(maintainer).post(f"/api/v4/projects/{project.pk}/export", encoded, content_type="application/json")
    _assert_malformed(response, "the body")
    assert not ProjectExportJob.objects.exists()


@pytest.mark.parametrize(
    "data",
    [{"description": "a\x00b"}, {"upload[url]": "https://example.test/\x00"}, {"upload[http_method]": "\x00"}],
)
def test_malformed_form_parameters_are_a_400(api, maintainer, project, data) -> None:
    client = api(maintainer)
    _assert_malformed(client.post(f"/api/v4/projects/{project.pk}/export", data), "the body")
    multipart = client.post(f"/api/v4/projects/{project.pk}/export", data, format="multipart")
    _assert_malformed(multipart, "the body")
    assert not ProjectExportJob.objects.exists()


@pytest.mark.parametrize(
    "query",
    ["description=a%00b", "upload[url]=https://example.test/%00", "upload[http_method]=%00", "x%00=1"],
)
def test_malformed_query_parameters_are_a_400(api, maintainer, project, query) -> None:
    response = api(maintainer).post(f"/api/v4/projects/{project.pk}/export?{query}")
    _assert_malformed(response, "the query string")
    assert not ProjectExportJob.objects.exists()


@pytest.mark.parametrize("query", ["page=%00", "per_page=1%00", "token_type=%00", "status=%00"])
def test_malformed_pagination_and_filters_are_a_400(api, developer, project, query) -> None:
    response = api(developer).get(f"/api/v4/projects/{project.pk}/secret_detection/findings?{query}")
    _assert_malformed(response, "the query string")


@pytest.mark.parametrize("query", ["page=%ED%A0%80", "per_page=%FF", "page=99999999999999999999999999"])
def test_undecodable_or_huge_numbers_are_grapes_400(api, developer, project, query) -> None:
    response = api(developer).get(f"/api/v4/projects/{project.pk}/secret_detection/findings?{query}")
    assert response.status_code in (200, 400), response.content
    if response.status_code == 400:
        assert set(response.json()) == {"error"}


def test_well_formed_unicode_is_fine(api, maintainer, project) -> None:
    response = api(maintainer).post(
        f"/api/v4/projects/{project.pk}/export", {"description": "Ünïcødé 💥 and \u2028 too"}, format="json"
    )
    assert response.status_code == 202
    assert ProjectExportJob.objects.get().description == "Ünïcødé 💥 and \u2028 too"
