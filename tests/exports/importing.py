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
