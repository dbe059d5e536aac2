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

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from exports.importer import ndjson
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
}  # fmt: skip
_NOTE_KEYS = {
    "id", "note", "noteable_type", "noteable_id", "author_id", "author", "created_at", "updated_at", "project_id",
    "system",
}  # fmt: skip
#: The issue columns the import writes, in COPY order (the keys of a prepared issue).
_ISSUE_COLUMNS = (
    "iid", "title", "description", "state", "issue_type", "author_id", "confidential", "due_date",
    "discussion_locked", "relative_position", "lock_version", "updated_by_id", "closed_by_id", "last_edited_at",
    "last_edited_by_id", "created_at", "updated_at", "closed_at",
)  # fmt: skip
_LINK_KEYS = {"id", "label", "label_id", "target_id", "target_type", "created_at", "updated_at"}


# Plain constants: an enum's .values walks the enum on every call, which cost four seconds
# per 100,000 issues on the import's hot path.
_ISSUE_TYPES = frozenset(Issue.Type.values)
_DEFAULT_TYPE = str(Issue.Type.ISSUE)
_OPENED, _CLOSED = str(Issue.State.OPENED), str(Issue.State.CLOSED)


class RowInvalid(ValueError):
    """One relation item cannot be imported (a missing or malformed value)."""


def _time(value: Any, *, key: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowInvalid(f"{key} is not a timestamp")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RowInvalid(f"{key} is not a timestamp: {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _date(value: Any, *, key: str) -> dt.date | None:
    if value is None or value == "":
        return None
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise RowInvalid(f"{key} is not a date: {str(value)[:40]!r}") from None


def _int(value: Any, *, key: str, default: int | None = None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowInvalid(f"{key} is not an integer")
    return value


def _text(value: Any, *, key: str, required: bool = False) -> str:
    if value is None:
        if required:
            raise RowInvalid(f"{key} is missing")
        return ""
    if not isinstance(value, str):
        raise RowInvalid(f"{key} is not a string")
    return value


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError | InterfaceError)


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


@dataclass
class _PreparedIssue:
    number: int
    values: dict[str, Any]
    notes: list[dict[str, Any]]
    links: list[tuple[str, dict[str, Any]]]  # (label title, link values)


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

    def _skip_unknown(self, relation: str, item: dict[str, Any], known: set[str]) -> None:
        for key in item.keys() - known:  # a set difference: most items have nothing extra
            value = item[key]
            if isinstance(value, list | dict):
                if value:
                    self.outcome.skipped_relations[f"{relation}.{key}"] += len(value) if isinstance(value, list) else 1
            else:
                self.outcome.skipped_fields[f"{relation}.{key}"] += 1

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

    def _objects(self, relation: str) -> Iterator[tuple[int, dict[str, Any]]]:
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
        for number, item in self._objects("project_members"):
            self._skip_unknown("project_members", item, _MEMBER_KEYS)
            if not self.admin:
                # GitLab's MembersMapper ignores the archive's members unless an admin imports.
                self.outcome.skipped_relations["project_members (importer is not an administrator)"] += 1
                continue
            try:
                self._member(item, present)
            except (RowInvalid, DatabaseError) as exc:
                if _is_connection_error(exc):
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
        for number, item in self._objects("labels"):
            self._skip_unknown("labels", item, _LABEL_KEYS)
            try:
                self._label(item)
            except (RowInvalid, DatabaseError) as exc:
                if _is_connection_error(exc):
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
        batch: list[tuple[int, dict[str, Any]]] = []
        for number, item in self._objects("issues"):
            batch.append((number, item))
            if len(batch) >= self.batch_size:
                self._issue_batch(batch)
                batch = []
        if batch:
            self._issue_batch(batch)

    def _issue_prepare(self, number: int, item: dict[str, Any]) -> _PreparedIssue:
        self._skip_unknown("issues", item, _ISSUE_KEYS)
        iid = _int(item.get("iid"), key="iid")
        if iid is None:
            raise RowInvalid("iid is missing")
        state = item.get("state") or "opened"
        issue_type = item.get("issue_type") or _DEFAULT_TYPE
        discussion_locked = item.get("discussion_locked")
        values = {
            "iid": iid,
            "title": _text(item.get("title"), key="title", required=True),
            "description": _text(item.get("description"), key="description"),
            # GitLab's state machine has "reopened" (an opened issue) and locked states of MRs.
            "state": _CLOSED if state == "closed" else _OPENED,
            # An unknown type is imported as an issue, as GitLab does.
            "issue_type": issue_type if issue_type in _ISSUE_TYPES else _DEFAULT_TYPE,
            "author_id": self._user(item.get("author_id")),
            "confidential": bool(item.get("confidential") or False),
            "due_date": _date(item.get("due_date"), key="due_date"),
            "discussion_locked": discussion_locked if isinstance(discussion_locked, bool) else None,
            "relative_position": _int(item.get("relative_position"), key="relative_position"),
            "lock_version": _int(item.get("lock_version"), key="lock_version", default=0),
            "updated_by_id": self._user(item.get("updated_by_id")),
            "closed_by_id": self._user(item.get("closed_by_id")),
            "last_edited_at": _time(item.get("last_edited_at"), key="last_edited_at"),
            "last_edited_by_id": self._user(item.get("last_edited_by_id")),
            "created_at": _time(item.get("created_at"), key="created_at") or timezone.now(),
            "updated_at": _time(item.get("updated_at"), key="updated_at") or timezone.now(),
            "closed_at": _time(item.get("closed_at"), key="closed_at"),
        }
        notes = [self._note_prepare(note) for note in item.get("notes") or [] if isinstance(note, dict)]
        links = []
        for link in item.get("label_links") or []:
            if not isinstance(link, dict):
                continue
            self._skip_unknown("issues.label_links", link, _LINK_KEYS)
            label = link.get("label")
            if not isinstance(label, dict):
                raise RowInvalid("a label link has no label")
            title = _text(label.get("title"), key="label title", required=True)
            links.append(
                (
                    title,
                    {
                        "label": label,
                        "created_at": _time(link.get("created_at"), key="created_at") or timezone.now(),
                        "updated_at": _time(link.get("updated_at"), key="updated_at") or timezone.now(),
                    },
                )
            )
        return _PreparedIssue(number=number, values=values, notes=notes, links=links)

    def _note_prepare(self, item: dict[str, Any]) -> dict[str, Any]:
        self._skip_unknown("issues.notes", item, _NOTE_KEYS)
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
        return {
            "note": text,
            "system": bool(item.get("system") or False),
            "author_id": author_id,
            "created_at": _time(item.get("created_at"), key="created_at") or timezone.now(),
            "updated_at": _time(updated_at, key="updated_at") or timezone.now(),
        }

    def _issue_batch(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        prepared = []
        for number, item in batch:
            try:
                prepared.append(self._issue_prepare(number, item))
            except RowInvalid as exc:
                self._fail("issues", number, exc)
        self._labels_ensure(prepared)
        try:
            with transaction.atomic():
                counts = self._issues_copy(prepared)
        except DatabaseError as exc:
            if _is_connection_error(exc):
                raise
            # One row spoiled the batch: find it (them) one row at a time.
            counts = Counter()
            for one in prepared:
                try:
                    with transaction.atomic():
                        counts += self._issues_write_orm([one])
                except DatabaseError as row_exc:
                    if _is_connection_error(row_exc):
                        raise
                    self._fail("issues", one.number, row_exc)
        self.outcome.counts.update(counts)
        self.on_progress("issues", self.outcome.counts["issues"], f"{self.outcome.counts['issues']:,} issues imported")

    def _labels_ensure(self, prepared: list[_PreparedIssue]) -> None:
        """Labels named by a link but absent from labels.ndjson are created from the link's
        label (GitLab does the same), before the batch, so a batch rollback keeps them."""
        for issue in prepared:
            for title, link in issue.links:
                if title not in self.labels:
                    try:
                        self._label(link["label"])
                    except (RowInvalid, DatabaseError) as exc:
                        if _is_connection_error(exc):
                            raise
                        self._fail("labels", 0, exc)

    def _links(self, issue_id: int, one: _PreparedIssue) -> Iterator[tuple[int, dt.datetime, dt.datetime]]:
        """(label id, created_at, updated_at) of an issue's links, each label once."""
        seen = set()
        for title, link in one.links:
            label_id = self.labels.get(title)
            if label_id is not None and label_id not in seen:
                seen.add(label_id)
                yield label_id, link["created_at"], link["updated_at"]

    def _issues_copy(self, prepared: list[_PreparedIssue]) -> Counter[str]:
        """The batch's issues, notes and label links with ``COPY … FROM STDIN``: about four
        times the ORM's rate (see docs/benchmarks.md). Issue ids are taken from the sequence
        first, so notes and links can name them in the same stream."""
        counts = Counter({"issues": len(prepared), "notes": 0, "label_links": 0})
        if not prepared:
            return counts
        with connection.cursor() as cursor, connection.wrap_database_errors:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('issues', 'id')) FROM generate_series(1, %s)", [len(prepared)]
            )
            ids = [row[0] for row in cursor.fetchall()]
            raw = cursor.cursor
            with raw.copy(f"COPY issues (id, project_id, {', '.join(_ISSUE_COLUMNS)}) FROM STDIN") as copy:
                for issue_id, one in zip(ids, prepared, strict=True):
                    copy.write_row((issue_id, self.project.pk, *(one.values[c] for c in _ISSUE_COLUMNS)))
            with raw.copy("COPY notes (issue_id, author_id, note, system, created_at, updated_at) FROM STDIN") as copy:
                for issue_id, one in zip(ids, prepared, strict=True):
                    for note in one.notes:
                        copy.write_row(
                            (
                                issue_id,
                                note["author_id"],
                                note["note"],
                                note["system"],
                                note["created_at"],
                                note["updated_at"],
                            )
                        )
                        counts["notes"] += 1
            with raw.copy("COPY issue_labels (issue_id, label_id, created_at, updated_at) FROM STDIN") as copy:
                for issue_id, one in zip(ids, prepared, strict=True):
                    for link in self._links(issue_id, one):
                        copy.write_row((issue_id, *link))
                        counts["label_links"] += 1
        return counts

    def _issues_write_orm(self, prepared: list[_PreparedIssue]) -> Counter[str]:
        """Insert the issues, then their notes and label links, with the ORM: the slow path
        that finds the rows a batch failed on (fresh instances each time, so a retried row
        never carries the id of a rolled-back insert)."""
        issues = Issue.objects.bulk_create([Issue(project=self.project, **one.values) for one in prepared])
        notes = [
            Note(issue_id=issue.pk, **note) for issue, one in zip(issues, prepared, strict=True) for note in one.notes
        ]
        links = [
            LabelLink(issue_id=issue.pk, label_id=label_id, created_at=created, updated_at=updated)
            for issue, one in zip(issues, prepared, strict=True)
            for label_id, created, updated in self._links(issue.pk, one)
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
