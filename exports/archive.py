"""Writing an export archive: a tar.gz in GitLab's layout, streamed with flat memory.

Each relation is streamed from PostgreSQL (``COPY … TO STDOUT``) into a plain temporary
file, because a tar header needs the member's size before its data; the file is then
copied into the gzip'd tar and deleted. Nothing is held in memory beyond one COPY row and
one copy buffer, however large the project. Every relation is read in one REPEATABLE READ
snapshot, so issues, labels and members agree with each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from django.db import connection, transaction

from exports import relations
from project.errors import PermanentError

COMPRESS_LEVEL = 6  # gzip's default, as `tar czf` (GitLab) uses; 9 costs ~2x CPU for ~3 % size
COPY_BUFFER = 1 << 20
_CANCEL_CHECK_EVERY = 500  # rows


class ExportCancelled(PermanentError):
    code = "export_cancelled"

    def default_message(self) -> str:
        return "The export job was stopped (failed by an administrator or the stuck-job sweep)."


@dataclass
class Progress:
    """Counters the export updates as it goes; a heartbeat thread publishes them."""

    relations_total: int = len(relations.TREE)
    relations_done: int = 0
    rows_written: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise ExportCancelled()


@dataclass(frozen=True)
class ArchiveResult:
    path: Path
    size: int
    sha256: str
    rows: int
    seconds: float


class _HashingWriter(io.RawIOBase):
    """Counts and hashes the compressed bytes on their way to the file, so the checksum
    needs no second read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.size = 0
        self._digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self._digest.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@contextlib.contextmanager
def _snapshot() -> Iterator[None]:
    if connection.in_atomic_block:
        # Inside a caller's transaction (the test suite's): it already sees one snapshot.
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def copy_relation(relation: relations.Relation, params: dict, path: Path, progress: Progress) -> int:
    """Stream one relation's JSON lines into ``path``; returns the number of lines."""
    rows = 0
    with (
        open(path, "wb", buffering=COPY_BUFFER) as out,
        connection.cursor() as cursor,
        # The driver's own cursor: Django's debug wrapper takes no parameters for COPY.
        cursor.cursor.copy(relations.copy_statement(relation), params) as copy,
    ):
        for block in copy:
            out.write(block)
            # libpq hands out COPY data one row at a time; count lines anyway, in case.
            lines = bytes(block).count(b"\n")
            rows += lines
            progress.rows_written += lines
            if rows % _CANCEL_CHECK_EVERY == 0:
                progress.check()
    return rows


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mtime = int(time.time())
    info.mode = 0o644
    with open(path, "rb") as handle:
        tar.addfile(info, handle)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def archive_write(*, project_id: int, description: str | None, workdir: Path, progress: Progress) -> ArchiveResult:
    """Write the project's archive as ``workdir/archive.tar.gz.part`` and return its size and
    checksum. ``workdir`` is private to this attempt; the caller moves the file into place."""
    started = time.monotonic()
    params = {"project_id": project_id, "description": description}
    part = workdir / "archive.tar.gz.part"
    rows = 0
    with open(part, "wb") as raw:
        hashing = _HashingWriter(raw)
        with tarfile.open(fileobj=hashing, mode="w:gz", compresslevel=COMPRESS_LEVEL, format=tarfile.PAX_FORMAT) as tar:
            tar.copybufsize = COPY_BUFFER
            _add_bytes(tar, "VERSION", relations.VERSION.encode())
            with _snapshot():
                for relation in relations.TREE:
                    member = workdir / f"{relation.name}.ndjson"
                    rows += copy_relation(relation, params, member, progress)
                    progress.check()
                    _add_file(tar, relation.path, member)
                    member.unlink()
                    progress.relations_done += 1
        raw.flush()
        # Durable before it is renamed into place: a crash must not publish a torn file.
        os.fsync(raw.fileno())
    return ArchiveResult(
        path=part, size=hashing.size, sha256=hashing.hexdigest(), rows=rows, seconds=time.monotonic() - started
    )
