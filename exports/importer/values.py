"""An archive's values checked and turned into what the import writes: a value of the wrong
type or form raises ``RowInvalid``, which fails its item only (GitLab's failed relations)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from exports.importer import copytext


class RowInvalid(ValueError):
    """One relation item cannot be imported (a missing or malformed value)."""


def timestamp(value: Any, *, key: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowInvalid(f"{key} is not a timestamp")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RowInvalid(f"{key} is not a timestamp: {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


#: A timestamp PostgreSQL reads as it is, once Python has checked its ranges: the form of
#: GitLab's exports and ours.
PLAIN_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")


def stamp(value: Any, *, key: str) -> str | None:
    """A timestamp of the issues' hot path as COPY text, checked as ``timestamp`` checks it:
    formatting a datetime for COPY cost more than parsing it, so GitLab's form passes as is."""
    if value.__class__ is str and value:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise RowInvalid(f"{key} is not a timestamp: {value[:40]!r}") from None
        if PLAIN_STAMP.fullmatch(value):
            return value
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).isoformat()
    other = timestamp(value, key=key)  # None, "", or refused
    return None if other is None else other.isoformat()


def date(value: Any, *, key: str) -> dt.date | None:
    if value is None or value == "":
        return None
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise RowInvalid(f"{key} is not a date: {str(value)[:40]!r}") from None


def integer(value: Any, *, key: str, default: int | None = None) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowInvalid(f"{key} is not an integer")
    return value


def text(value: Any, *, key: str, required: bool = False) -> str:
    if value is None:
        if required:
            raise RowInvalid(f"{key} is missing")
        return ""
    if not isinstance(value, str):
        raise RowInvalid(f"{key} is not a string")
    return value


def issue_line(values: tuple[Any, ...]) -> str:
    """An issue's COPY text after its id and project id, from its values in the writer's
    ``ISSUE_COLUMNS`` order (types known: one f-string per issue, not a call per value)."""
    (
        iid, title, description, state, issue_type, author, confidential, due, locked, position, lock_version,
        updated_by, closed_by, edited_at, edited_by, created, updated, closed,
    ) = values  # fmt: skip
    text, null = copytext.text, copytext.NULL
    return (
        f"{iid}\t{text(title)}\t{text(description)}\t{state}\t{issue_type}\t{null if author is None else author}"
        f"\t{'t' if confidential else 'f'}\t{null if due is None else due.isoformat()}"
        f"\t{null if locked is None else ('t' if locked else 'f')}\t{null if position is None else position}"
        f"\t{lock_version}\t{null if updated_by is None else updated_by}\t{null if closed_by is None else closed_by}"
        f"\t{null if edited_at is None else edited_at}\t{null if edited_by is None else edited_by}"
        f"\t{created}\t{updated}\t{null if closed is None else closed}\n"
    )
