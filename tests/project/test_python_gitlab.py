"""What a python-gitlab user sees (defect 5): python-gitlab itself against a live server.

python-gitlab shows a body's ``message``, or its ``error`` when there is one; so the API's
bodies must be GitLab's exactly for its users to read "404 Project Not Found" and not
"not_found"."""

from __future__ import annotations

import gitlab
import pytest
from gitlab import exceptions

from exports.models import ProjectExportJob
from project import services
from project.models import Visibility

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gl(live_server, token_for):
    """``gl(user)``: a python-gitlab client for ``user`` (or anonymous) on the live server."""

    def make(user=None, scopes=("api",), **options) -> gitlab.Gitlab:
        token = token_for(user, scopes) if user is not None else None
        return gitlab.Gitlab(live_server.url, private_token=token, retry_transient_errors=False, **options)

    return make


def test_get_a_project_by_id_and_by_path(gl, owner, project) -> None:
    client = gl(owner)
    by_id = client.projects.get(project.pk)
    assert by_id.path_with_namespace == "acme/widgets"
    assert by_id.permissions["project_access"]["access_level"] == 50
    by_path = client.projects.get("acme/widgets")  # python-gitlab URL-encodes it
    assert by_path.id == project.pk


def test_an_unknown_project_reads_404_project_not_found(gl, owner) -> None:
    with pytest.raises(exceptions.GitlabGetError) as caught:
        gl(owner).projects.get(999999)
    assert caught.value.response_code == 404
    assert caught.value.error_message == "404 Project Not Found"
    assert str(caught.value) == "404: 404 Project Not Found"


def test_anonymous_users_read_public_projects_only(gl, owner) -> None:
    public = services.project_create(
        namespace_path="open", path="source", name="Source", owner=owner, visibility_level=Visibility.PUBLIC
    )
    private = services.project_create(namespace_path="open", path="secret", name="Secret", owner=owner)
    anonymous = gl()
    assert anonymous.projects.get(public.pk).visibility == "public"
    with pytest.raises(exceptions.GitlabGetError) as caught:
        anonymous.projects.get(private.pk)
    assert caught.value.error_message == "404 Project Not Found"


def test_a_developer_starting_an_export_reads_403_forbidden(gl, developer, project, no_broker) -> None:
    with pytest.raises(exceptions.GitlabCreateError) as caught:
        gl(developer).projects.get(project.pk, lazy=True).exports.create()
    assert caught.value.response_code == 403
    assert caught.value.error_message == "403 Forbidden"
    assert not ProjectExportJob.objects.exists()


def test_a_maintainer_requests_an_export_and_polls_its_status(gl, maintainer, project, no_broker) -> None:
    remote = gl(maintainer).projects.get(project.pk, lazy=True)
    remote.exports.create({"description": "From python-gitlab"})
    export = remote.exports.get()
    assert export.export_status == "queued"
    export.refresh()
    assert export.export_status == "queued"
    assert ProjectExportJob.objects.get().description == "From python-gitlab"


def test_a_refused_parameter_reads_grapes_message(gl, maintainer, project, no_broker) -> None:
    remote = gl(maintainer).projects.get(project.pk, lazy=True)
    with pytest.raises(exceptions.GitlabCreateError) as caught:
        remote.exports.create({"description": 5})
    assert caught.value.response_code == 400
    assert caught.value.error_message == "description is invalid"


def test_a_read_only_token_reads_insufficient_scope_as_on_gitlab(gl, maintainer, project, no_broker) -> None:
    remote = gl(maintainer, scopes=("read_api",)).projects.get(project.pk, lazy=True)
    assert remote.exports.get().export_status == "none"
    with pytest.raises(exceptions.GitlabCreateError) as caught:
        remote.exports.create()
    assert caught.value.response_code == 403
    assert caught.value.error_message == "insufficient_scope"


def test_a_bad_token_reads_401_then_retry_later(gl, settings) -> None:
    settings.API_AUTH_FAILURE_LIMIT = 2
    client = gitlab.Gitlab(gl().url, private_token="glpat-wrongwrongwrongwrong")
    for _ in range(2):
        with pytest.raises(exceptions.GitlabAuthenticationError) as caught:
            client.auth()
        assert caught.value.error_message == "401 Unauthorized"
    with pytest.raises(exceptions.GitlabHttpError) as throttled:
        client.http_get("/user", obey_rate_limit=False)  # python-gitlab would wait Retry-After and retry
    assert throttled.value.response_code == 429
    assert throttled.value.error_message == "Retry later"
