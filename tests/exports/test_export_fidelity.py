"""What a user expects an export to carry, in GitLab's names and formats."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import time_machine

from exports import services
from exports.models import ProjectExportArchive
from project.models import ApplicationSetting, Issue, Label, LabelLink, Project
from tests.exports.conftest import latest_job, read_archive, run_attempt

GITLAB_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _export(project, user) -> dict[str, bytes]:
    job = services.export_request(project=project, user=user)
    services.export_run(export_job_id=job.pk)
    stored = ProjectExportArchive.objects.get(project=project, user=user)
    with stored.file.open("rb") as handle:
        return read_archive(handle.read())


def _lines(members: dict[str, bytes], relation: str) -> list[dict]:
    return [json.loads(line) for line in members[f"tree/project/{relation}.ndjson"].decode().splitlines()]


def test_issues_carry_gitlabs_fields_under_gitlabs_names(project, owner, maintainer) -> None:
    edited = dt.datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=dt.UTC)
    issue = Issue.objects.create(
        project=project,
        iid=1,
        title="Secret",
        author=owner,
        confidential=True,
        due_date=dt.date(2026, 12, 24),
        discussion_locked=True,
        relative_position=513,
        lock_version=4,
        updated_by=maintainer,
        closed_by=owner,
        state=Issue.State.CLOSED,
        closed_at=edited,
        last_edited_at=edited,
        last_edited_by=maintainer,
        issue_type=Issue.Type.INCIDENT,
        created_at=edited,
    )
    label = Label.objects.create(project=project, title="bug")
    LabelLink.objects.create(issue=issue, label=label, created_at=edited, updated_at=edited)

    (out,) = _lines(_export(project, maintainer), "issues")

    assert {
        key: out[key]
        for key in (
            "confidential", "due_date", "discussion_locked", "relative_position", "lock_version", "updated_by_id",
            "closed_by_id", "last_edited_by_id", "issue_type", "last_edited_at", "closed_at", "created_at",
        )
    } == {
        "confidential": True,
        "due_date": "2026-12-24",
        "discussion_locked": True,
        "relative_position": 513,
        "lock_version": 4,
        "updated_by_id": maintainer.pk,
        "closed_by_id": owner.pk,
        "last_edited_by_id": maintainer.pk,
        "issue_type": "incident",
        "last_edited_at": "2026-11-29T10:00:00.123Z",
        "closed_at": "2026-11-29T10:00:00.123Z",
        "created_at": "2026-11-29T10:00:00.123Z",
    }  # fmt: skip
    (link,) = out["label_links"]
    assert (link["created_at"], link["updated_at"], link["target_type"]) == (
        "2026-11-29T10:00:00.123Z",
        "2026-11-29T10:00:00.123Z",
        "Issue",
    )
    assert link["label"]["title"] == "bug"


def test_an_issue_created_without_the_new_fields_exports_gitlabs_defaults(project, owner, maintainer) -> None:
    Issue.objects.create(project=project, iid=1, title="Plain", author=owner)
    (out,) = _lines(_export(project, maintainer), "issues")
    assert (out["issue_type"], out["confidential"], out["lock_version"], out["due_date"], out["discussion_locked"]) == (
        "issue",
        False,
        0,
        None,
        None,
    )


def test_every_timestamp_is_written_as_gitlab_writes_it(project, owner, maintainer, issues) -> None:
    members = _export(project, maintainer)
    stamps = []
    for relation in ("project_members", "labels", "issues"):
        for line in _lines(members, relation):
            stamps += [line["created_at"], line["updated_at"]]
            for note in line.get("notes", []):
                stamps += [note["created_at"], note["updated_at"]]
            for link in line.get("label_links", []):
                stamps += [link["created_at"], link["label"]["created_at"]]
    assert stamps
    assert all(GITLAB_TIME.match(stamp) for stamp in stamps), stamps


def test_members_users_carry_public_email_and_only_an_admins_export_carries_email(
    project, owner, maintainer, admin_user
) -> None:
    owner.public_email = "owner@public.example"
    owner.save()
    by_maintainer = {m["user"]["username"]: m["user"] for m in _lines(_export(project, maintainer), "project_members")}
    assert by_maintainer["owner"] == {"id": owner.pk, "public_email": "owner@public.example", "username": "owner"}
    assert by_maintainer["maintainer"]["public_email"] == ""
    assert all("email" not in user for user in by_maintainer.values())

    by_admin = {m["user"]["username"]: m["user"] for m in _lines(_export(project, admin_user), "project_members")}
    assert by_admin["owner"]["email"] == "owner@example.com"
    assert by_admin["maintainer"] == {
        "id": maintainer.pk,
        "email": "maintainer@example.com",
        "public_email": "",
        "username": "maintainer",
    }


def test_archive_names_the_gitlab_version_and_revision(project, maintainer) -> None:
    members = _export(project, maintainer)
    assert members["GITLAB_VERSION"].decode().count(".") == 2
    assert members["GITLAB_REVISION"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("widgets", "2026-11-29_10-00-123_acme_widgets_export.tar.gz"),
        # GitLab keeps basename[0..50]: 51 characters.
        ("w" * 80, "2026-11-29_10-00-123_acme_" + "w" * 25 + "_export.tar.gz"),
    ],
)
def test_download_name_is_cut_as_gitlab_cuts_it(project, path, expected) -> None:
    project.path = path
    at = dt.datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=dt.UTC)
    project.path_with_namespace = f"acme/{path}"
    assert services.archive_filename(project, at=at) == expected


def test_download_offers_both_filename_forms(api, maintainer, project) -> None:
    client = api(maintainer)
    with time_machine.travel(dt.datetime(2026, 11, 29, 10, 0, 0, 123000, tzinfo=dt.UTC), tick=False):
        client.post(f"/api/v4/projects/{project.pk}/export")
        run_attempt(latest_job(maintainer, project))
        response = client.get(f"/api/v4/projects/{project.pk}/export/download")
    name = "2026-11-29_10-00-123_acme_widgets_export.tar.gz"
    assert response["Content-Disposition"] == f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"


def test_export_above_the_size_limit_is_refused(api, maintainer, project, owner) -> None:
    ApplicationSetting.objects.update_or_create(pk=1, defaults={"max_export_size": 1})
    Issue.objects.create(project=project, iid=1, title="big", description="x" * (1024 * 1024 + 1), author=owner)
    response = api(maintainer).post(f"/api/v4/projects/{project.pk}/export")
    assert response.status_code == 400
    assert response.json()["message"] == "The project size exceeds the export limit."


def test_export_within_the_size_limit_is_accepted(api, maintainer, project, owner) -> None:
    ApplicationSetting.objects.update_or_create(pk=1, defaults={"max_export_size": 1})
    Issue.objects.create(project=project, iid=1, title="small", description="x" * 1000, author=owner)
    assert api(maintainer).post(f"/api/v4/projects/{project.pk}/export").status_code == 202


def test_project_size_counts_issue_note_and_label_text(project, owner) -> None:
    assert services.project_size_estimate(project=Project.objects.get(pk=project.pk)) == 0
    Issue.objects.create(project=project, iid=1, title="ab", description="cde", author=owner)
    assert services.project_size_estimate(project=project) == 5
