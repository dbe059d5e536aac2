"""Writing an export archive: a tar.gz in GitLab's layout, streamed with flat memory.

A tar header must state its member's size before the data, which a stream does not know.
So each relation is streamed from PostgreSQL (``COPY … TO STDOUT``) and gzip-compressed on
the fly into a scratch file, counting its size; then the header, the already-compressed
data and the padding are appended to the archive as consecutive gzip members. Gzip readers
(gunzip, ``tar xzf``, Python's tarfile) read concatenated members as one stream, so the
result is an ordinary .tar.gz. Compression overlaps with the database producing rows, the
scratch file is compressed, and memory holds one COPY row and one copy buffer, however
large the project. Every relation is read in one REPEATABLE READ snapshot, so issues,
labels and members agree with each other. Progress goes to the job toolkit, which shows it
on the run and stops the export (``JobCancelled``) once an operator cancels it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.db import connection, transaction

from exports import relations
from project.errors import PermanentError
from project.jobs import report_progress

logger = logging.getLogger(__name__)

COMPRESS_LEVEL = 6  # gzip's default, as `tar czf` (GitLab) uses; 9 costs ~2x CPU for ~3 % size
COPY_BUFFER = 1 << 20
_CANCEL_CHECK_EVERY = 500  # rows


class ExportCancelled(PermanentError):
    code = "export_cancelled"

    def default_message(self) -> str:
        return "The export job was stopped (cancelled, or failed by the stuck-job sweep)."


@dataclass
class Progress:
    """Counters the export updates as it goes, reported to the job toolkit."""

    relations_total: int = len(relations.TREE)
    relations_done: int = 0
    rows_written: int = 0
    relation: str = ""

    def report(self) -> None:
        """Publish on the job's run; raises ``JobCancelled`` once the run is to stop."""
        report_progress(
            self.relations_done,
            self.relations_total,
            f"exporting {self.relation}: {self.rows_written:,} rows",
            phase="exporting",
            relations_done=self.relations_done,
            relations_total=self.relations_total,
            rows_written=self.rows_written,
        )


@dataclass(frozen=True)
class ArchiveResult:
    path: Path
    size: int
    sha256: str
    rows: int
    seconds: float


class _HashingWriter:
    """Counts and hashes the bytes on their way to the archive file, so the checksum
    needs no second read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.size = 0
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self.size += len(data)
        self._raw.write(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _gzip_member(data: bytes) -> bytes:
    compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 31)  # 31: gzip framing
    return compressor.compress(data) + compressor.flush()


@contextlib.contextmanager
def read_snapshot() -> Iterator[None]:
    """Run the block's reads in one REPEATABLE READ, READ ONLY transaction, so they see
    the database at a single moment."""
    if connection.in_atomic_block:
        # Inside a caller's transaction (the test suite's): it decides what it sees.
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def copy_relation(relation: relations.Relation, params: dict, path: Path, progress: Progress) -> tuple[int, int]:
    """Stream one relation's JSON lines into ``path`` as one gzip member; returns
    (lines, uncompressed bytes)."""
    rows = size = 0
    compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 31)
    with (
        open(path, "wb", buffering=COPY_BUFFER) as out,
        connection.cursor() as cursor,
        # The driver's own cursor (Django's debug wrapper takes no parameters for COPY), so
        # its errors are translated here: a lost connection must reach the job toolkit as
        # Django's OperationalError, which it retries.
        connection.wrap_database_errors,
        cursor.cursor.copy(relations.copy_statement(relation), params) as copy,
    ):
        for block in copy:
            data = bytes(block)
            out.write(compressor.compress(data))
            size += len(data)
            # libpq hands out COPY data one row at a time; count lines anyway, in case.
            lines = data.count(b"\n")
            rows += lines
            progress.rows_written += lines
            if rows % _CANCEL_CHECK_EVERY == 0:
                progress.report()
        out.write(compressor.flush())
    return rows, size


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(time.time())
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _small_file(name: str, text: str) -> bytes:
    data = text.encode()
    return _header(name, len(data)) + data + _padding(len(data))


def archive_write(
    *,
    project_id: int,
    description: str | None,
    workdir: Path,
    progress: Progress,
    exported_by_admin: bool = False,
) -> ArchiveResult:
    """Write the project's archive as ``workdir/archive.tar.gz.part`` and return its size and
    checksum. ``workdir`` is private to this attempt; the caller moves the file into place."""
    started = time.monotonic()
    params = {"project_id": project_id, "description": description, "exported_by_admin": exported_by_admin}
    part = workdir / "archive.tar.gz.part"
    rows = 0
    with open(part, "wb") as raw:
        out = _HashingWriter(raw)
        head = b"".join(
            _small_file(name, text)
            for name, text in (
                ("VERSION", relations.VERSION),
                ("GITLAB_VERSION", relations.GITLAB_VERSION),
                ("GITLAB_REVISION", relations.GITLAB_REVISION),
            )
        )
        out.write(_gzip_member(head))
        total = len(head)
        with read_snapshot():
            for relation in relations.TREE:
                member = workdir / f"{relation.name}.ndjson.gz"
                progress.relation = relation.name
                progress.report()
                lines, size = copy_relation(relation, params, member, progress)
                header = _header(relation.path, size)
                out.write(_gzip_member(header))
                with open(member, "rb") as compressed:
                    shutil.copyfileobj(compressed, out, COPY_BUFFER)
                out.write(_gzip_member(_padding(size)))
                total += len(header) + size + len(_padding(size))
                member.unlink()
                rows += lines
                progress.relations_done += 1
                progress.report()
        # Two zero blocks end a tar; tar pads the whole to a multiple of its record size.
        end = 2 * tarfile.BLOCKSIZE
        out.write(_gzip_member(b"\0" * (end + (-(total + end) % tarfile.RECORDSIZE))))
        raw.flush()
        # Durable before it is renamed into place: a crash must not publish a torn file.
        os.fsync(raw.fileno())
    return ArchiveResult(
        path=part, size=out.size, sha256=out.hexdigest(), rows=rows, seconds=time.monotonic() - started
    )
