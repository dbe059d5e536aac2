"""Archives an attacker (or a broken exporter) could send: each is refused before any row
is written, with an import_error that says why, and nothing lands outside the work dir."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from exports.importer import services
from exports.models import ProjectImportJob
from project.models import ApplicationSetting, Issue, Label
from tests.exports.importing import Member, minimal_archive, ndjson, run_import_attempt, tarball, upload

GOOD = [
    ("VERSION", "0.2.4"),
    ("tree/project.json", json.dumps({"description": "d"})),
    ("tree/project/labels.ndjson", ndjson([{"title": "bug"}])),
]


def _import(user, data: bytes) -> ProjectImportJob:
    job = services.import_request(user=user, file=upload(data), path="target")
    run_import_attempt(job)
    job.refresh_from_db()
    return job


def _nothing_written(job: ProjectImportJob, media: Path) -> None:
    assert job.status == "failed"
    assert not Label.objects.filter(project=job.project).exists()
    assert not Issue.objects.filter(project=job.project).exists()
    # The work directory is gone and nothing escaped it.
    assert not list(media.glob("imports-tmp/job-*"))
    assert not list(media.parent.rglob("evil*"))


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ([*GOOD, ("../evil.txt", "x")], "The archive holds a path that leaves its directory: '../evil.txt'."),
        ([*GOOD, ("tree/../../evil.txt", "x")], "leaves its directory"),
        ([*GOOD, ("/var/evil-absolute.txt", "x")], "The archive holds a file with an absolute path"),
        (
            [*GOOD, Member("tree/project/issues.ndjson", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
            "The archive holds a link, which imports refuse: 'tree/project/issues.ndjson'.",
        ),
        (
            [*GOOD, Member("tree/project/evil-hard", type=tarfile.LNKTYPE, linkname="VERSION")],
            "The archive holds a link, which imports refuse",
        ),
        ([*GOOD, Member("tree/evil-dev", type=tarfile.CHRTYPE)], "The archive holds a special file"),
        ([*GOOD, Member("tree/evil-fifo", type=tarfile.FIFOTYPE)], "The archive holds a special file"),
        ([("VERSION", "0.2.3"), *GOOD[1:]], "Import version mismatch: Required 0.2.4 but was 0.2.3"),
        ([("VERSION", "not a version"), *GOOD[1:]], "Incorrect VERSION format"),
        (GOOD[1:], "The archive has no VERSION file."),
        (GOOD[:1], "The archive has no tree/project.json."),
        (
            [*GOOD, ("tree/project/issues.ndjson", b'{"iid": 1, "title": "ok"}\n{not json\n')],
            "issues.ndjson line 2 is not valid JSON",
        ),
        ([*GOOD, ("tree/project/issues.ndjson", b"[1, 2]\n")], "issues.ndjson line 1 is not a JSON object."),
        ([*GOOD, ("VERSION", "0.2.4")], "The archive holds 'VERSION' twice or inside another file."),
        (
            [*GOOD, ("tree/project/x.ndjson", "{}"), ("tree/project/x.ndjson/y", "{}")],
            "The archive holds 'tree/project/x.ndjson/y' twice or inside another file.",
        ),
    ],
)
def test_hostile_archive_is_refused_with_a_clear_error(owner, media_root, members, error) -> None:
    job = _import(owner, tarball(members))
    assert error in job.error
    assert job.error_code == "invalid_archive"
    _nothing_written(job, Path(media_root))


def test_decompression_bomb_is_refused_while_streaming(owner, media_root, monkeypatch) -> None:
    ApplicationSetting.objects.update_or_create(pk=1, defaults={"max_decompressed_archive_size": 1})
    bomb = minimal_archive(extra=[("tree/project/milestones.ndjson", b"\0" * (8 * 1024 * 1024))])
    assert len(bomb) < 64 * 1024
    from exports.importer import archive

    extracted = []
    monkeypatch.setattr(archive, "_write_member", lambda *args: extracted.append(args))
    job = _import(owner, bomb)
    assert job.error.startswith("Decompressed archive size validation failed")
    assert extracted == []  # refused before the first member was written
    _nothing_written(job, Path(media_root))


def test_a_huge_line_is_refused(owner, media_root, settings) -> None:
    settings.IMPORT_MAX_LINE_BYTES = 1024
    line = json.dumps({"iid": 1, "title": "t", "description": "x" * 5000}).encode() + b"\n"
    job = _import(owner, tarball([*GOOD, ("tree/project/issues.ndjson", line)]))
    assert job.error == "issues.ndjson line 1 is longer than 1024 bytes."
    _nothing_written(job, Path(media_root))


def test_too_many_files_are_refused(owner, media_root, settings) -> None:
    settings.IMPORT_MAX_FILES = 5
    members = [*GOOD, *[(f"tree/project/extra{n}.ndjson", "{}\n") for n in range(5)]]
    job = _import(owner, tarball(members))
    assert job.error == "The archive holds more than 5 files."


def test_a_file_that_is_not_gzip_is_refused(owner, media_root) -> None:
    job = _import(owner, b"this is not an archive")
    assert job.error.startswith("The file is not a gzip-compressed archive")


def test_gzip_that_is_not_a_tar_is_refused(owner, media_root) -> None:
    job = _import(owner, gzip.compress(b"plain text, not a tar" * 100))
    assert "cannot be read" in job.error


def test_the_stored_upload_is_deleted_once_the_import_fails(owner, media_root) -> None:
    job = _import(owner, tarball([("VERSION", "9.9.9")]))
    assert job.status == "failed"
    assert not (Path(media_root) / job.source).exists()


def test_other_gitlab_files_are_not_extracted_but_reported(owner, media_root) -> None:
    job = _import(owner, minimal_archive(extra=[("project.bundle", b"git bundle"), ("uploads/a.png", b"png")]))
    assert job.status == "finished", job.error
    assert job.skipped["files"] == ["project.bundle", "uploads/a.png"]


def test_gzip_members_concatenated_as_our_exporter_writes_them_are_read(owner, media_root) -> None:
    data = minimal_archive()
    raw = gzip.decompress(data)
    # Cut inside the last members, so the second gzip member holds needed files.
    cut = len(raw) - 3 * 1024
    concatenated = gzip.compress(raw[:cut]) + gzip.compress(raw[cut:])
    with tarfile.open(fileobj=io.BytesIO(concatenated), mode="r:gz") as tar:
        assert tar.getnames()
    job = _import(owner, concatenated)
    assert job.status == "finished", job.error


def test_a_missing_upload_fails_without_naming_our_paths(owner, media_root) -> None:
    from django.core.files.storage import default_storage

    job = services.import_request(user=owner, file=upload(minimal_archive()), path="gone")
    default_storage.delete(job.source)
    run_import_attempt(job)
    job.refresh_from_db()
    assert (job.status, job.error) == ("failed", "The uploaded archive is no longer available; upload it again.")
    assert str(media_root) not in job.error
