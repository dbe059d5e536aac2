"""The read API as python-gitlab uses it, against a live server: its list helpers follow our
pagination headers page by page (small ``per_page``, so several pages really are fetched),
its objects read GitLab's field names, and its errors show GitLab's messages."""

from __future__ import annotations

import gitlab
import pytest
from gitlab import exceptions

from catalog.services import catalog_resource_create
from project import services
from project.models import AccessLevel, Issue, Label, Note, ProjectMember, Visibility

# no_broker: committed rows are seen by any session cluster another test left running.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_broker")]


@pytest.fixture
def gl(live_server, token_for, settings):
    """``gl(user)``: python-gitlab for ``user`` (or anonymous) on the live server, whose
    ``Link`` headers name the live server (python-gitlab follows them as given)."""
    settings.EXTERNAL_URL = live_server.url

    def make(user=None) -> gitlab.Gitlab:
        token = token_for(user, ("read_api",)) if user is not None else None
        return gitlab.Gitlab(live_server.url, private_token=token, retry_transient_errors=False)

    return make


@pytest.fixture
def projects(owner, project):
    """Eleven projects besides the private ``acme/widgets``: five public, three internal,
    three private ones the fixture's members are not in."""
    made = {"public": [], "internal": [], "private": [project]}
    for n, level in enumerate([Visibility.PUBLIC] * 5 + [Visibility.INTERNAL] * 3 + [Visibility.PRIVATE] * 3):
        created = services.project_create(
            namespace_path="fleet", path=f"p{n}", name=f"P{n}", owner=owner, visibility_level=level
        )
        made[Visibility(level).label].append(created)
    return made


def _listed(client: gitlab.Gitlab, **params) -> tuple[list[int], int | None]:
    listing = client.projects.list(iterator=True, per_page=2, **params)
    return [item.id for item in listing], listing.total


@pytest.mark.parametrize(
    ("who", "kinds"),
    [
        ("anonymous", ("public",)),
        ("outsider", ("public", "internal")),
        ("guest", ("public", "internal", "member")),
        ("admin_user", ("public", "internal", "private")),
    ],
)
def test_python_gitlab_pages_through_the_projects_each_caller_may_see(gl, request, projects, who, kinds) -> None:
    client = gl() if who == "anonymous" else gl(request.getfixturevalue(who))
    expected = set()
    for kind in kinds:
        expected |= {p.pk for p in projects["private"][:1]} if kind == "member" else {p.pk for p in projects[kind]}
    ids, total = _listed(client)
    assert sorted(ids) == sorted(expected)  # every page fetched, none twice
    assert total == len(expected)
    assert ids == sorted(ids, reverse=True)  # GitLab's default: created_at desc


def test_python_gitlab_lists_only_the_callers_projects_with_membership(gl, guest, projects, project) -> None:
    ids, _ = _listed(gl(guest), membership=True, order_by="name", sort="asc")
    assert ids == [project.pk]


def test_python_gitlab_shows_a_refused_order_by_as_gitlab_words_it(gl, owner) -> None:
    with pytest.raises(exceptions.GitlabListError) as caught:
        gl(owner).projects.list(order_by="stars", get_all=False)
    assert caught.value.response_code == 400
    assert caught.value.error_message == "order_by does not have a valid value"


def test_python_gitlab_reads_issues_their_notes_labels_and_members(gl, owner, reporter, project) -> None:
    bug = Label.objects.create(project=project, title="bug", color="#d9534f")
    for iid in range(1, 8):
        issue = Issue.objects.create(
            project=project, iid=iid, title=f"Issue {iid}", author=owner, state="closed" if iid % 3 == 0 else "opened"
        )
        if iid % 2:
            issue.labels.add(bug)
    for n in range(5):
        Note.objects.create(issue=Issue.objects.get(project=project, iid=1), author=reporter, note=f"reply {n}")
    for n in range(3):
        extra = type(owner).objects.create_user(username=f"extra{n}", password="pw")
        ProjectMember.objects.create(project=project, user=extra, access_level=AccessLevel.REPORTER)

    remote = gl(reporter).projects.get("acme/widgets")
    opened = remote.issues.list(get_all=True, state="opened", per_page=2)
    assert sorted(issue.iid for issue in opened) == [1, 2, 4, 5, 7]
    closed = remote.issues.list(get_all=True, state="closed", per_page=2)
    assert sorted(issue.iid for issue in closed) == [3, 6]
    labelled = remote.issues.list(get_all=True, labels=["bug"], per_page=2)
    assert sorted(issue.iid for issue in labelled) == [1, 3, 5, 7]
    first = next(issue for issue in opened if issue.iid == 1)
    assert first.labels == ["bug"]
    assert first.author["username"] == "owner"
    assert first.user_notes_count == 5

    notes = first.notes.list(get_all=True, per_page=2, sort="asc")
    assert [note.body for note in notes] == [f"reply {n}" for n in range(5)]
    assert remote.issues.get(1).title == "Issue 1"

    labels = remote.labels.list(get_all=True, per_page=1)
    assert [(label.name, label.color) for label in labels] == [("bug", "#d9534f")]

    members = remote.members_all.list(get_all=True, per_page=2)
    assert len(members) == 8  # five roles and three extra reporters
    assert {m.username: m.access_level for m in members}["owner"] == AccessLevel.OWNER


def test_python_gitlab_reads_404_project_not_found_for_a_private_projects_lists(gl, outsider, project) -> None:
    remote = gl(outsider).projects.get(project.pk, lazy=True)
    for manager in (remote.issues, remote.labels, remote.members_all):
        with pytest.raises(exceptions.GitlabListError) as caught:
            manager.list(get_all=False)
        assert caught.value.response_code == 404
        assert caught.value.error_message == "404 Project Not Found"


def test_python_gitlab_reads_a_public_projects_issues_anonymously(gl, owner) -> None:
    public = services.project_create(
        namespace_path="open", path="source", name="Source", owner=owner, visibility_level=Visibility.PUBLIC
    )
    Issue.objects.create(project=public, iid=1, title="Open to all", author=owner)
    issues = gl().projects.get("open/source", lazy=True).issues.list(get_all=True)
    assert [issue.title for issue in issues] == ["Open to all"]


def test_python_gitlab_reads_a_catalog_resource_and_its_sync_state(gl, owner, developer, project) -> None:
    catalog_resource_create(project_id=project.pk)
    body = gl(developer).http_get(f"/projects/{project.pk}/catalog_resource")
    assert body["full_path"] == "acme/widgets"
    assert body["state"] == "draft"
    assert body["sync"]["status"] == "synced"
