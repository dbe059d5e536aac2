"""Writing an archive's relations into a project, in batches.

The caller holds one transaction for the whole import (see ``services.import_run``): each
batch runs in a savepoint, and a batch that the database refuses is written again one row
at a time, so one bad row becomes one entry of ``failed_relations`` (GitLab's behaviour)
instead of failing the import. Errors that are not about a row (a lost connection, a
cancel) propagate and roll everything back.

Users are mapped as GitLab's ``MembersMapper`` maps them: only an administrator's import
brings members, matched to existing users by email; every other user reference falls back
to the importer, and a note whose author was not mapped records the original author in
its text. A reference that is null in the archive (a deleted user) stays null.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from exports.importer import copytext, ndjson, streaming
from exports.importer.values import RowInvalid
from exports.importer.values import date as _date
from exports.importer.values import integer as _int
from exports.importer.values import issue_line as _issue_line
from exports.importer.values import stamp as _stamp
from exports.importer.values import text as _text
from exports.importer.values import timestamp as _time
from project.models import AccessLevel, Issue, Label, LabelLink, Note, Project, ProjectMember, User, Visibility

MAX_FAILED_KEPT = 1000
MODELLED_RELATIONS = ("project_members", "labels", "issues")

#: Keys read (or deliberately not carried over: ids of the source instance, re-derived
#: values); every other key is counted as skipped.
_PROJECT_KEYS = {"description", "visibility_level"}
_MEMBER_KEYS = {"id", "access_level", "user", "user_id", "source_id", "source_type", "created_at", "updated_at"}
_LABEL_KEYS = {"id", "title", "color", "description", "type", "project_id", "group_id", "created_at", "updated_at"}
_ISSUE_KEYS = {
    "id", "project_id", "iid", "title", "description", "state", "issue_type", "author_id", "created_at",
    "updated_at", "closed_at", "confidential", "due_date", "discussion_locked", "relative_position",
    "lock_version", "updated_by_id", "closed_by_id", "last_edited_at", "last_edited_by_id", "notes", "label_links",
    "work_item_type",
}  # fmt: skip
_NOTE_KEYS = {
    "id", "note", "noteable_type", "noteable_id", "author_id", "author", "created_at", "updated_at", "project_id",
    "system",
}  # fmt: skip
#: The issue columns the import writes, in COPY order (a prepared issue's values).
ISSUE_COLUMNS = (
    "iid", "title", "description", "state", "issue_type", "author_id", "confidential", "due_date",
    "discussion_locked", "relative_position", "lock_version", "updated_by_id", "closed_by_id", "last_edited_at",
    "last_edited_by_id", "created_at", "updated_at", "closed_at",
)  # fmt: skip
_LINK_KEYS = {"id", "label", "label_id", "target_id", "target_type", "created_at", "updated_at"}
#: The note columns after issue_id, in COPY order (a prepared note's values).
NOTE_COLUMNS = ("author_id", "note", "system", "created_at", "updated_at")


# Plain constants: an enum's .values walks the enum on every call, which cost four seconds
# per 100,000 issues on the import's hot path.
_ISSUE_TYPES = frozenset(Issue.Type.values)
_DEFAULT_TYPE = str(Issue.Type.ISSUE)
_OPENED, _CLOSED = str(Issue.State.OPENED), str(Issue.State.CLOSED)


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError | InterfaceError)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic collector off while batches are built: each batch allocates hundreds of
    thousands of dicts and tuples (none in cycles, refcounting frees them), and every
    collection they trigger walked the worker's whole heap, about 30 % of the import's CPU."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Outcome:
    # Every modelled relation is named, with 0 when the archive had none.
    counts: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(("project", *MODELLED_RELATIONS, "notes", "label_links"), 0))
    )
    skipped_relations: Counter[str] = field(default_factory=Counter)
    skipped_fields: Counter[str] = field(default_factory=Counter)
    failed: list[dict[str, Any]] = field(default_factory=list)
    failed_total: int = 0

    def skipped(self, files: list[str]) -> dict[str, Any]:
        return {
            "relations": dict(sorted(self.skipped_relations.items())),
            "fields": dict(sorted(self.skipped_fields.items())),
            "files": sorted(files),
        }


@dataclass(slots=True)
class _PreparedIssue:
    number: int
    values: tuple[Any, ...]  # in ISSUE_COLUMNS order
    notes: list[tuple[Any, ...]]  # in NOTE_COLUMNS order
    links: list[tuple[str, dict[str, Any], str, str]]  # (title, label, created_at, updated_at)
    # The COPY text of the issue's and its notes' rows after their leading ids (known once
    # the batch's ids are taken from the sequence).
    line: str
    note_lines: list[str]


@dataclass(slots=True)
class _IssueBatch:
    """A batch of prepared issues with its refused items and skip counts, kept apart from the
    outcome until the batch is written (preparing writes no shared state)."""

    issues: list[_PreparedIssue] = field(default_factory=list)
    refused: list[tuple[int, RowInvalid]] = field(default_factory=list)
    skipped_relations: Counter[str] = field(default_factory=Counter)
    skipped_fields: Counter[str] = field(default_factory=Counter)


class ProjectWriter:
    """Imports the relations under ``root/tree`` into ``project``. ``on_progress(relation,
    rows, note)`` is called after every batch (the job toolkit's progress, which may cancel)."""

    def __init__(
        self,
        *,
        project: Project,
        importer: User,
        admin: bool,
        root: Path,
        line_limit: int,
        batch_size: int,
        on_progress: Callable[[str, int, str], None],
    ) -> None:
        self.project = project
        self.importer = importer
        self.admin = admin
        self.tree = root / "tree"
        self.line_limit = line_limit
        self.batch_size = batch_size
        self.on_progress = on_progress
        self.outcome = Outcome()
        self.users: dict[int, int] = {}  # archive user id → our user id
        self.labels: dict[str, int] = dict(Label.objects.filter(project=project).values_list("title", "id"))

    # --- bookkeeping --------------------------------------------------------------------

    def _skip_unknown(
        self, relation: str, item: dict[str, Any], known: set[str], into: Outcome | _IssueBatch | None = None
    ) -> None:
        tally = into or self.outcome
        for key in item.keys() - known:  # a set difference: most items have nothing extra
            value = item[key]
            if isinstance(value, list | dict):
                if value:
                    tally.skipped_relations[f"{relation}.{key}"] += len(value) if isinstance(value, list) else 1
            else:
                tally.skipped_fields[f"{relation}.{key}"] += 1

    def _fail(self, relation: str, number: int, exc: BaseException) -> None:
        self.outcome.failed_total += 1
        if len(self.outcome.failed) >= MAX_FAILED_KEPT:
            return
        self.outcome.failed.append(
            {
                "id": self.outcome.failed_total,
                "created_at": timezone.now().isoformat().replace("+00:00", "Z"),
                "exception_class": type(exc).__name__,
                "exception_message": " ".join(str(exc).split())[:255],
                "source": "process_relation_item!",
                "relation_name": relation,
                "line_number": number - 1,  # GitLab's relation_index counts from 0
            }
        )

    def objects(self, relation: str) -> Iterator[tuple[int, dict[str, Any]]]:
        path = self.tree / "project" / f"{relation}.ndjson"
        if path.is_file():
            yield from ndjson.objects(path, name=f"{relation}.ndjson", limit=self.line_limit)

    def _user(self, value: Any) -> int | None:
        """A user reference of the archive: mapped, the importer when unknown, null kept."""
        if value is None:
            return None
        return self.users.get(value, self.importer.pk) if isinstance(value, int) else self.importer.pk

    # --- relations ----------------------------------------------------------------------

    def run(self) -> Outcome:
        self.project_attributes()
        self.members()
        self.labels_import()
        self.issues()
        self.unmodelled_files()
        return self.outcome

    def project_attributes(self) -> None:
        data = ndjson.document(self.tree / "project.json", name="project.json", limit=self.line_limit)
        self._skip_unknown("project", data, _PROJECT_KEYS)
        description = data.get("description")
        if isinstance(description, str):
            self.project.description = description
        if data.get("visibility_level") in Visibility.values:
            self.project.visibility_level = data["visibility_level"]
        self.project.save(update_fields=["description", "visibility_level", "updated_at"])
        self.outcome.counts["project"] = 1

    def members(self) -> None:
        present = set(ProjectMember.objects.filter(project=self.project).values_list("user_id", flat=True))
        for number, item in self.objects("project_members"):
            self._skip_unknown("project_members", item, _MEMBER_KEYS)
            if not self.admin:
                # GitLab's MembersMapper ignores the archive's members unless an admin imports.
                self.outcome.skipped_relations["project_members (importer is not an administrator)"] += 1
                continue
            try:
                self._member(item, present)
            except (RowInvalid, DatabaseError) as exc:
                if is_connection_error(exc):
                    raise
                self._fail("project_members", number, exc)
        self.on_progress("project_members", self.outcome.counts["project_members"], "members imported")

    def _member(self, item: dict[str, Any], present: set[int]) -> None:
        user = item.get("user") or {}
        if not isinstance(user, dict):
            raise RowInvalid("user is not an object")
        email = user.get("email") or user.get("public_email")
        found = User.objects.filter(email__iexact=email).first() if isinstance(email, str) and email else None
        if found is None:
            self.outcome.skipped_relations["project_members (no user with that email)"] += 1
            return
        if isinstance(user.get("id"), int):
            self.users[user["id"]] = found.pk
        if found.pk in present:
            return
        level = item.get("access_level")
        if level not in AccessLevel.values:
            raise RowInvalid(f"access_level {level!r} is not a GitLab access level")
        with transaction.atomic():
            ProjectMember.objects.create(
                project=self.project,
                user=found,
                access_level=level,
                created_at=_time(item.get("created_at"), key="created_at") or timezone.now(),
            )
        present.add(found.pk)
        self.outcome.counts["project_members"] += 1

    def labels_import(self) -> None:
        for number, item in self.objects("labels"):
            self._skip_unknown("labels", item, _LABEL_KEYS)
            try:
                self._label(item)
            except (RowInvalid, DatabaseError) as exc:
                if is_connection_error(exc):
                    raise
                self._fail("labels", number, exc)
        self.on_progress("labels", self.outcome.counts["labels"], "labels imported")

    def _label(self, item: dict[str, Any], *, count: bool = True) -> int:
        title = _text(item.get("title"), key="title", required=True)
        if title in self.labels:
            return self.labels[title]
        with transaction.atomic():
            label = Label.objects.create(
                project=self.project,
                title=title,
                color=_text(item.get("color"), key="color") or "#6699cc",
                description=_text(item.get("description"), key="description"),
                created_at=_time(item.get("created_at"), key="created_at") or timezone.now(),
            )
            # auto_now sets updated_at on save: keep the archive's with an UPDATE.
            updated = _time(item.get("updated_at"), key="updated_at")
            if updated is not None:
                Label.objects.filter(pk=label.pk).update(updated_at=updated)
        self.labels[title] = label.pk
        if count:
            self.outcome.counts["labels"] += 1
        return label.pk

    # --- issues, with their notes and label links ----------------------------------------

    def issues(self) -> None:
        path = self.tree / "project" / "issues.ndjson"
        with _gc_paused():
            if not path.is_file() or streaming.issues_stream(self, path=path):
                return
            # The database refused a row: batch by batch, each refused batch row by row.
            for batch in self._issue_batches():
                self._issue_batch(batch)

    # --- what the streaming pass uses ------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, int], int, int, int]:
        return dict(self.labels), self.outcome.counts["labels"], len(self.outcome.failed), self.outcome.failed_total

    def restore(self, snapshot: tuple[dict[str, int], int, int, int]) -> None:
        """Forget what a rolled-back pass did: the labels it created, the failures it recorded."""
        labels, count, kept, total = snapshot
        self.labels = labels
        self.outcome.counts["labels"] = count
        del self.outcome.failed[kept:]
        self.outcome.failed_total = total

    def new_batch(self) -> _IssueBatch:
        return _IssueBatch()

    def merge(self, batch: _IssueBatch) -> None:
        """A batch's skip counts and refused items into the outcome."""
        self.outcome.skipped_relations.update(batch.skipped_relations)
        self.outcome.skipped_fields.update(batch.skipped_fields)
        for number, exc in batch.refused:
            self._fail("issues", number, exc)

    def label_from_link(self, label: dict[str, Any]) -> None:
        """A label named by a link but absent from labels.ndjson, created from the link's
        label as GitLab does; one that cannot be created is a failed relation."""
        try:
            self._label(label)
        except (RowInvalid, DatabaseError) as exc:
            if is_connection_error(exc):
                raise
            self._fail("labels", 0, exc)

    def _issue_batches(self) -> Iterator[_IssueBatch]:
        """The issues, read and prepared in batches (no database here)."""
        batch = _IssueBatch()
        now = timezone.now().isoformat()
        for number, item in self.objects("issues"):
            try:
                batch.issues.append(self.issue_prepare(number, item, now, batch))
            except RowInvalid as exc:
                batch.refused.append((number, exc))
            if len(batch.issues) + len(batch.refused) >= self.batch_size:
                yield batch
                batch = _IssueBatch()
                now = timezone.now().isoformat()
        if batch.issues or batch.refused:
            yield batch

    def issue_prepare(self, number: int, item: dict[str, Any], now: str, batch: _IssueBatch) -> _PreparedIssue:
        if not _ISSUE_KEYS.issuperset(item):  # in C, no set built: most items have nothing extra
            self._skip_unknown("issues", item, _ISSUE_KEYS, batch)
        get = item.get
        iid = _int(get("iid"), key="iid")
        if iid is None:
            raise RowInvalid("iid is missing")
        state = get("state") or "opened"
        # GitLab's importer takes the work item type's base type first, then issue_type.
        work_item_type = get("work_item_type")
        issue_type = (
            (work_item_type.get("base_type") if isinstance(work_item_type, dict) else None)
            or get("issue_type")
            or _DEFAULT_TYPE
        )
        discussion_locked = get("discussion_locked")
        values = (  # ISSUE_COLUMNS
            iid,
            _text(get("title"), key="title", required=True),
            _text(get("description"), key="description"),
            # GitLab's state machine has "reopened" (an opened issue) and locked states of MRs.
            _CLOSED if state == "closed" else _OPENED,
            # An unknown type is imported as an issue, as GitLab does.
            issue_type if issue_type in _ISSUE_TYPES else _DEFAULT_TYPE,
            self._user(get("author_id")),
            bool(get("confidential") or False),
            _date(get("due_date"), key="due_date"),
            discussion_locked if isinstance(discussion_locked, bool) else None,
            _int(get("relative_position"), key="relative_position"),
            _int(get("lock_version"), key="lock_version", default=0),
            self._user(get("updated_by_id")),
            self._user(get("closed_by_id")),
            _stamp(get("last_edited_at"), key="last_edited_at"),
            self._user(get("last_edited_by_id")),
            _stamp(get("created_at"), key="created_at") or now,
            _stamp(get("updated_at"), key="updated_at") or now,
            _stamp(get("closed_at"), key="closed_at"),
        )
        notes = [self._note_prepare(note, now, batch) for note in get("notes") or () if isinstance(note, dict)]
        links = []
        for link in get("label_links") or ():
            if not isinstance(link, dict):
                continue
            if not _LINK_KEYS.issuperset(link):
                self._skip_unknown("issues.label_links", link, _LINK_KEYS, batch)
            label = link.get("label")
            if not isinstance(label, dict):
                raise RowInvalid("a label link has no label")
            links.append(
                (
                    _text(label.get("title"), key="label title", required=True),
                    label,
                    _stamp(link.get("created_at"), key="created_at") or now,
                    _stamp(link.get("updated_at"), key="updated_at") or now,
                )
            )
        text, null = copytext.text, copytext.NULL
        note_lines = [
            f"{null if author is None else author}\t{text(note)}\t{'t' if system else 'f'}\t{created}\t{updated}\n"
            for author, note, system, created, updated in notes
        ]
        return _PreparedIssue(number, values, notes, links, _issue_line(values), note_lines)

    def _note_prepare(self, item: dict[str, Any], now: str, batch: _IssueBatch) -> tuple[Any, ...]:
        if not _NOTE_KEYS.issuperset(item):
            self._skip_unknown("issues.notes", item, _NOTE_KEYS, batch)
        text = _text(item.get("note"), key="note")
        old_author = item.get("author_id")
        updated_at = item.get("updated_at")
        author_id = None
        if old_author is not None:
            author_id = self.users.get(old_author) if isinstance(old_author, int) else None
            if author_id is None:
                author_id = self.importer.pk
                name = (item.get("author") or {}).get("name") if isinstance(item.get("author"), dict) else None
                stamp = str(updated_at or item.get("created_at") or "").split(".")[0]
                text = f"{text}\n\n *By {name or 'an unknown user'} on {stamp} (imported from GitLab)*"
        return (  # NOTE_COLUMNS
            author_id,
            text,
            bool(item.get("system") or False),
            _stamp(item.get("created_at"), key="created_at") or now,
            _stamp(updated_at, key="updated_at") or now,
        )

    def _issue_batch(self, batch: _IssueBatch) -> None:
        self.merge(batch)
        prepared = batch.issues
        self._labels_ensure(prepared)
        try:
            with transaction.atomic():
                counts = self._issues_copy(prepared)
        except DatabaseError as exc:
            if is_connection_error(exc):
                raise
            # One row spoiled the batch: find it (them) one row at a time.
            counts = Counter()
            for one in prepared:
                try:
                    with transaction.atomic():
                        counts += self._issues_write_orm([one])
                except DatabaseError as row_exc:
                    if is_connection_error(row_exc):
                        raise
                    self._fail("issues", one.number, row_exc)
        self.outcome.counts.update(counts)
        self.on_progress("issues", self.outcome.counts["issues"], f"{self.outcome.counts['issues']:,} issues imported")

    def _labels_ensure(self, prepared: list[_PreparedIssue]) -> None:
        """Labels named by a link but absent from labels.ndjson are created from the link's
        label (GitLab does the same), before the batch, so a batch rollback keeps them."""
        for issue in prepared:
            for title, label, _created, _updated in issue.links:
                if title not in self.labels:
                    self.label_from_link(label)

    def _links(self, one: _PreparedIssue) -> list[tuple[int, str, str]]:
        """(label id, created_at, updated_at) of an issue's links, each label once."""
        found: dict[int, tuple[int, str, str]] = {}
        for title, _label, created, updated in one.links:
            label_id = self.labels.get(title)
            if label_id is not None and label_id not in found:
                found[label_id] = (label_id, created, updated)
        return list(found.values())

    def _issues_copy(self, prepared: list[_PreparedIssue]) -> Counter[str]:
        """The batch's issues, notes and label links with ``COPY … FROM STDIN``, formatted by
        ``copytext`` (see docs/benchmarks.md). Issue ids are taken from the sequence first,
        so notes and links can name them in the same stream."""
        counts = Counter({"issues": len(prepared), "notes": 0, "label_links": 0})
        if not prepared:
            return counts
        with connection.cursor() as cursor, connection.wrap_database_errors:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('issues', 'id')) FROM generate_series(1, %s)", [len(prepared)]
            )
            ids = [row[0] for row in cursor.fetchall()]
            project = f"{self.project.pk}\t"
            issues, notes, links = [], [], []
            for issue_id, one in zip(ids, prepared, strict=True):
                issues.append(f"{issue_id}\t{project}{one.line}")
                notes += [f"{issue_id}\t{line}" for line in one.note_lines]
                # Label ids are known here, once the batch's labels exist.
                links += [
                    f"{issue_id}\t{label_id}\t{created}\t{updated}\n" for label_id, created, updated in self._links(one)
                ]
            raw = cursor.cursor
            for statement, rows in (
                (f"COPY issues (id, project_id, {', '.join(ISSUE_COLUMNS)}) FROM STDIN", issues),
                (f"COPY notes (issue_id, {', '.join(NOTE_COLUMNS)}) FROM STDIN", notes),
                ("COPY issue_labels (issue_id, label_id, created_at, updated_at) FROM STDIN", links),
            ):
                if rows:
                    with raw.copy(statement) as copy:
                        copy.write("".join(rows))
        counts["notes"], counts["label_links"] = len(notes), len(links)
        return counts

    def _issues_write_orm(self, prepared: list[_PreparedIssue]) -> Counter[str]:
        """Insert the issues, then their notes and label links, with the ORM: the slow path
        that finds the rows a batch failed on (fresh instances each time, so a retried row
        never carries the id of a rolled-back insert)."""
        issues = Issue.objects.bulk_create(
            [Issue(project=self.project, **dict(zip(ISSUE_COLUMNS, one.values, strict=True))) for one in prepared]
        )
        notes = [
            Note(issue_id=issue.pk, **dict(zip(NOTE_COLUMNS, note, strict=True)))
            for issue, one in zip(issues, prepared, strict=True)
            for note in one.notes
        ]
        links = [
            LabelLink(issue_id=issue.pk, label_id=label_id, created_at=created, updated_at=updated)
            for issue, one in zip(issues, prepared, strict=True)
            for label_id, created, updated in self._links(one)
        ]
        Note.objects.bulk_create(notes, batch_size=self.batch_size)
        LabelLink.objects.bulk_create(links, batch_size=self.batch_size)
        return Counter({"issues": len(issues), "notes": len(notes), "label_links": len(links)})

    def unmodelled_files(self) -> None:
        """Relations this product does not model, counted by name (their lines are read
        with the same bound, so a huge line is refused there too)."""
        folder = self.tree / "project"
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.ndjson")):
            relation = path.name.removesuffix(".ndjson")
            if relation in MODELLED_RELATIONS:
                continue
            lines = sum(1 for _ in ndjson.lines(path, name=path.name, limit=self.line_limit))
            self.outcome.skipped_relations[relation] += lines
