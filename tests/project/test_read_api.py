"""The read API through the test client (every response checked against the served schema):
GitLab's shapes, parameters and messages, visibility, pagination and query counts."""

from __future__ import annotations

from datetime import date, timedelta
from urllib.parse import quote, urlparse

import pytest
from django.utils import timezone

from project import services
from project.models import AccessLevel, Issue, Label, Note, Project, ProjectMember, Visibility

pytestmark = pytest.mark.django_db


def add_issue(project: Project, iid: int, *, author=None, labels=(), state="opened", notes=0, **fields) -> Issue:
    issue = Issue.objects.create(
        project=project,
        iid=iid,
        title=fields.pop("title", f"Issue {iid}"),
        author=author,
        state=state,
        created_at=timezone.now() - timedelta(minutes=100 - iid),
        **fields,
    )
    for title in labels:
        issue.labels.add(Label.objects.get_or_create(project=project, title=title)[0])
    for n in range(notes):
        Note.objects.create(issue=issue, author=author, note=f"note {n} on {iid}")
    return issue


@pytest.fixture
def public(owner) -> Project:
    return services.project_create(
        namespace_path="open", path="source", name="Source", owner=owner, visibility_level=Visibility.PUBLIC
    )


@pytest.fixture
def internal(owner) -> Project:
    return services.project_create(
        namespace_path="corp", path="tools", name="Tools", owner=owner, visibility_level=Visibility.INTERNAL
    )


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()]


# --- GET /projects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "sees"),
    [
        ("anonymous", {"public"}),
        ("outsider", {"public", "internal"}),
        ("guest", {"public", "internal", "private"}),
        ("admin_user", {"public", "internal", "private"}),
    ],
)
def test_the_project_list_follows_gitlabs_visibility(api, request, who, sees, project, public, internal) -> None:
    client = api() if who == "anonymous" else api(request.getfixturevalue(who))
    names = {"public": public.pk, "internal": internal.pk, "private": project.pk}
    assert set(_ids(client.get("/api/v4/projects"))) == {names[name] for name in sees}


def test_membership_keeps_the_callers_projects_and_shows_their_access(api, guest, project, public) -> None:
    body = api(guest).get("/api/v4/projects", {"membership": "true"}).json()
    assert [item["id"] for item in body] == [project.pk]
    assert body[0]["permissions"]["project_access"]["access_level"] == AccessLevel.GUEST
    assert body[0]["_links"]["issues"].endswith(f"/api/v4/projects/{project.pk}/issues")


def test_anonymous_callers_get_projects_without_a_permissions_block(api, outsider, public) -> None:
    # GitLab shows anonymous callers its Project entity, not ProjectWithAccess.
    (anonymous,) = api().get("/api/v4/projects").json()
    assert "permissions" not in anonymous
    signed_in = {item["id"]: item for item in api(outsider).get("/api/v4/projects").json()}
    assert signed_in[public.pk]["permissions"] == {"project_access": None, "group_access": None}


def test_an_administrator_asking_for_membership_gets_only_their_own(api, admin_user, project, public) -> None:
    assert _ids(api(admin_user).get("/api/v4/projects", {"membership": True})) == []


def test_projects_are_searched_filtered_and_sorted(api, owner, project, public, internal) -> None:
    client = api(owner)
    assert _ids(client.get("/api/v4/projects", {"search": "WIDG"})) == [project.pk]
    assert _ids(client.get("/api/v4/projects", {"visibility": "internal"})) == [internal.pk]
    # GitLab's default: newest first.
    assert _ids(client.get("/api/v4/projects")) == [internal.pk, public.pk, project.pk]
    by_name = _ids(client.get("/api/v4/projects", {"order_by": "name", "sort": "asc"}))
    assert by_name == [public.pk, internal.pk, project.pk]  # Source, Tools, Widgets
    assert _ids(client.get("/api/v4/projects", {"order_by": "id", "sort": "asc"})) == sorted(by_name)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"order_by": "stars"}, "order_by does not have a valid value"),
        ({"sort": "up"}, "sort does not have a valid value"),
        ({"visibility": "secret"}, "visibility does not have a valid value"),
        ({"membership": "maybe"}, "membership is invalid"),
        ({"page": "x"}, "page is invalid"),
        ({"per_page": "0"}, "per_page has a value not allowed"),
    ],
)
def test_bad_project_list_parameters_are_400_in_grapes_words(api, owner, params, error) -> None:
    response = api(owner).get("/api/v4/projects", params)
    assert response.status_code == 400
    assert response.json() == {"error": error}


def test_the_project_list_is_paginated_with_gitlabs_headers(api, owner) -> None:
    for n in range(5):
        services.project_create(namespace_path="many", path=f"p{n}", name=f"P{n}", owner=owner)
    response = api(owner).get("/api/v4/projects", {"per_page": 2, "page": 2, "order_by": "id", "sort": "asc"})
    assert len(response.json()) == 2
    assert (response["X-Total"], response["X-Total-Pages"], response["X-Page"]) == ("5", "3", "2")
    assert (response["X-Per-Page"], response["X-Next-Page"], response["X-Prev-Page"]) == ("2", "3", "1")
    assert 'rel="next"' in response["Link"]
    assert "order_by=id" in response["Link"]


# --- issues -----------------------------------------------------------------------------------


def test_issues_have_gitlabs_shape(api, reporter, owner, project) -> None:
    add_issue(project, 1, author=owner, labels=("bug", "api"), notes=2)
    Note.objects.create(issue=Issue.objects.get(iid=1), note="changed the title", system=True)
    body = api(reporter).get(f"/api/v4/projects/{project.pk}/issues").json()
    issue = body[0]
    assert issue["iid"] == 1
    assert issue["project_id"] == project.pk
    assert issue["labels"] == ["api", "bug"]
    assert issue["author"]["username"] == "owner"
    assert issue["user_notes_count"] == 2  # system notes are not counted
    assert issue["state"] == "opened"
    assert issue["type"] == "ISSUE"
    assert issue["confidential"] is False
    assert issue["references"] == {"short": "#1", "relative": "#1", "full": "acme/widgets#1"}
    assert issue["web_url"].endswith("/acme/widgets/-/issues/1")
    assert set(issue["_links"]) == {"self", "notes", "award_emoji", "project"}


def test_issues_show_the_fields_gitlab_tracks(api, owner, reporter, project) -> None:
    add_issue(
        project,
        1,
        author=owner,
        state="closed",
        closed_at=timezone.now(),
        closed_by=reporter,
        due_date=date(2027, 1, 31),
        discussion_locked=True,
        issue_type=Issue.Type.INCIDENT,
    )
    issue = api(reporter).get(f"/api/v4/projects/{project.pk}/issues/1").json()
    assert issue["closed_by"]["username"] == "reporter"
    assert issue["due_date"] == "2027-01-31"
    assert issue["discussion_locked"] is True
    assert (issue["issue_type"], issue["type"]) == ("incident", "INCIDENT")


def test_issues_are_filtered_by_state_labels_and_search(api, developer, project) -> None:
    add_issue(project, 1, labels=("bug",))
    add_issue(project, 2, labels=("bug", "ui"), state="closed", closed_at=timezone.now())
    add_issue(project, 3, title="Crash on start")
    url = f"/api/v4/projects/{project.pk}/issues"
    client = api(developer)

    def iids(**params) -> list[int]:
        response = client.get(url, params)
        assert response.status_code == 200, response.content
        return [item["iid"] for item in response.json()]

    assert iids() == [3, 2, 1]
    assert iids(state="opened") == [3, 1]
    assert iids(state="closed") == [2]
    assert iids(labels="bug") == [2, 1]
    assert iids(labels="bug,ui") == [2]
    assert iids(labels="None") == [3]
    assert iids(labels="Any", state="opened") == [1]
    assert iids(search="crash") == [3]
    assert iids(order_by="created_at", sort="asc") == [1, 2, 3]
    response = client.get(url, {"state": "open"})
    assert (response.status_code, response.json()) == (400, {"error": "state does not have a valid value"})


def test_one_issue_and_its_notes(api, owner, developer, project) -> None:
    add_issue(project, 7, author=owner, notes=3)
    client = api(developer)
    assert client.get(f"/api/v4/projects/{project.pk}/issues/7").json()["iid"] == 7
    notes = client.get(f"/api/v4/projects/{project.pk}/issues/7/notes", {"sort": "asc"}).json()
    assert [note["body"] for note in notes] == ["note 0 on 7", "note 1 on 7", "note 2 on 7"]
    assert notes[0]["noteable_type"] == "Issue"
    assert notes[0]["noteable_iid"] == 7
    assert notes[0]["author"]["username"] == "owner"
    assert notes[0]["system"] is False
    missing = client.get(f"/api/v4/projects/{project.pk}/issues/8/notes")
    assert (missing.status_code, missing.json()) == (404, {"message": "404 Issue Not Found"})


def test_confidential_issues_are_hidden_from_guests_and_outsiders(api, guest, reporter, project) -> None:
    project.visibility_level = Visibility.PUBLIC
    project.save()
    add_issue(project, 1)
    add_issue(project, 2, confidential=True)
    add_issue(project, 3, confidential=True, author=guest)
    url = f"/api/v4/projects/{project.pk}/issues"
    assert _iids(api().get(url)) == [1]
    assert _iids(api(guest).get(url)) == [3, 1]
    assert _iids(api(reporter).get(url)) == [3, 2, 1]
    assert api().get(f"{url}/2/notes").status_code == 404
    Label.objects.create(project=project, title="bug")
    for issue in Issue.objects.all():
        issue.labels.add(Label.objects.get(title="bug"))
    labels = f"/api/v4/projects/{project.pk}/labels?with_counts=true"
    assert api().get(labels).json()[0]["open_issues_count"] == 1
    assert api(reporter).get(labels).json()[0]["open_issues_count"] == 3


def _iids(response) -> list[int]:
    return [item["iid"] for item in response.json()]


# --- labels and members -----------------------------------------------------------------------


def test_labels_are_listed_by_title_with_counts_on_request(api, guest, project) -> None:
    add_issue(project, 1, labels=("bug",))
    add_issue(project, 2, labels=("bug",), state="closed")
    Label.objects.create(project=project, title="api", color="#000000")
    client = api(guest)
    labels = client.get(f"/api/v4/projects/{project.pk}/labels").json()
    assert [label["name"] for label in labels] == ["api", "bug"]
    assert labels[0]["text_color"] == "#FFFFFF"
    assert labels[0]["is_project_label"] is True
    assert "open_issues_count" not in labels[0]
    counted = client.get(f"/api/v4/projects/{project.pk}/labels", {"with_counts": "true"}).json()
    assert (counted[1]["open_issues_count"], counted[1]["closed_issues_count"]) == (1, 1)


def test_members_and_all_members_list_every_role(api, guest, project) -> None:
    client = api(guest)
    for suffix in ("members", "members/all"):
        body = client.get(f"/api/v4/projects/{project.pk}/{suffix}").json()
        levels = {member["username"]: member["access_level"] for member in body}
        assert levels == {"owner": 50, "maintainer": 40, "developer": 30, "reporter": 20, "guest": 10}
        assert body[0]["state"] == "active"
        assert "web_url" in body[0]
    found = client.get(f"/api/v4/projects/{project.pk}/members/all", {"query": "maint"}).json()
    assert [member["username"] for member in found] == ["maintainer"]


# --- visibility of a project's lists ----------------------------------------------------------

PROJECT_LISTS = ["issues", "labels", "members", "members/all"]


@pytest.mark.parametrize("suffix", PROJECT_LISTS)
def test_a_private_projects_lists_are_404_to_outsiders_and_anonymous(api, outsider, project, suffix) -> None:
    for client in (api(), api(outsider)):
        response = client.get(f"/api/v4/projects/{project.pk}/{suffix}")
        assert (response.status_code, response.json()) == (404, {"message": "404 Project Not Found"})


@pytest.mark.parametrize("suffix", PROJECT_LISTS)
def test_a_public_projects_lists_are_readable_without_a_token(api, public, suffix) -> None:
    assert api().get(f"/api/v4/projects/{quote('open/source', safe='')}/{suffix}").status_code == 200


@pytest.mark.parametrize("suffix", PROJECT_LISTS)
def test_an_internal_projects_lists_need_a_signed_in_user(api, outsider, internal, suffix) -> None:
    assert api().get(f"/api/v4/projects/{internal.pk}/{suffix}").status_code == 404
    assert api(outsider).get(f"/api/v4/projects/{internal.pk}/{suffix}").status_code == 200


def test_an_administrator_reads_any_projects_lists(api, admin_user, project) -> None:
    for suffix in PROJECT_LISTS:
        assert api(admin_user).get(f"/api/v4/projects/{project.pk}/{suffix}").status_code == 200


def test_every_link_of_a_project_answers(api, owner, project) -> None:
    add_issue(project, 1, notes=1)
    client = api(owner)
    links = client.get(f"/api/v4/projects/{project.pk}").json()["_links"]
    assert set(links) == {"self", "issues", "labels", "members"}
    issue_links = client.get(f"/api/v4/projects/{project.pk}/issues").json()[0]["_links"]
    for url in [*links.values(), *issue_links.values()]:
        assert client.get(urlparse(url).path).status_code == 200, url


@pytest.mark.parametrize("name", ["issues", "labels", "members", "catalog_resource"])
def test_a_project_whose_path_is_a_routes_suffix_is_still_found_by_path(api, owner, name) -> None:
    # Decoded by the server, /projects/acme%2Fissues looks like the issues of "acme".
    named = services.project_create(namespace_path="acme", path=name, name=name, owner=owner)
    client = api(owner)
    assert client.get(f"/api/v4/projects/acme%2F{name}").json()["id"] == named.pk
    assert client.get(f"/api/v4/projects/acme%2F{name}/labels").status_code == 200
    missing = client.get("/api/v4/projects/acme%2Fnothing/issues")
    assert (missing.status_code, missing.json()) == (404, {"message": "404 Project Not Found"})


@pytest.mark.parametrize("path", ["/api/v4/projects/a%00b%2Fc/issues", "/api/v4/projects/acme%2Fw%00/labels"])
def test_a_nul_byte_in_a_project_path_is_a_400_not_a_database_error(api, owner, path) -> None:
    response = api(owner).get(path)
    assert response.status_code == 400
    assert response.json() == {"message": "400 Bad request - the path contains a NUL byte or malformed Unicode"}


# --- query counts -----------------------------------------------------------------------------


def _fill(project: Project, owner, count: int) -> None:
    for n in range(count):
        user = type(owner).objects.create_user(username=f"m{n}", password="pw")
        ProjectMember.objects.create(project=project, user=user, access_level=AccessLevel.DEVELOPER)
        add_issue(project, n + 1, author=user, labels=(f"l{n % 3}",), notes=count if n == 0 else 1)
        services.project_create(namespace_path="bulk", path=f"p{n}", name=f"P{n}", owner=owner)


@pytest.mark.parametrize(
    "path", ["/api/v4/projects", "issues", "issues/1/notes", "labels?with_counts=true", "members/all"]
)
def test_queries_do_not_grow_with_the_page_size(api, owner, project, django_assert_max_num_queries, path) -> None:
    _fill(project, owner, 12)
    client = api(owner)
    url = path if path.startswith("/") else f"/api/v4/projects/{project.pk}/{path}"
    separator = "&" if "?" in url else "?"
    # Authentication, the project and its access level, the count and the page (labels
    # prefetched in one): the same handful whether a page holds 2 rows or 12.
    with django_assert_max_num_queries(9) as small:
        assert len(client.get(f"{url}{separator}per_page=2").json()) == 2
    with django_assert_max_num_queries(len(small.captured_queries)):
        client.get(f"{url}{separator}per_page=12")


# --- the schema -------------------------------------------------------------------------------

LIST_OPERATIONS = {
    ("/api/v4/projects", "listProjects"): {"membership", "search", "visibility", "order_by", "sort"},
    ("/api/v4/projects/{project_id}/issues", "listProjectIssues"): {"state", "labels", "search", "order_by", "sort"},
    ("/api/v4/projects/{project_id}/issues/{issue_iid}/notes", "listIssueNotes"): {"order_by", "sort"},
    ("/api/v4/projects/{project_id}/labels", "listProjectLabels"): {"search", "with_counts"},
    ("/api/v4/projects/{project_id}/members", "listProjectMembers"): {"query"},
    ("/api/v4/projects/{project_id}/members/all", "listAllProjectMembers"): {"query"},
}


@pytest.mark.parametrize(("key", "params"), LIST_OPERATIONS.items(), ids=[op for _, op in LIST_OPERATIONS])
def test_every_list_documents_its_parameters_and_pagination_headers(openapi, key, params) -> None:
    path, operation_id = key
    operation = openapi.schema["paths"][path]["get"]
    assert operation["operationId"] == operation_id
    assert {p["name"] for p in operation["parameters"] if p["in"] == "query"} == {"page", "per_page", *params}
    headers = set(operation["responses"]["200"]["headers"])
    assert {"X-Total", "X-Total-Pages", "X-Page", "X-Per-Page", "X-Next-Page", "X-Prev-Page", "Link"} <= headers
    assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }


def test_membership_without_a_token_is_ignored_as_in_gitlab(api, project, public) -> None:
    assert _ids(api().get("/api/v4/projects", {"membership": "true"})) == [public.pk]
