"""Checking and extracting an import archive before any of it is trusted.

Two passes over the upload, both streaming with bounded memory:

1. gunzip only, counting bytes, and stop as soon as the total passes
   ``max_decompressed_archive_size`` (GitLab's ``DecompressedArchiveSizeValidator``): a
   decompression bomb costs us at most the limit in CPU, and nothing reaches the disk.
2. read the tar member by member (a stream, no seeking) and write each allowed regular file
   ourselves, never through ``tarfile.extract``: names must be relative and stay inside the
   work directory (no absolute paths, no ``..``), types must be regular files or
   directories (links, devices and FIFOs refuse the whole archive), the number of files is
   bounded, and files are created with O_EXCL | O_NOFOLLOW so nothing already there, or a
   link planted by an earlier member, is followed or overwritten.

Only VERSION, GITLAB_VERSION, GITLAB_REVISION and files under ``tree/`` are extracted; other
regular files of a GitLab archive (repository bundles, uploads, LFS objects) are not
modelled here and are reported as skipped.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from exports import relations
from exports.importer.errors import ImportArchiveInvalid, ImportStorageError

CHUNK = 1 << 20
TOP_LEVEL_FILES = ("VERSION", "GITLAB_VERSION", "GITLAB_REVISION")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class ArchiveLimits:
    max_decompressed_bytes: int  # 0: no limit
    max_files: int


@dataclass
class ExtractedArchive:
    root: Path
    version: str
    files: list[str] = field(default_factory=list)
    #: Regular files of the archive that were not extracted (not modelled), by name.
    skipped_files: list[str] = field(default_factory=list)
    decompressed_bytes: int = 0


def _too_large(limit: int) -> ImportArchiveInvalid:
    return ImportArchiveInvalid(
        f"Decompressed archive size validation failed: the archive is larger than {limit // (1024 * 1024)} MiB "
        "once decompressed."
    )


def decompressed_size_check(*, source: Path, limit: int) -> int:
    """The archive's decompressed size, read as a stream; refused once it passes ``limit``."""
    total = 0
    if not source.is_file():
        raise ImportArchiveInvalid("The uploaded archive is no longer available; upload it again.")
    try:
        with gzip.open(source, "rb") as stream:
            while chunk := stream.read(CHUNK):
                total += len(chunk)
                if limit and total > limit:
                    raise _too_large(limit)
    except (OSError, EOFError, zlib.error) as exc:
        _storage_error(exc)
        raise ImportArchiveInvalid(f"The file is not a gzip-compressed archive ({exc}).") from None
    return total


def _storage_error(exc: BaseException) -> None:
    """An OSError with an errno is our disk failing (no space, I/O), not the archive: it is
    retried, and its message (which names our paths) is not shown to the user."""
    if isinstance(exc, OSError) and exc.errno is not None:
        raise ImportStorageError(f"Storage error while reading the archive: {exc.strerror}.") from exc


def member_path(name: str) -> str:
    """The member's name as a safe relative path, or refuse the archive."""
    if not name or "\x00" in name or "\\" in name:
        raise ImportArchiveInvalid(f"The archive holds a file with an invalid name: {name!r}.")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ImportArchiveInvalid(f"The archive holds a file with an absolute path: {name!r}.")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ImportArchiveInvalid(f"The archive holds a path that leaves its directory: {name!r}.")
    return posixpath.join(*parts) if parts else ""


def _wanted(path: str) -> bool:
    return path in TOP_LEVEL_FILES or path.startswith("tree/")


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, flags, 0o600)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        # The archive's own names collide (a file twice, a file inside a file): its fault.
        raise ImportArchiveInvalid(f"The archive holds {member.name!r} twice or inside another file.") from None
    written = 0
    source = tar.extractfile(member)
    assert source is not None  # a regular file
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            out.write(chunk)
            written += len(chunk)
    return written


def archive_extract(*, source: Path, workdir: Path, limits: ArchiveLimits) -> ExtractedArchive:
    """Check ``source`` and extract its tree into ``workdir`` (which must be empty)."""
    decompressed = decompressed_size_check(source=source, limit=limits.max_decompressed_bytes)
    root = workdir.resolve()
    result = ExtractedArchive(root=root, version="", decompressed_bytes=decompressed)
    count = 0
    try:
        # gzip's reader, not tarfile's "r|gz": ours follows concatenated gzip members, which
        # our exporter writes (tarfile's stream stops after the first).
        with gzip.open(source, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                path = member_path(member.name)
                if not (member.isreg() or member.isdir()):
                    kind = "link" if (member.issym() or member.islnk()) else "special file"
                    raise ImportArchiveInvalid(f"The archive holds a {kind}, which imports refuse: {member.name!r}.")
                count += 1
                if count > limits.max_files:
                    raise ImportArchiveInvalid(f"The archive holds more than {limits.max_files} files.")
                if member.isdir() or not path:
                    continue
                if not _wanted(path):
                    result.skipped_files.append(path)
                    continue
                target = (root / path).resolve()
                if os.path.commonpath([root, target]) != str(root):
                    raise ImportArchiveInvalid(f"The archive holds a path that leaves its directory: {member.name!r}.")
                _write_member(tar, member, target)
                result.files.append(path)
    except tarfile.TarError as exc:
        raise ImportArchiveInvalid(f"The archive cannot be read as a tar file ({exc}).") from None
    except (OSError, EOFError, zlib.error) as exc:
        _storage_error(exc)
        raise ImportArchiveInvalid(f"The archive cannot be read ({exc}).") from None
    result.version = version_check(root=root)
    if "tree/project.json" not in result.files:
        raise ImportArchiveInvalid("The archive has no tree/project.json.")
    return result


def version_check(*, root: Path) -> str:
    """GitLab's ``VersionChecker``: the VERSION file must name the format we read."""
    try:
        with open(root / "VERSION", "rb") as handle:
            first = handle.readline(64).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        raise ImportArchiveInvalid("The archive has no VERSION file.") from None
    if not _VERSION.match(first):
        raise ImportArchiveInvalid("Incorrect VERSION format")
    if first != relations.VERSION:
        raise ImportArchiveInvalid(f"Import version mismatch: Required {relations.VERSION} but was {first}")
    return first
