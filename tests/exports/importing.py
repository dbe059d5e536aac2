"""Helpers of the import tests: archives built member by member (hostile ones included),
and running an import job's attempt in this process."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.files.uploadedfile import SimpleUploadedFile

from exports.models import ProjectImportJob
from project.jobs.models import JobRun
from project.jobs.runner import execute


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def tarball(members: Iterable[Member | tuple[str, bytes | str]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for item in members:
            member = item if isinstance(item, Member) else Member(item[0], _bytes(item[1]))
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.linkname = member.linkname
            info.size = len(member.data) if member.type == tarfile.REGTYPE else 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(member.data) if member.type == tarfile.REGTYPE else None)
    return out.getvalue()


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def ndjson(rows: Iterable[dict]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def minimal_archive(*, version: str = "0.2.4", issues: Iterable[dict] = (), extra: Iterable = ()) -> bytes:
    return tarball(
        [
            ("VERSION", version),
            ("tree/project.json", json.dumps({"description": "Imported", "visibility_level": 10})),
            ("tree/project/labels.ndjson", ndjson([{"title": "bug", "color": "#ff0000", "type": "ProjectLabel"}])),
            ("tree/project/issues.ndjson", ndjson(issues)),
            *extra,
        ]
    )


def upload(data: bytes, name: str = "export.tar.gz") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/gzip")


def run_import_attempt(job: ProjectImportJob) -> str:
    """Execute the job's current attempt here, through the toolkit's runner."""
    job.refresh_from_db()
    run = JobRun.objects.get(pk=job.job_run_id)
    return execute(run.pk, run.attempt)


def _ms(value):
    """GitLab's JSON keeps milliseconds: compare timestamps at that precision."""
    return None if value is None else value.replace(microsecond=value.microsecond // 1000 * 1000)


def project_snapshot(project, *, without_member=None) -> dict:
    """Every modelled field of a project's content, keyed so that two projects compare."""
    from project.models import Issue, Label, LabelLink, Note, Project, ProjectMember

    project = Project.objects.get(pk=project.pk)
    issues = {}
    for issue in Issue.objects.filter(project=project).order_by("iid"):
        issues[issue.iid] = {
            "title": issue.title,
            "description": issue.description,
            "state": issue.state,
            "issue_type": issue.issue_type,
            "author_id": issue.author_id,
            "confidential": issue.confidential,
            "due_date": issue.due_date,
            "discussion_locked": issue.discussion_locked,
            "relative_position": issue.relative_position,
            "lock_version": issue.lock_version,
            "updated_by_id": issue.updated_by_id,
            "closed_by_id": issue.closed_by_id,
            "last_edited_at": _ms(issue.last_edited_at),
            "last_edited_by_id": issue.last_edited_by_id,
            "created_at": _ms(issue.created_at),
            "updated_at": _ms(issue.updated_at),
            "closed_at": _ms(issue.closed_at),
            "notes": [
                (note.note, note.system, note.author_id, _ms(note.created_at), _ms(note.updated_at))
                for note in Note.objects.filter(issue=issue).order_by("id")
            ],
            "labels": sorted(
                (link.label.title, _ms(link.created_at), _ms(link.updated_at))
                for link in LabelLink.objects.filter(issue=issue).select_related("label")
            ),
        }
    return {
        "description": project.description,
        "visibility_level": project.visibility_level,
        "members": sorted(
            ProjectMember.objects.filter(project=project)
            .exclude(user=without_member)
            .values_list("user_id", "access_level")
        ),
        "labels": sorted(
            (label.title, label.color, label.description, _ms(label.created_at), _ms(label.updated_at))
            for label in Label.objects.filter(project=project)
        ),
        "issues": issues,
    }
