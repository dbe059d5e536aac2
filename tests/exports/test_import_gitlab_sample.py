"""GitLab's own sample export (tests/data/gitlab-complex.tar.gz, from GitLab's import/export
fixtures): every relation this product models is imported, the rest is reported by name."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from exports.importer import services
from project.models import Issue, Label, LabelLink, Note, ProjectMember, User, Visibility
from tests.exports.importing import run_import_attempt

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "gitlab-complex.tar.gz"


@pytest.fixture
def imported(admin_user):
    # user4's public email is in the archive: an administrator's import maps them.
    user4 = User.objects.create_user("someone", email="user4@example.com", password="pw")
    job = services.import_request(
        user=admin_user, file=SimpleUploadedFile("sample.tar.gz", SAMPLE.read_bytes()), path="sample"
    )
    assert run_import_attempt(job) == "succeeded"
    job.refresh_from_db()
    return job, user4


def test_the_sample_imports_every_modelled_relation(imported, admin_user) -> None:
    job, user4 = imported
    assert job.status == "finished", job.error
    assert job.failed_relations == []
    assert job.counts == {
        "project": 1, "project_members": 1, "labels": 2, "issues": 6, "notes": 48, "label_links": 3, "failed": 0,
    }  # fmt: skip
    project = job.project
    assert (project.description, project.visibility_level) == (
        "Nisi et repellendus ut enim quo accusamus vel magnam.",
        Visibility.INTERNAL,
    )
    assert ProjectMember.objects.get(project=project, user=user4).access_level == 20
    assert sorted(Label.objects.filter(project=project).values_list("title", flat=True)) == ["test2", "test3"]

    issues = {issue.iid: issue for issue in Issue.objects.filter(project=project)}
    assert sorted(issues) == [5, 6, 7, 8, 9, 10]
    assert (issues[8].state, issues[10].state, issues[5].state) == ("closed", "opened", "closed")
    # GitLab's fixture: an unknown type is an issue; the work item type wins over issue_type.
    assert (issues[7].issue_type, issues[5].issue_type, issues[6].issue_type) == ("issue", "task", "issue")
    assert issues[10].title == "Voluptatem"
    assert issues[10].created_at == dt.datetime(2016, 6, 14, 15, 2, 8, 340000, tzinfo=dt.UTC)
    assert issues[10].author_id == admin_user.pk  # user 22 is not a member: the importer
    assert sorted(LabelLink.objects.filter(issue=issues[10]).values_list("label__title", flat=True)) == [
        "test2",
        "test3",
    ]
    notes = list(Note.objects.filter(issue=issues[10]).order_by("id"))
    assert len(notes) == 8
    # Note 351 is by user 26 = user4, mapped by email: no "By …" line.
    assert (notes[0].author_id, notes[0].note) == (
        user4.pk,
        "Quo reprehenderit aliquam qui dicta impedit cupiditate eligendi.",
    )
    assert notes[1].author_id == admin_user.pk
    assert notes[1].note.endswith("\n\n *By User 3 on 2016-06-14T15:02:47 (imported from GitLab)*")


def test_the_sample_reports_what_is_not_modelled_by_name(imported) -> None:
    job, _ = imported
    relations = job.skipped["relations"]
    # Every relation file of the fixture this product does not model, with its line count.
    assert {
        "auto_devops": 1, "boards": 1, "ci_cd_settings": 1, "ci_pipelines": 2, "commit_notes": 2,
        "container_expiration_policy": 1, "custom_attributes": 2, "design_management_repository": 1,
        "error_tracking_setting": 1, "external_pull_requests": 1, "merge_requests": 1, "milestones": 3,
        "pipeline_schedules": 1, "project_badges": 2, "project_feature": 1, "protected_branches": 1,
        "protected_environments": 1, "protected_tags": 1, "releases": 1, "services": 3, "snippets": 1, "triggers": 2,
    }.items() <= relations.items()  # fmt: skip
    for nested in (
        "issues.issue_assignees",
        "issues.award_emoji",
        "issues.zoom_meetings",
        "issues.milestone",
        "issues.resource_label_events",
        "issues.resource_milestone_events",
        "issues.resource_state_events",
        "issues.sentry_issue",
        "issues.notes.award_emoji",
        "labels.priorities",
    ):
        assert relations.get(nested), nested
    assert relations["project_members (no user with that email)"] == 3
    assert {
        "project.ci_config_path",
        "project.merge_commit_template",
        "issues.position",
        "issues.notes.note_html",
    } <= set(job.skipped["fields"])
