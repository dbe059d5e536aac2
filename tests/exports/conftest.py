"""Fixtures of the export tests: a private media root, a polling client that records the
status sequence, and running an export job's attempts in this process."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from rest_framework.test import APIClient

from exports.models import ProjectExportJob
from project.jobs.models import JobRun
from project.jobs.runner import execute
from project.models import Issue, Label, Note, Project, User


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Archives of each test go to a directory of its own."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@dataclass
class StatusPoller:
    """What a client polling ``GET /projects/:id/export`` sees, consecutive repeats merged."""

    client: APIClient
    project: Project
    seen: list[str] = field(default_factory=list)

    def poll(self) -> dict:
        response = self.client.get(f"/api/v4/projects/{self.project.pk}/export")
        assert response.status_code == 200, response.content
        body = response.json()
        if not self.seen or self.seen[-1] != body["export_status"]:
            self.seen.append(body["export_status"])
        return body

    def request_export(self, **data) -> None:
        response = self.client.post(f"/api/v4/projects/{self.project.pk}/export", data, format="json")
        assert response.status_code == 202, response.content
        assert response.json() == {"message": "202 Accepted"}

    def download(self):
        return self.client.get(f"/api/v4/projects/{self.project.pk}/export/download")


@pytest.fixture
def poller(api) -> Callable[[User, Project], StatusPoller]:
    def make(user: User, project: Project) -> StatusPoller:
        return StatusPoller(client=api(user), project=project)

    return make


def run_attempt(job: ProjectExportJob) -> str:
    """Execute the job's current attempt here, through the toolkit's runner (claim, retry
    bookkeeping, failure hook), as a worker would."""
    job.refresh_from_db()
    run = JobRun.objects.get(pk=job.job_run_id)
    return execute(run.pk, run.attempt)


def latest_job(user: User, project: Project) -> ProjectExportJob:
    return ProjectExportJob.objects.filter(user=user, project=project).latest("id")


@pytest.fixture
def during_export(monkeypatch) -> Callable[[Callable[[str], None]], None]:
    """``during_export(callback)``: call ``callback(relation_name)`` after each relation is
    streamed, while the export job is running (to look at it from outside)."""
    from exports import archive

    def install(callback: Callable[[str], None]) -> None:
        original = archive.copy_relation

        def copy_relation(relation, params, path, progress):
            rows = original(relation, params, path, progress)
            callback(relation.name)
            return rows

        monkeypatch.setattr(archive, "copy_relation", copy_relation)

    return install


@pytest.fixture
def issues(project, owner, maintainer) -> list[Issue]:
    """Three issues with notes and labels, one with awkward text."""
    bug = Label.objects.create(project=project, title="bug", color="#ff0000")
    ux = Label.objects.create(project=project, title="ux", color="#00ff00", description='say "hi"')
    made = []
    for iid, (title, description) in enumerate(
        [
            ("Crash on start", "Line one\nline two\ttabbed"),
            ('Quote " and backslash \\ and unicode é ✓', "control \x01 char and \\n literal"),
            ("Plain", ""),
        ],
        start=1,
    ):
        issue = Issue.objects.create(project=project, iid=iid, title=title, description=description, author=owner)
        made.append(issue)
    made[0].labels.add(bug, ux)
    made[1].labels.add(ux)
    for issue in made[:2]:
        for n in range(3):
            Note.objects.create(issue=issue, author=maintainer if n % 2 else owner, note=f"note {n}\non {issue.iid}")
    return made


def read_archive(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()}


@pytest.fixture
def no_rate_limits(db) -> None:
    """Lift the per-minute limits (1 download per minute would stop a polling test)."""
    from project.models import ApplicationSetting

    ApplicationSetting.objects.update_or_create(
        pk=1, defaults={"project_export_limit": 0, "project_download_export_limit": 0}
    )
