"""GET /projects/:id/secret_detection/findings: filters and GitLab's offset pagination."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

URL = "/api/v4/projects/{}/secret_detection/findings"


@pytest.fixture
def five(project, import_findings):
    return import_findings(project, [("AWS", f"AKIA{index}") for index in range(5)])


def _get(client, project, query: str = ""):
    return client.get(URL.format(project.pk) + query)


def _links(response) -> dict[str, str]:
    links = {}
    for part in response["Link"].split(", "):
        url, rel = part.split("; ")
        links[rel.removeprefix('rel="').removesuffix('"')] = url.strip("<>")
    return links


def test_a_middle_page_has_gitlabs_headers_and_links(api, developer, project, five) -> None:
    response = _get(api(developer), project, "?per_page=2&page=2&token_type=aws")
    assert response.status_code == 200
    assert [item["id"] for item in response.json()] == [five[2].pk, five[3].pk]
    headers = {name: response[name] for name in ("X-Total", "X-Total-Pages", "X-Page", "X-Per-Page")}
    assert headers == {"X-Total": "5", "X-Total-Pages": "3", "X-Page": "2", "X-Per-Page": "2"}
    assert (response["X-Next-Page"], response["X-Prev-Page"]) == ("3", "1")
    base = f"http://testserver/api/v4/projects/{project.pk}/secret_detection/findings"
    assert _links(response) == {
        "prev": f"{base}?page=1&per_page=2&token_type=aws",
        "next": f"{base}?page=3&per_page=2&token_type=aws",
        "first": f"{base}?page=1&per_page=2&token_type=aws",
        "last": f"{base}?page=3&per_page=2&token_type=aws",
    }


def test_the_first_and_last_pages_have_no_prev_or_next(api, developer, project, five) -> None:
    client = api(developer)
    first = _get(client, project, "?per_page=2")
    assert (first["X-Prev-Page"], first["X-Next-Page"]) == ("", "2")
    assert set(_links(first)) == {"next", "first", "last"}
    last = _get(client, project, "?per_page=2&page=3")
    assert [item["id"] for item in last.json()] == [five[4].pk]
    assert (last["X-Prev-Page"], last["X-Next-Page"]) == ("2", "")
    assert set(_links(last)) == {"prev", "first", "last"}


def test_defaults_are_page_1_of_20(api, developer, project, five) -> None:
    response = _get(api(developer), project)
    assert (response["X-Page"], response["X-Per-Page"], response["X-Total-Pages"]) == ("1", "20", "1")
    assert len(response.json()) == 5


def test_an_empty_list_still_has_one_page(api, developer, project) -> None:
    response = _get(api(developer), project)
    assert response.json() == []
    assert (response["X-Total"], response["X-Total-Pages"], response["X-Next-Page"]) == ("0", "1", "")


@pytest.mark.parametrize(
    ("query", "page", "per_page"),
    [
        ("?page=0", "1", "20"),
        ("?page=-3", "1", "20"),
        ("?per_page=1000", "1", "100"),
        ("?per_page=-1", "1", "20"),  # Kaminari ignores a negative per_page
        ("?page=&per_page=", "1", "20"),
        ("?page=%202%20&per_page=+2", "2", "2"),
    ],
)
def test_out_of_range_values_are_clamped_like_gitlab(api, developer, project, five, query, page, per_page) -> None:
    response = _get(api(developer), project, query)
    assert response.status_code == 200
    assert (response["X-Page"], response["X-Per-Page"]) == (page, per_page)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?page=abc", "page is invalid"),
        ("?page=1.5", "page is invalid"),
        ("?per_page=ten", "per_page is invalid"),
        ("?page=x&per_page=y", "page is invalid, per_page is invalid"),
        ("?per_page=0", "per_page has a value not allowed"),
        ("?page=" + "9" * 5000, "page is invalid"),
        ("?status=alive", "status must be one of unknown, pending, active, inactive"),
    ],
)
def test_bad_values_are_a_400_naming_the_parameter(api, developer, project, five, query, message) -> None:
    response = _get(api(developer), project, query)
    assert response.status_code == 400
    assert response.json() == {"error": message}  # GitLab's parameter validation shape


@pytest.mark.parametrize("page", ["4", "9223372036854775807", "9223372036854775808", "1" + "0" * 40])
def test_a_page_past_the_end_is_empty_however_large(api, developer, project, five, page) -> None:
    response = _get(api(developer), project, f"?per_page=2&page={page}")
    assert response.status_code == 200
    assert response.json() == []
    assert (response["X-Page"], response["X-Total"], response["X-Total-Pages"]) == (page, "5", "3")
    assert (response["X-Prev-Page"], response["X-Next-Page"]) == ("", "")
    assert set(_links(response)) == {"first", "last"}


def test_filters_combine_with_pagination(api, developer, project, import_findings) -> None:
    import_findings(project, [("AWS", "AKIA1"), ("Postman API token", "PMAK-1"), ("AWS", "AKIA2")], prefix="mix")
    response = _get(api(developer), project, "?token_type=AWS&status=unknown&per_page=1")
    assert [item["token_type"] for item in response.json()] == ["AWS"]
    assert (response["X-Total"], response["X-Next-Page"]) == ("2", "2")
    assert _get(api(developer), project, "?status=").status_code == 200  # empty means no filter


def test_reporters_and_outsiders_cannot_list(api, reporter, outsider, project) -> None:
    assert _get(api(reporter), project).status_code == 403
    assert _get(api(outsider), project).status_code == 404
    assert _get(api(), project).status_code == 401
