"""Export → import: what the exporter writes, the importer reads back, field for field."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from exports import services as exports
from exports.importer import services
from exports.models import ProjectExportArchive, ProjectImportJob
from project.models import Issue, Label, LabelLink, Note, Project, ProjectMember
from tests.exports.importing import project_snapshot, run_import_attempt

T0 = dt.datetime(2026, 11, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)


def _archive_of(project, user) -> bytes:
    job = exports.export_request(project=project, user=user)
    exports.export_run(export_job_id=job.pk)
    with ProjectExportArchive.objects.get(project=project, user=user).file.open("rb") as handle:
        return handle.read()


def _import(data: bytes, user, path: str) -> ProjectImportJob:
    job = services.import_request(user=user, file=SimpleUploadedFile("a.tar.gz", data), path=path)
    assert run_import_attempt(job) == "succeeded"
    job.refresh_from_db()
    return job


def _rich_project(project, owner, maintainer, developer) -> None:
    bug = Label.objects.create(project=project, title="bug", color="#ff0000", description="Bugs", created_at=T0)
    Label.objects.create(project=project, title="unused", color="#00ff00", created_at=T0)
    issue = Issue.objects.create(
        project=project, iid=7, title="Crash ✓", description="Ünïcode\nand lines", author=developer,
        confidential=True, due_date=dt.date(2027, 1, 2), discussion_locked=False, relative_position=-5,
        lock_version=3, updated_by=maintainer, closed_by=owner, state=Issue.State.CLOSED, closed_at=T0,
        last_edited_at=T0, last_edited_by=maintainer, issue_type=Issue.Type.TASK, created_at=T0, updated_at=T0,
    )  # fmt: skip
    LabelLink.objects.create(issue=issue, label=bug, created_at=T0, updated_at=T0)
    Note.objects.create(issue=issue, author=maintainer, note="First", created_at=T0, updated_at=T0)
    Note.objects.create(issue=issue, author=None, note="By a removed user", system=True, created_at=T0, updated_at=T0)
    Issue.objects.create(project=project, iid=8, title="Plain", author=owner, created_at=T0, updated_at=T0)


def test_an_administrators_round_trip_keeps_every_modelled_field(
    project, owner, maintainer, developer, admin_user
) -> None:
    _rich_project(project, owner, maintainer, developer)
    job = _import(_archive_of(project, admin_user), admin_user, "copy")
    assert job.status == "finished"
    assert job.failed_relations == []
    assert project_snapshot(job.project, without_member=admin_user) == project_snapshot(project)
    assert job.counts == {
        "project": 1, "project_members": 5, "labels": 2, "issues": 2, "notes": 2, "label_links": 1, "failed": 0,
    }  # fmt: skip
    # What our exporter writes for GitLab's sake but this product does not model.
    assert job.skipped["fields"] == {
        "labels.template": 2,
        "project.archived": 1,
        "project_members.expires_at": 5,
        "project_members.notification_level": 5,
    }


def test_a_users_import_maps_everyone_to_the_importer_and_records_note_authors(
    project, owner, maintainer, developer
) -> None:
    _rich_project(project, owner, maintainer, developer)
    imported = _import(_archive_of(project, maintainer), maintainer, "copy")
    assert imported.status == "finished"
    copy = imported.project
    assert list(ProjectMember.objects.filter(project=copy).values_list("user_id", "access_level")) == [
        (maintainer.pk, 50)
    ]
    issue = Issue.objects.get(project=copy, iid=7)
    assert (issue.author_id, issue.updated_by_id, issue.closed_by_id) == (maintainer.pk,) * 3
    first, removed = Note.objects.filter(issue=issue).order_by("id")
    assert first.author_id == maintainer.pk
    assert first.note == "First\n\n *By maintainer on 2026-11-01T09:30:15 (imported from GitLab)*"
    # A null author (a deleted user, GitLab's ghost) stays null and the text is untouched.
    assert (removed.author_id, removed.note) == (None, "By a removed user")
    assert imported.skipped["relations"]["project_members (importer is not an administrator)"] == 5


def test_nothing_of_the_import_is_visible_before_it_finishes(
    project, owner, maintainer, developer, monkeypatch
) -> None:
    """The content commits with the finish: a reader on another connection sees an empty
    project while the import runs."""
    import threading

    from django.db import connections

    _rich_project(project, owner, maintainer, developer)
    data = _archive_of(project, maintainer)
    job = services.import_request(user=maintainer, file=SimpleUploadedFile("a.tar.gz", data), path="copy")
    seen = []
    from exports.importer import writer

    original = writer.ProjectWriter.unmodelled_files

    def look(self) -> None:
        def read() -> None:
            seen.append(Issue.objects.filter(project_id=job.project_id).count())
            connections.close_all()

        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        original(self)

    monkeypatch.setattr(writer.ProjectWriter, "unmodelled_files", look)
    run_import_attempt(job)
    assert Issue.objects.filter(project_id=job.project_id).count() == 2
    assert seen == [0]


def test_running_the_import_twice_imports_once(project, owner, maintainer, developer) -> None:
    _rich_project(project, owner, maintainer, developer)
    job = services.import_request(
        user=maintainer, file=SimpleUploadedFile("a.tar.gz", _archive_of(project, maintainer)), path="copy"
    )
    first = services.import_run(import_job_id=job.pk)
    second = services.import_run(import_job_id=job.pk)
    assert second == {"skipped": True}
    assert first["counts"]["issues"] == Issue.objects.filter(project_id=job.project_id).count() == 2


def test_a_crashed_attempt_leaves_nothing_and_the_rerun_completes(project, owner, maintainer, developer, monkeypatch):
    from exports.importer import writer

    _rich_project(project, owner, maintainer, developer)
    job = services.import_request(
        user=maintainer, file=SimpleUploadedFile("a.tar.gz", _archive_of(project, maintainer)), path="copy"
    )
    original = writer.ProjectWriter.unmodelled_files

    def crash(self) -> None:
        raise KeyboardInterrupt  # the worker dies after writing every relation, before the finish

    monkeypatch.setattr(writer.ProjectWriter, "unmodelled_files", crash)
    with pytest.raises(KeyboardInterrupt):
        services.import_run(import_job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "started"
    assert not Issue.objects.filter(project_id=job.project_id).exists()
    monkeypatch.setattr(writer.ProjectWriter, "unmodelled_files", original)
    services.import_run(import_job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "finished"
    assert Issue.objects.filter(project_id=job.project_id).count() == 2
    assert Project.objects.filter(pk=job.project_id).exists()
