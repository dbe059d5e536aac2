"""POST /projects/import and GET /projects/:id/import, as GitLab's API has them."""

from __future__ import annotations

import pytest

from exports.models import ProjectImportJob
from project.models import Issue, Label, Project
from tests.exports.importing import minimal_archive, run_import_attempt, upload

ISSUE = {"iid": 1, "title": "Imported issue", "state": "opened", "author_id": 99, "notes": [], "label_links": []}


def _post(client, data: bytes, **params):
    return client.post("/api/v4/projects/import", {"file": upload(data), **params}, format="multipart")


def test_import_answers_201_scheduled_and_finishes(api, owner) -> None:
    client = api(owner)
    response = _post(client, minimal_archive(issues=[ISSUE]), path="imported", name="Imported")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["import_status"], body["path_with_namespace"], body["name"]) == (
        "scheduled",
        "owner/imported",
        "Imported",
    )
    assert (body["failed_relations"], body["import_error"], body["import_type"]) == ([], None, "gitlab_project")

    job = ProjectImportJob.objects.get()
    assert run_import_attempt(job) == "succeeded"
    status = client.get(f"/api/v4/projects/{body['id']}/import").json()
    assert status["import_status"] == "finished"
    assert status["stats"]["imported"] == {
        "project": 1,
        "project_members": 0,
        "labels": 1,
        "issues": 1,
        "notes": 0,
        "label_links": 0,
        "failed": 0,
    }
    project = Project.objects.get(pk=body["id"])
    assert (project.description, project.visibility_level) == ("Imported", 10)
    assert Issue.objects.get(project=project).title == "Imported issue"


def test_project_without_import_says_none(api, owner, project) -> None:
    body = api(owner).get(f"/api/v4/projects/{project.pk}/import").json()
    assert (body["import_status"], body["import_type"]) == ("none", None)


def test_existing_path_without_overwrite_is_gitlabs_400(api, owner) -> None:
    client = api(owner)
    assert _post(client, minimal_archive(), path="twice").status_code == 201
    response = _post(client, minimal_archive(), path="twice")
    assert response.status_code == 400
    assert response.json()["message"] == "Name has already been taken"
    assert ProjectImportJob.objects.count() == 1


def test_overwrite_replaces_the_project_when_the_import_finishes(api, owner) -> None:
    client = api(owner)
    first = _post(client, minimal_archive(issues=[ISSUE]), path="same").json()
    run_import_attempt(ProjectImportJob.objects.get(project_id=first["id"]))
    second = _post(client, minimal_archive(issues=[{**ISSUE, "title": "New"}]), path="same", overwrite="true")
    assert second.status_code == 201
    # Until the import finishes, the old project keeps the path.
    assert Project.objects.get(path_with_namespace="owner/same").pk == first["id"]
    run_import_attempt(ProjectImportJob.objects.get(project_id=second.json()["id"]))
    replacement = Project.objects.get(path_with_namespace="owner/same")
    assert replacement.pk == second.json()["id"]
    assert not Project.objects.filter(pk=first["id"]).exists()
    assert Issue.objects.get(project=replacement).title == "New"


@pytest.mark.parametrize(
    ("params", "body"),
    [
        ({}, {"error": "path is missing"}),
        ({"path": "../x"}, {"error": "path is invalid"}),
    ],
)
def test_bad_parameters_are_400(api, owner, params, body) -> None:
    assert _post(api(owner), minimal_archive(), **params).json() == body


def test_missing_file_is_400(api, owner) -> None:
    response = api(owner).post("/api/v4/projects/import", {"path": "x"}, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"error": "file is missing"}


def test_importing_into_someone_elses_namespace_is_404(api, developer) -> None:
    response = _post(api(developer), minimal_archive(), path="x", namespace="acme")
    assert response.status_code == 404
    assert response.json()["message"] == "404 Namespace Not Found"


def test_upload_over_the_import_size_limit_is_refused(api, owner) -> None:
    from project.models import ApplicationSetting

    ApplicationSetting.objects.update_or_create(pk=1, defaults={"max_import_size": 1})
    response = _post(api(owner), b"x" * (1024 * 1024 + 1), path="big")
    assert response.status_code == 400
    assert "maximum import size" in response.json()["message"]


def test_status_of_a_private_project_is_404_to_outsiders(api, owner, outsider) -> None:
    created = _post(api(owner), minimal_archive(), path="mine").json()
    assert api(outsider).get(f"/api/v4/projects/{created['id']}/import").status_code == 404


def test_a_failed_relation_is_recorded_and_the_rest_imported(api, owner) -> None:
    client = api(owner)
    issues = [ISSUE, {**ISSUE, "iid": 2, "title": "x" * 300}, {**ISSUE, "iid": 3, "title": "Third"}]
    created = _post(client, minimal_archive(issues=issues), path="partial").json()
    run_import_attempt(ProjectImportJob.objects.get())
    status = client.get(f"/api/v4/projects/{created['id']}/import").json()
    assert status["import_status"] == "finished"
    (failed,) = status["failed_relations"]
    assert (failed["relation_name"], failed["line_number"]) == ("issues", 1)
    assert failed["exception_class"] == "DataError"
    assert sorted(Issue.objects.filter(project_id=created["id"]).values_list("iid", flat=True)) == [1, 3]
    assert Label.objects.filter(project_id=created["id"]).count() == 1
