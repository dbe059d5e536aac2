"""The issues' fast path: one pass over ``issues.ndjson`` with PostgreSQL working while we
parse.

Written batch by batch, the import took turns with the database: parse a batch, then wait
for its COPY to finish. Here the notes (most of the rows) stream into an open ``COPY
notes`` while the issues are still being read, so PostgreSQL stores them while Python
parses the next lines; the issues and label links go to spool files in the work directory
and are copied in when the segment's lines are read. That order works because the foreign
keys are deferred to the commit (Django creates them ``DEFERRABLE INITIALLY DEFERRED``):
a note may arrive before its issue within the transaction.

Issue ids are reserved from the sequence for a segment at a time (at most ``SEGMENT``
issues, so memory stays bounded), since no other statement can run while a COPY is open.
A row the database refuses aborts the whole pass: everything it wrote is rolled back to
its savepoint and the writer imports the issues batch by batch instead, which finds the
rows (GitLab's failed relations).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from exports.importer import copytext
from exports.importer.values import RowInvalid

if TYPE_CHECKING:
    from exports.importer.writer import ProjectWriter, _IssueBatch

SEGMENT = 50_000
CHUNK = 1 << 20


def _line_count(path: Path) -> int:
    count = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _copy_file(raw: Any, statement: str, spool: IO[str]) -> None:
    spool.seek(0)
    with raw.copy(statement) as copy:
        while chunk := spool.read(CHUNK):
            copy.write(chunk)


def issues_stream(writer: ProjectWriter, *, path: Path) -> bool:
    """Import every issue of ``path`` with its notes and label links. False when the
    database refused a row: then nothing of the pass remains and the writer is as before."""
    from exports.importer.writer import ISSUE_COLUMNS, NOTE_COLUMNS, is_connection_error

    before = writer.snapshot()
    counts: Counter[str] = Counter(issues=0, notes=0, label_links=0)
    tally = writer.new_batch()
    try:
        with transaction.atomic(), connection.cursor() as cursor, connection.wrap_database_errors:
            raw = cursor.cursor
            statements = (
                f"COPY notes (issue_id, {', '.join(NOTE_COLUMNS)}) FROM STDIN",
                f"COPY issues (id, project_id, {', '.join(ISSUE_COLUMNS)}) FROM STDIN",
                "COPY issue_labels (issue_id, label_id, created_at, updated_at) FROM STDIN",
            )
            objects = writer.objects("issues")
            lines = remaining = _line_count(path)
            while remaining > 0:
                cursor.execute(
                    "SELECT nextval(pg_get_serial_sequence('issues', 'id')) FROM generate_series(1, %s)",
                    [min(SEGMENT, remaining)],
                )
                ids = [row[0] for row in cursor.fetchall()]
                last = _segment(writer, raw, statements, objects, ids, tally, counts)
                remaining = 0 if last is None else lines - last
    except DatabaseError as exc:
        if is_connection_error(exc):
            raise
        writer.restore(before)
        return False
    writer.merge(tally)
    writer.outcome.counts.update(counts)
    return True


def _segment(
    writer: ProjectWriter,
    raw: Any,
    statements: tuple[str, str, str],
    objects: Iterator[tuple[int, dict[str, Any]]],
    ids: list[int],
    tally: _IssueBatch,
    counts: Counter[str],
) -> int | None:
    """Up to ``len(ids)`` issues: the number of the last line read, or None once the file
    is done."""
    notes_copy, issues_copy, links_copy = statements
    project = f"{writer.project.pk}\t"
    text = copytext.text
    missing: dict[str, dict[str, Any]] = {}
    used = last = 0
    done = True
    now = timezone.now().isoformat()
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8", dir=writer.tree.parent) as issues,
        tempfile.TemporaryFile("w+", encoding="utf-8", dir=writer.tree.parent) as links,
    ):
        with raw.copy(notes_copy) as notes:
            for number, item in objects:
                last = number
                try:
                    one = writer.issue_prepare(number, item, now, tally)
                except RowInvalid as exc:
                    tally.refused.append((number, exc))
                    continue
                issue_id = ids[used]
                used += 1
                issues.write(f"{issue_id}\t{project}{one.line}")
                if one.note_lines:
                    notes.write("".join([f"{issue_id}\t{line}" for line in one.note_lines]))
                    counts["notes"] += len(one.note_lines)
                seen = set()
                for title, label, created, updated in one.links:
                    if title not in seen:
                        seen.add(title)
                        links.write(f"{issue_id}\t{text(title)}\t{created}\t{updated}\n")
                        if title not in writer.labels:
                            missing.setdefault(title, label)
                if used % writer.batch_size == 0:
                    total = counts["issues"] + used
                    writer.on_progress("issues", total, f"{total:,} issues imported")
                    now = timezone.now().isoformat()
                if used == len(ids):
                    done = False
                    break
        _copy_file(raw, issues_copy, issues)
        counts["issues"] += used
        for label in missing.values():
            writer.label_from_link(label)
        label_ids = {text(title): str(label_id) for title, label_id in writer.labels.items()}
        links.seek(0)
        with raw.copy(links_copy) as copy:
            for line in links:
                link_issue, title, rest = line.split("\t", 2)
                label_id = label_ids.get(title)
                if label_id is not None:  # None: the label could not be created (a failed relation)
                    copy.write(f"{link_issue}\t{label_id}\t{rest}")
                    counts["label_links"] += 1
    writer.on_progress("issues", counts["issues"], f"{counts['issues']:,} issues imported")
    return None if done else last
