"""Reading GitLab's ``gl-secret-detection-report.json`` and importing its findings.

A report is read as a stream (ijson), never whole, in two passes over the same bytes:

1. **check** (``report_check``): every vulnerability is validated against the JSON Schema
   in ``secret_detection/report_schema/`` as it goes by, the rest of the report (its
   ``version`` against the schema versions GitLab supports, its ``scan``) once the stream
   ends. Every problem is listed with its path in the report, never a value, so a
   misplaced secret is not echoed. A finding with the identity of an earlier one is a
   warning (only the first is imported).
2. **import**: the same stream again, writing findings and their token statuses in
   batches inside one transaction (an invalid report stores nothing), then the routing
   job starts for what is new or changed.

Memory stays bounded whatever the input: one vulnerability at a time (at most
``MAX_VALUE_NODES`` JSON values), nesting refused past ``MAX_DEPTH`` levels before
anything deep is built, and the set of identities seen (16 bytes of digest each).

The API's uploads are stored (``report_upload``, ``report_import_request``) and imported by
the ``secret_detection.import_report`` job (``report_import_run``), which records the
outcome on a ``ReportImport``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import IO, Any

import ijson
import jsonschema_rs
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from jsonschema import Draft7Validator

from project import crypto, locks
from project.db import rows_delete_in_batches
from project.errors import Conflict, ValidationFailed
from project.jobs import report_progress
from project.models import Project, User
from secret_detection import metrics
from secret_detection.models import Finding, ReportImport, Severity
from secret_detection.services import jobs, statuses

logger = logging.getLogger(__name__)

GITLEAKS_RULE_ID = "gitleaks_rule_id"
MAX_PROBLEMS_LISTED = 50
MAX_WARNINGS_LISTED = 50
#: Containers open at once, counting the report's own object: a report is 5 deep.
MAX_DEPTH = 64
#: JSON values in one vulnerability (or in ``scan``): the sample's have about 30.
MAX_VALUE_NODES = 10_000
READ_CHUNK = 64 * 1024
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "report_schema" / "secret-detection-report.schema.json"

#: The jobs ``secret_detection.tasks`` declares for report imports.
REPORT_IMPORT_JOB = "secret_detection.import_report"
REPORT_IMPORT_CLEANUP_JOB = "secret_detection.cleanup_report_imports"
#: Storage folders (under MEDIA_ROOT): uploads being received, and stored reports.
INCOMING_DIR = "secret_detection/incoming"
REPORTS_DIR = "secret_detection/reports"
#: A scratch or stored file no import refers to is deleted by the cleanup once this old.
ORPHAN_GRACE = timedelta(hours=1)

#: The secret detection report schema versions GitLab supports: its
#: ``SchemaValidator::SUPPORTED_VERSIONS[:secret_detection]``
#: (lib/gitlab/ci/parsers/security/validators/schema_validator.rb: 15.0.0 to 15.2.0, no
#: 15.0.3), extended to 15.2.3 by the schemas gem GitLab now vendors them from
#: (gitlab-security_report_schemas 0.1.3.min15.0.0.max15.2.3). Like GitLab, another patch
#: of a supported MAJOR.MINOR is accepted with a warning (checked as its latest patch).
SUPPORTED_VERSIONS = (
    "15.0.0",
    "15.0.1",
    "15.0.2",
    "15.0.4",
    "15.0.5",
    "15.0.6",
    "15.0.7",
    "15.1.0",
    "15.1.1",
    "15.1.2",
    "15.1.3",
    "15.1.4",
    "15.2.0",
    "15.2.1",
    "15.2.2",
    "15.2.3",
)
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


class InvalidReport(ValidationFailed):
    code = "invalid_report"

    def __init__(self, problems: list[str], total: int | None = None) -> None:
        self.problems = problems[:MAX_PROBLEMS_LISTED]
        self.total = max(total or 0, len(problems))
        more = f" (and {self.total - len(self.problems)} more)" if self.total > len(self.problems) else ""
        super().__init__(f"The secret detection report is invalid: {'; '.join(self.problems)}{more}")


class ReportTooLarge(ValidationFailed):
    code = "report_too_large"
    http_status = 413

    def __init__(self) -> None:
        super().__init__("413 Request Entity Too Large")


# --- the JSON Schema --------------------------------------------------------------------


@dataclass(frozen=True)
class _Schema:
    report: Draft7Validator
    vulnerability: Draft7Validator
    remediation: Draft7Validator
    #: The same two schemas compiled by jsonschema-rs, which only says valid or not, about
    #: 100 times faster: most findings are valid, and only an invalid one needs the
    #: messages that ``_describe`` builds from jsonschema's errors.
    vulnerability_valid: Callable[[Any], bool]
    remediation_valid: Callable[[Any], bool]
    #: Property names the schema knows: only these are shown in paths (any other key of
    #: the report could be anything, a secret included).
    known_keys: frozenset[str]


def _property_names(node: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                names.update(value)
            names |= _property_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _property_names(value)
    return names


def _inlined(node: Any, definitions: dict[str, Any]) -> Any:
    """The schema with its local ``$ref``s replaced by what they point to (it has no
    cycles): resolving a reference for every value of every vulnerability was half of the
    validation's time."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inlined(definitions[node["$ref"].removeprefix("#/definitions/")], definitions)
        return {key: _inlined(value, definitions) for key, value in node.items() if key != "definitions"}
    if isinstance(node, list):
        return [_inlined(value, definitions) for value in node]
    return node


def _fast(schema: dict[str, Any]) -> Callable[[Any], bool]:
    # Formats are not asserted, as jsonschema's Draft7Validator does not assert them.
    validator = jsonschema_rs.Draft7Validator(schema, validate_formats=False)

    def valid(instance: Any) -> bool:
        # ijson reads a number with a fraction as a Decimal, which jsonschema never counts
        # as an integer and jsonschema-rs does when it is whole (12.0): jsonschema decides.
        if _has_decimal(instance):
            return False
        try:
            return validator.is_valid(instance)
        except (ValueError, TypeError):  # a value it cannot take: jsonschema decides
            return False

    return valid


def _has_decimal(node: Any) -> bool:
    if isinstance(node, dict):
        return any(_has_decimal(value) for value in node.values())
    if isinstance(node, list):
        return any(_has_decimal(value) for value in node)
    return isinstance(node, Decimal)


@cache
def report_schema() -> _Schema:
    document = json.loads(SCHEMA_FILE.read_text())
    Draft7Validator.check_schema(document)
    definitions = document["definitions"]
    vulnerability = _inlined(definitions["vulnerability"], definitions)
    remediation = _inlined(definitions["remediation"], definitions)
    return _Schema(
        report=Draft7Validator(_inlined(document, definitions)),
        vulnerability=Draft7Validator(vulnerability),
        remediation=Draft7Validator(remediation),
        vulnerability_valid=_fast(vulnerability),
        remediation_valid=_fast(remediation),
        known_keys=frozenset(_property_names(document)),
    )


def _kind(value: Any) -> str:
    # Name the JSON type only: a value could be the secret itself.
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


_TYPE_LABELS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def _path(parts: Sequence[Any]) -> str:
    shown = ""
    if len(parts) > 12:
        parts = [*parts[:12], "…"]
    for part in parts:
        if isinstance(part, int):
            shown += f"[{part}]"
        else:
            # A key the schema does not name could be anything, a secret included.
            name = part if part in report_schema().known_keys or part == "…" else "*"
            shown = f"{shown}.{name}" if shown else name
    return shown


def _describe(error: Any, prefix: tuple[Any, ...]) -> list[str]:
    """A jsonschema error in our words: the path and the rule, never the value."""
    where = _path((*prefix, *error.absolute_path))
    subject = where or "the report"
    rule, expected = error.validator, error.validator_value
    if rule == "required":
        return [
            f"{where}.{name} is required" if where else f"{name} is required"
            for name in expected
            if isinstance(error.instance, dict) and name not in error.instance
        ]
    if rule == "type":
        names: list[str] = expected if isinstance(expected, list) else [expected]
        labels = [_TYPE_LABELS.get(name, name) for name in names]
        wanted = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]
        return [f"{subject} must be {wanted} (got {_kind(error.instance)})"]
    if rule in ("enum", "const"):
        choices = expected if rule == "enum" else [expected]
        if len(choices) == 1:
            return [f'{subject} must be "{choices[0]}"']
        return [f"{subject} must be one of {', '.join(sorted(map(str, choices)))}"]
    if rule == "pattern":
        return [f"{subject} {error.schema.get('x-message', 'is not in the expected format')}"]
    if rule in ("minLength", "minItems") and expected == 1:
        return [f"{subject} must not be empty"]
    if rule == "minLength":
        return [f"{subject} must be at least {expected} characters long"]
    if rule == "maxLength":
        return [f"{subject} must be at most {expected} characters long"]
    if rule == "minItems":
        return [f"{subject} must have at least {expected} items"]
    if rule == "maxItems":
        return [f"{subject} must have at most {expected} items"]
    if rule == "minimum":
        return [f"{subject} must not be negative" if expected == 0 else f"{subject} must be at least {expected}"]
    if rule == "maximum":
        return [f"{subject} must be at most {expected}"]
    return [f"{subject} is invalid"]


def _schema_problems(validator: Draft7Validator, instance: Any, prefix: tuple[Any, ...]) -> list[str]:
    found: list[str] = []
    for error in validator.iter_errors(instance):
        for message in _describe(error, prefix):
            if message not in found:
                found.append(message)
    return sorted(found)


def _version_check(version: Any) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the report's ``version``, as GitLab's SchemaValidator: a
    supported version; another patch of a supported MAJOR.MINOR (a warning); else refused.
    The schema already refused a version that is not a short MAJOR.MINOR.PATCH string,
    which is also why it is safe to show."""
    if not isinstance(version, str) or len(version) > 32 or not _VERSION.match(version):
        return [], []
    if version in SUPPORTED_VERSIONS:
        return [], []
    major_minor = version.rsplit(".", 1)[0]
    same = [known for known in SUPPORTED_VERSIONS if known.rsplit(".", 1)[0] == major_minor]
    if same:
        latest = max(same, key=lambda known: tuple(int(n) for n in known.split(".")))
        return [], [
            f"version {version} is not one of the schema versions GitLab supports; it was checked as {latest} "
            "(the same MAJOR.MINOR)"
        ]
    families = sorted({known.rsplit(".", 1)[0] for known in SUPPORTED_VERSIONS})
    return [
        f"version {version} is not supported: GitLab supports secret detection report schema versions "
        f"{', '.join(SUPPORTED_VERSIONS)} (and other patch versions of {', '.join(families)})"
    ], []


def _line_problems(vuln: dict[str, Any], where: str) -> list[str]:
    location = vuln.get("location") or {}
    start, end = location.get("start_line"), location.get("end_line")
    if isinstance(start, int) and isinstance(end, int) and end < start:
        return [f"{where}.location.end_line must not be before start_line"]
    return []


# --- reading the stream -------------------------------------------------------------------

# yajl2_c turns an unpaired \ud800 escape into "?" (and an unpaired \udc00 into bytes it
# cannot decode), so unpaired surrogate escapes are rewritten, before the parser sees
# them, into \u0000, which the text check refuses with the value's path. Same length, so
# nothing else moves. A run of backslashes counts: only an odd one starts an escape.
_SURROGATE_ESCAPE = re.compile(
    rb"(?<!\\)(\\++)u([dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?|[dD][c-fC-F][0-9a-fA-F]{2})"
)
#: The bytes a \u escape (or a pair of them) is made of: a chunk is cut after any other.
_ESCAPE_BYTES = b"\\u0123456789abcdefABCDEF"


def _mark_unpaired(match: re.Match[bytes]) -> bytes:
    run: bytes = match.group(1)
    code: bytes = match.group(2)
    if len(run) % 2 == 0 or len(code) > 4:
        whole: bytes = match.group(0)
        return whole  # an escaped backslash followed by text, or a proper pair
    return run + b"u0000"


class _EscapeFilter:
    """A file-like reader over ``raw`` that marks unpaired surrogate escapes. A chunk is
    passed on only up to its last byte that cannot belong to an escape, so an escape is
    never split between two reads."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.carry = bytearray()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""  # ijson asks for nothing first, to learn whether the file is binary
        while True:
            chunk = self.raw.read(READ_CHUNK)
            self.bytes_read += len(chunk)
            if not chunk:
                out, self.carry = bytes(self.carry), bytearray()
                return self._fix(out)
            cut = len(chunk.rstrip(_ESCAPE_BYTES))
            if cut == 0:
                self.carry += chunk  # all escape material so far: read on
                continue
            out = bytes(self.carry) + chunk[:cut]
            self.carry = bytearray(chunk[cut:])
            return self._fix(out)

    @staticmethod
    def _fix(data: bytes) -> bytes:
        if b"\\u" not in data:
            return data
        return _SURROGATE_ESCAPE.sub(_mark_unpaired, data)


def _backend() -> Any:
    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:  # pragma: no cover - the wheels ship the C backend
        return ijson


def _text_ok(text: str) -> bool:
    """No NUL (PostgreSQL text cannot hold it) and no unpaired surrogate (not UTF-8)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _TooDeep(Exception):
    def __init__(self, parts: Sequence[Any]) -> None:
        super().__init__("too deep")
        self.parts = tuple(parts)


class _Problems:
    """The first problems, listed; the rest only counted."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.listed) < MAX_PROBLEMS_LISTED:
            self.listed.append(message)


_SCALAR = frozenset({"string", "number", "boolean", "null"})
_OPEN = frozenset({"start_map", "start_array"})
_CLOSE = frozenset({"end_map", "end_array"})
#: Top-level keys whose value is built (bounded) and checked once the stream ends.
_HEADER_KEYS = ("version", "scan", "schema")
#: Top-level arrays whose items are handed out one at a time.
_STREAMED_KEYS = ("vulnerabilities", "remediations")
_TEXT_PROBLEM = "contains a NUL character or an unpaired UTF-16 surrogate"


class _ReportReader:
    """One pass over a report: ``items()`` yields each vulnerability (and remediation) as
    it is read; the top-level values are kept in ``header``; what is wrong with the bytes
    themselves (not JSON, too deep, NUL, too large a value) is in ``problems``."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.source = _EscapeFilter(handle)
        self.events = iter(_backend().basic_parse(self.source, use_float=False, buf_size=READ_CHUNK))
        self.problems = _Problems()
        self.header: dict[str, Any] = {}
        #: Top-level keys whose value could not be read (their problem is listed already).
        self.unreadable: set[str] = set()
        #: The JSON itself is broken (or too deep): nothing after the problem was read.
        self.fatal = False
        #: Where the reader is: the prefix, the open containers and their current keys.
        self._where: tuple[tuple[Any, ...], list[Any], list[str | None]] = ((), [], [])

    # --- paths -----------------------------------------------------------------------------

    def _current(self) -> list[Any]:
        prefix, stack, names = self._where
        parts = list(prefix)
        for position, frame in enumerate(stack):
            if type(frame) is dict:
                parts.append(names[position])
            else:
                parts.append(len(frame) if position == len(stack) - 1 else len(frame) - 1)
        return parts

    # --- values ----------------------------------------------------------------------------

    def _value(self, event: str, value: Any, prefix: tuple[Any, ...]) -> tuple[Any, bool]:
        """Build the JSON value that starts with this event, refusing it (without building
        the rest) when it is too large; ``(value, True)`` or ``(None, False)``."""
        if event in _SCALAR:
            if event == "string" and not _text_ok(value):
                self.problems.add(f"{_path(prefix) or 'the report'} {_TEXT_PROBLEM}")
                return None, False
            return value, True
        if len(prefix) + 1 > MAX_DEPTH:
            raise _TooDeep(prefix)
        root: Any = {} if event == "start_map" else []
        stack: list[Any] = [root]
        names: list[str | None] = [None]
        self._where = (prefix, stack, names)
        depth_base = len(prefix)
        ok, nodes = True, 1
        for event, value in self.events:
            if event == "map_key":
                if not _text_ok(value):
                    ok = False
                    where = _path(self._current()[:-1])  # the object whose key it is
                    self.problems.add(f"{where or 'the report'} has a key that {_TEXT_PROBLEM}")
                names[-1] = value
                continue
            if event in _CLOSE:
                stack.pop()
                names.pop()
                if not stack:
                    return (root, True) if ok else (None, False)
                continue
            nodes += 1
            if nodes > MAX_VALUE_NODES:
                self.problems.add(f"{_path(prefix)} is too large (more than {MAX_VALUE_NODES} JSON values)")
                self._skip_open(len(stack), prefix)
                return None, False
            top = stack[-1]
            if event in _OPEN:
                if depth_base + len(stack) + 1 > MAX_DEPTH:
                    raise _TooDeep(self._current())
                child: Any = {} if event == "start_map" else []
            else:
                if event == "string" and not _text_ok(value):
                    ok = False
                    self.problems.add(f"{_path(self._current())} {_TEXT_PROBLEM}")
                child = value
            if type(top) is dict:
                top[names[-1]] = child
            else:
                top.append(child)
            if event in _OPEN:
                stack.append(child)
                names.append(None)
        raise ijson.IncompleteJSONError("premature end of the report")

    def _skip_open(self, open_containers: int, prefix: tuple[Any, ...]) -> None:
        """Read past the rest of a value whose ``open_containers`` are still open."""
        depth = open_containers
        for event, _value in self.events:
            if event in _OPEN:
                depth += 1
                if len(prefix) + depth > MAX_DEPTH:
                    raise _TooDeep(prefix)
            elif event in _CLOSE:
                depth -= 1
                if depth == 0:
                    return

    def _skip(self, event: str, value: Any, prefix: tuple[Any, ...]) -> None:
        """Read past a value this product does not use, checking only its depth and text."""
        self._where = (prefix, [], [])
        if event in _SCALAR:
            if event == "string" and not _text_ok(value):
                self.problems.add(f"{_path(prefix)} {_TEXT_PROBLEM}")
            return
        depth, reported = 1, False
        for event, value in self.events:
            if event in _OPEN:
                depth += 1
                if len(prefix) + depth > MAX_DEPTH:
                    raise _TooDeep(prefix)
            elif event in _CLOSE:
                depth -= 1
                if depth == 0:
                    return
            elif (event == "string" or event == "map_key") and not reported and not _text_ok(value):
                reported = True
                self.problems.add(f"{_path(prefix)} {_TEXT_PROBLEM}")

    # --- the report -------------------------------------------------------------------------

    def items(self) -> Iterator[tuple[str, int, Any, bool]]:
        """``(key, index, value, ok)`` for each item of ``vulnerabilities`` and
        ``remediations``, in the order of the file."""
        try:
            yield from self._items()
        except _TooDeep as exc:
            self.fatal = True
            self.problems.add(f"{_path(exc.parts) or 'the report'} is nested more than {MAX_DEPTH} levels deep")
        except (ijson.JSONError, UnicodeDecodeError):
            self.fatal = True
            if self.source.bytes_read == 0:
                self.problems.add("the report is empty")
            else:
                near = _path(self._current())
                self.problems.add(f"the report is not valid JSON{f' (near {near})' if near else ''}")

    def _items(self) -> Iterator[tuple[str, int, Any, bool]]:
        events = self.events
        event, value = next(events, (None, None))
        if event is None:
            raise ijson.IncompleteJSONError("empty")
        if event != "start_map":
            self.fatal = True
            self.problems.add(f"the report must be a JSON object (got {_kind([] if event in _OPEN else value)})")
            return
        seen: set[str] = set()
        for event, key in events:
            if event == "end_map":
                break
            event, value = next(events)
            if not _text_ok(key):
                self.problems.add(f"the report has a key that {_TEXT_PROBLEM}")
                self._skip(event, value, ("*",))
                continue
            if key in seen and key in (*_HEADER_KEYS, *_STREAMED_KEYS):
                self.problems.add(f"{key} appears more than once")
            seen.add(key)
            if key in _STREAMED_KEYS and event == "start_array":
                self.header[key] = []
                index = 0
                self._where = ((key, index), [], [])
                for event, value in events:
                    if event == "end_array":
                        break
                    item, ok = self._value(event, value, (key, index))
                    yield key, index, item, ok
                    index += 1
                    self._where = ((key, index), [], [])
            elif key in _HEADER_KEYS or key in _STREAMED_KEYS:
                self._where = ((key,), [], [])
                built, ok = self._value(event, value, (key,))
                if ok:
                    self.header[key] = built
                else:
                    self.unreadable.add(key)
            else:
                self._skip(event, value, (key,))
        # Anything after the report's object is refused by the parser itself.
        for _event in events:
            pass


# --- checking -----------------------------------------------------------------------------


def _token_type(identifiers: list[dict[str, Any]]) -> str:
    for identifier in identifiers:
        if identifier.get("type") == GITLEAKS_RULE_ID:
            value: str = identifier.get("value", "")
            return value[:255]
    return ""


def finding_identity(*, token_type: str, file_path: str, start_line: int | None, end_line: int | None) -> str:
    """Stable identity of a finding within its project: the rule and where it was found
    (GitLab's finding UUID is built from the primary identifier and the location). The
    value is left out so that no digest of a secret is stored; a changed value at the
    same place updates the finding instead."""
    key = json.dumps(["secret_detection", token_type, file_path, start_line, end_line])
    return hashlib.sha256(key.encode()).hexdigest()


def _identity_key(identity: str) -> int:
    # 128 bits of the digest: what a set of 200,000 identities holds, at about 70 bytes each.
    return int(identity[:32], 16)


def _vulnerability_identity(vuln: dict[str, Any]) -> str:
    location = vuln["location"]
    return finding_identity(
        token_type=_token_type(vuln["identifiers"]),
        file_path=location["file"],
        start_line=location.get("start_line"),
        end_line=location.get("end_line"),
    )


@dataclass
class ReportCheck:
    """What the first pass found: counts, warnings (no values) and problems."""

    findings: int = 0
    duplicates: int = 0
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    scanner_id: str = ""
    #: The identities of the findings to import (``_identity_key``).
    keys: set[int] = field(default_factory=set, repr=False)

    @property
    def valid(self) -> bool:
        return self.problem_count == 0

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS_LISTED:
            self.warnings.append(message)

    def error(self) -> InvalidReport:
        return InvalidReport(self.problems, self.problem_count)


def report_check(*, handle: IO[bytes], progress: Callable[[int], None] | None = None) -> ReportCheck:
    """Read the whole report once and say whether it can be imported (see the module
    docstring). ``progress(bytes_read)`` is called every thousand vulnerabilities."""
    schema = report_schema()
    reader = _ReportReader(handle)
    check = ReportCheck()
    items = reader.problems  # in the order of the file, with what the reader itself finds
    duplicates_shown = 0
    for key, index, item, ok in reader.items():
        if progress is not None and index % 1000 == 999:
            progress(reader.source.bytes_read)
        if not ok:
            continue
        if key == "remediations":
            if not schema.remediation_valid(item):
                for message in _schema_problems(schema.remediation, item, (key, index)):
                    items.add(message)
            continue
        found = [] if schema.vulnerability_valid(item) else _schema_problems(schema.vulnerability, item, (key, index))
        found = found or _line_problems(item, _path((key, index)))
        for message in found:
            items.add(message)
        if found or items.count:
            continue  # refused anyway: stop keeping identities
        identity = _identity_key(_vulnerability_identity(item))
        if identity in check.keys:
            check.duplicates += 1
            if duplicates_shown < MAX_WARNINGS_LISTED:
                duplicates_shown += 1
                check.warn(
                    f"{_path((key, index))} has the same rule, file and lines as an earlier vulnerability: "
                    "only the first was imported"
                )
            continue
        check.keys.add(identity)
    header = _Problems()
    if not reader.fatal:
        document = {key: value for key, value in reader.header.items() if key not in reader.unreadable}
        for message in _schema_problems(schema.report, document, ()):
            if not any(message.startswith(f"{key} is required") for key in reader.unreadable):
                header.add(message)
        problems, warnings = _version_check(document.get("version"))
        for message in problems:
            header.add(message)
        check.warnings[:0] = warnings
    if check.duplicates > duplicates_shown:
        check.warnings.append(f"and {check.duplicates - duplicates_shown} more duplicate vulnerabilities")
    listed = [*header.listed, *items.listed]
    check.problem_count = header.count + items.count
    check.problems = listed[:MAX_PROBLEMS_LISTED]
    if check.valid:
        check.findings = len(check.keys)
        check.scanner_id = reader.header["scan"]["scanner"]["id"]
    else:
        check.keys = set()
    return check


# --- importing ----------------------------------------------------------------------------


@dataclass
class ParsedFinding:
    identity: str
    fields: dict[str, Any]
    raw_value: str


def _parse(vuln: dict[str, Any], scanner_id: str) -> ParsedFinding:
    location = vuln["location"]
    identifiers = vuln["identifiers"]
    raw_value = vuln.get("raw_source_code_extract") or ""
    return ParsedFinding(
        identity=_vulnerability_identity(vuln),
        raw_value=raw_value,
        fields={
            "report_finding_id": vuln["id"][:255],
            "name": (vuln.get("name") or "")[:255],
            "description": vuln.get("description") or "",
            "severity": vuln.get("severity") or Severity.UNKNOWN,
            "confidence": (vuln.get("confidence") or "")[:16],
            "token_type": _token_type(identifiers),
            "file_path": location["file"][:1024],
            "start_line": location.get("start_line"),
            "end_line": location.get("end_line"),
            "commit_sha": ((location.get("commit") or {}).get("sha") or "")[:64],
            "identifiers": _plain(identifiers),
            "scanner_id": scanner_id[:64],
            "value_fingerprint": crypto.fingerprint(raw_value) if raw_value else "",
        },
    )


def _plain(value: Any) -> Any:
    """JSON-ready: the parser reads non-integral numbers as Decimal."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, Decimal):
        number = float(value)
        return number if math.isfinite(number) else str(value)
    return value


@dataclass
class ImportResult:
    findings: int
    created: int
    updated: int
    unchanged: int
    routing_run_id: int | None
    duplicates: int = 0
    warnings: list[str] = field(default_factory=list)
    #: Time spent on each pass: checking, then writing.
    check_seconds: float = 0.0
    write_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "findings": self.findings,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "routing_run_id": self.routing_run_id,
        }


def _store(project: Project, user: User | None, batch: list[ParsedFinding]) -> tuple[int, int, int]:
    """Write one batch: new findings (each with an unknown status), changed values
    (status reset). Returns (created, updated, unchanged)."""
    parsed = {item.identity: item for item in batch}
    existing = {
        finding.identity: finding
        for finding in Finding.objects.filter(project=project, identity__in=list(parsed)).only(
            "pk", "identity", "raw_value"
        )
    }
    new = [
        Finding(project=project, identity=identity, raw_value=item.raw_value, imported_by=user, **item.fields)
        for identity, item in parsed.items()
        if identity not in existing
    ]
    Finding.objects.bulk_create(new, batch_size=500)
    changed = [finding for identity, finding in existing.items() if finding.raw_value != parsed[identity].raw_value]
    for finding in changed:
        item = parsed[finding.identity]
        for name, value in item.fields.items():
            setattr(finding, name, value)
        finding.raw_value = item.raw_value
    if changed:
        Finding.objects.bulk_update(changed, [*batch[0].fields, "raw_value"], batch_size=500)
        # A new secret at the same place: what we knew about the old one no longer holds.
        statuses.status_reset(finding_ids=[finding.pk for finding in changed])
    statuses.status_create(project=project, findings=new)
    for finding in new:
        # A new status and its finding point at each other (a one-to-one's caches): a cycle
        # only the full garbage collection frees, which runs rarely. Without this, the
        # rows of earlier batches stayed in memory, about 200 bytes a finding.
        finding._state.fields_cache.clear()
    return len(new), len(changed), len(existing) - len(changed)


def _import_checked(
    *,
    project: Project,
    user: User | None,
    handle: IO[bytes],
    check: ReportCheck,
    progress: Callable[[int, int], None] | None = None,
    before_commit: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """The second pass over a report ``check`` passed: write its findings in batches, in
    one transaction (imports of a project run one at a time), then start routing."""
    pending = check.keys
    batch_size = settings.REPORT_IMPORT_BATCH_SIZE
    created = updated = unchanged = done = 0
    with transaction.atomic():
        # Imports of one project run one at a time, so two concurrent imports of the same
        # report cannot both create (or both route) the same finding.
        locks.xact_lock(f"secret_detection.import:{project.pk}")
        reader = _ReportReader(handle)
        batch: list[ParsedFinding] = []
        for key, _index, item, ok in reader.items():
            if key != "vulnerabilities":
                continue
            if not ok:
                break
            parsed = _parse(item, check.scanner_id)
            identity = _identity_key(parsed.identity)
            if identity not in pending:
                continue  # a duplicate: the first one is imported
            pending.discard(identity)
            batch.append(parsed)
            if len(batch) >= batch_size:
                counts = _store(project, user, batch)
                created, updated, unchanged = created + counts[0], updated + counts[1], unchanged + counts[2]
                done += len(batch)
                batch = []
                if progress is not None:
                    progress(done, check.findings)
        if batch:
            counts = _store(project, user, batch)
            created, updated, unchanged = created + counts[0], updated + counts[1], unchanged + counts[2]
        if reader.problems.count or pending:
            # The bytes changed between the passes (they never should): store nothing.
            raise InvalidReport(reader.problems.listed or ["the report changed while it was imported"])
        run = None
        if created or updated:
            run = jobs.job_get(jobs.ROUTE).enqueue(project_id=project.pk, _dedupe_key=f"project:{project.pk}")
        result = ImportResult(
            findings=check.findings,
            created=created,
            updated=updated,
            unchanged=unchanged,
            routing_run_id=run.pk if run else None,
            duplicates=check.duplicates,
            warnings=list(check.warnings),
        )
        if before_commit is not None:
            before_commit(result)
    metrics.FINDINGS_IMPORTED.inc(created)
    logger.info(
        "secret detection report imported",
        extra={
            "project_id": project.pk,
            "findings": result.findings,
            "findings_created": result.created,
            "findings_updated": result.updated,
            "findings_unchanged": result.unchanged,
            "duplicates": result.duplicates,
        },
    )
    return result


def report_import_file(
    *,
    project: Project,
    user: User | None,
    handle: IO[bytes],
    progress: Callable[[str, int, int], None] | None = None,
    before_commit: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Check the report in ``handle`` (a seekable binary file), then import it. An invalid
    report raises ``InvalidReport`` listing its problems, and stores nothing.

    A finding already stored (same identity) is left alone unless its token value
    changed, in which case it is updated and routed again. Importing the same report twice
    therefore changes nothing and starts no job.
    """
    size = _size(handle)
    started = time.monotonic()
    check = report_check(handle=handle, progress=(lambda read: progress("checking", read, size)) if progress else None)
    if not check.valid:
        raise check.error()
    checked = time.monotonic()
    handle.seek(0)

    def timed(result: ImportResult) -> None:
        result.check_seconds = round(checked - started, 3)
        result.write_seconds = round(time.monotonic() - checked, 3)
        if before_commit is not None:
            before_commit(result)

    return _import_checked(
        project=project,
        user=user,
        handle=handle,
        check=check,
        progress=(lambda done, total: progress("importing", done, total)) if progress else None,
        before_commit=timed,
    )


def _size(handle: IO[bytes]) -> int:
    try:
        return os.fstat(handle.fileno()).st_size
    except (OSError, AttributeError, io.UnsupportedOperation):
        position = handle.tell()
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(position)
        return size


def _encode(report: Any) -> bytes:
    try:
        return json.dumps(report).encode()
    except (RecursionError, ValueError, TypeError):
        raise InvalidReport([f"the report is not JSON data, or is nested more than {MAX_DEPTH} levels deep"]) from None


def report_validate(*, report: Any) -> list[str]:
    """Every problem of a report given as parsed JSON (empty when valid), as the import
    would list them."""
    try:
        return report_check(handle=io.BytesIO(_encode(report))).problems
    except InvalidReport as exc:
        return exc.problems


def report_import(*, project: Project, user: User | None, report: Any) -> ImportResult:
    """Import a report given as parsed JSON (tests, the demo): through the same stream
    as an uploaded file."""
    return report_import_file(project=project, user=user, handle=io.BytesIO(_encode(report)))


# --- uploads and the import job ---------------------------------------------------------------


class _MovableFile(File):  # type: ignore[type-arg]  # generic in django-stubs only: File[bytes] fails at run time
    """Lets FileSystemStorage rename the received file into place instead of copying it."""

    def temporary_file_path(self) -> str:
        assert self.file is not None  # made from an open handle
        return self.file.name


def _storage_delete(name: str) -> None:
    if not name:
        return
    try:
        default_storage.delete(name)
    except OSError:
        logger.warning("could not delete a stored report", exc_info=True, extra={"file": name})


class ReportUpload:
    """An upload being received: chunks go straight to a scratch file under MEDIA_ROOT, and
    one byte past ``max_bytes`` refuses it (413). Nothing is held in memory."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        directory = Path(default_storage.path(INCOMING_DIR))
        directory.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(prefix="report-", suffix=".part", dir=directory)
        self.path = Path(name)
        self.handle = os.fdopen(descriptor, "wb")
        self.moved = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ReportTooLarge()
        self.handle.write(chunk)

    def discard(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        if not self.moved:
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def report_upload(*, max_bytes: int | None = None) -> Iterator[ReportUpload]:
    """``with report_upload() as upload: upload.write(chunk) …; report_import_request(…)``;
    the scratch file is removed on the way out unless the import took it."""
    upload = ReportUpload(max_bytes or settings.REPORT_IMPORT_MAX_BYTES)
    try:
        yield upload
    finally:
        upload.discard()


def report_import_request(*, project: Project, user: User | None, upload: ReportUpload) -> ReportImport:
    """Store a received report and queue its import (``secret_detection.import_report``)."""
    upload.handle.close()
    stored = ""
    try:
        with transaction.atomic():
            now = timezone.now()
            record = ReportImport.objects.create(
                project=project, user=user, size=upload.size, created_at=now, updated_at=now
            )
            name = f"{REPORTS_DIR}/{project.pk}/{record.pk}-{secrets.token_hex(16)}.json"
            with upload.path.open("rb") as handle:
                stored = default_storage.save(name, _MovableFile(handle, name=str(upload.path)))
            upload.moved = True
            with contextlib.suppress(NotImplementedError, OSError):
                os.chmod(default_storage.path(stored), 0o600)  # it holds secrets: the owner's alone
            record.file = stored
            record.job_run = jobs.job_get(REPORT_IMPORT_JOB).enqueue(report_import_id=record.pk)
            record.save(update_fields=["file", "job_run"])
    except BaseException:
        _storage_delete(stored)
        raise
    logger.info(
        "secret detection report received",
        extra={"report_import_id": record.pk, "project_id": project.pk, "size": upload.size},
    )
    return record


def _transition(report_import_id: int, *, from_: tuple[str, ...], to: str, **fields: Any) -> bool:
    """One conditional UPDATE. False (and nothing changed) when the import is not in ``from_``."""
    now = timezone.now()
    fields.setdefault("updated_at", now)
    if to in ReportImport.TERMINAL:
        fields.setdefault("finished_at", now)
        fields.setdefault("file", "")
    return bool(ReportImport.objects.filter(pk=report_import_id, status__in=from_).update(status=to, **fields))


def _file_of(report_import_id: int) -> str:
    return ReportImport.objects.filter(pk=report_import_id).values_list("file", flat=True).first() or ""


def report_import_fail(*, report_import_id: int, code: str, message: str, problems: list[str] | None = None) -> bool:
    """queued or running → failed, with the reason; the stored file is deleted."""
    name = _file_of(report_import_id)
    failed = _transition(
        report_import_id,
        from_=ReportImport.ACTIVE,
        to=ReportImport.Status.FAILED,
        error_code=code[:64],
        error_message=message[:4000],
        problems=list(problems or [])[:MAX_PROBLEMS_LISTED],
    )
    if failed:
        transaction.on_commit(lambda: _storage_delete(name), robust=True)
        logger.warning(
            "secret detection report import failed", extra={"report_import_id": report_import_id, "error_code": code}
        )
    return failed


def report_import_run(*, report_import_id: int) -> dict[str, Any]:
    """The import job: claim the import, check and import its stored report, record the
    outcome. Safe to run twice: a finished or failed import is skipped, and a crashed
    attempt wrote nothing (the import is one transaction)."""
    if not _transition(
        report_import_id, from_=ReportImport.ACTIVE, to=ReportImport.Status.RUNNING, started_at=timezone.now()
    ):
        return {"skipped": True}
    record = ReportImport.objects.select_related("project", "user").get(pk=report_import_id)
    name = record.file.name if record.file else ""
    if not name or not default_storage.exists(name):
        report_import_fail(report_import_id=record.pk, code="report_missing", message="The stored report is missing.")
        return {"report_import_id": record.pk, "status": "failed", "error_code": "report_missing"}
    started = time.monotonic()

    def progress(phase: str, done: int, total: int) -> None:
        report_progress(done, total, f"{phase} the report", phase=phase)

    def finish(result: ImportResult) -> None:
        if not _transition(
            record.pk,
            from_=(ReportImport.Status.RUNNING,),
            to=ReportImport.Status.FINISHED,
            findings=result.findings,
            findings_created=result.created,
            findings_updated=result.updated,
            findings_unchanged=result.unchanged,
            duplicates=result.duplicates,
            warnings=result.warnings,
            routing_run_id=result.routing_run_id,
        ):
            raise Conflict(f"report import #{record.pk} is no longer running", code="report_import_changed")
        transaction.on_commit(lambda: _storage_delete(name), robust=True)

    try:
        with default_storage.open(name, "rb") as handle:
            result = report_import_file(
                project=record.project, user=record.user, handle=handle, progress=progress, before_commit=finish
            )
    except InvalidReport as exc:
        report_import_fail(report_import_id=record.pk, code=exc.code, message=str(exc), problems=exc.problems)
        return {"report_import_id": record.pk, "status": "failed", "error_code": exc.code, "problems": exc.total}
    return {
        "report_import_id": record.pk,
        "status": "finished",
        **result.as_dict(),
        "seconds": round(time.monotonic() - started, 3),
        "check_seconds": result.check_seconds,
        "write_seconds": result.write_seconds,
    }


_PUBLIC_FAILURES = {
    "cancelled": "The import was cancelled.",
    "database_unavailable": "The database was unavailable during the import.",
    "worker_lost": "The worker importing the report stopped.",
    "timeout": "The import took longer than its time budget.",
}


def report_import_failed(*, report_import_id: int | None, code: str, message: str, run_id: int | None = None) -> bool:
    """The toolkit gave up on the import's run (retries spent, a lost worker, cancelled, an
    unexpected error). Anything but our own errors may hold internals, so the import gets
    a plain message and the job run keeps the details for the admin."""
    if report_import_id is None:
        return False
    public = _PUBLIC_FAILURES.get(code) or "The import failed with an unexpected error" + (
        f" (job run #{run_id})." if run_id is not None else "."
    )
    return report_import_fail(report_import_id=report_import_id, code=code, message=public)


def report_imports_cleanup() -> dict[str, int]:
    """The cleanup schedule: fail imports whose report waited longer than
    REPORT_IMPORT_FILE_RETENTION (deleting it), delete stored or scratch files no import
    refers to, and prune import records older than REPORT_IMPORT_RETENTION_DAYS."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.REPORT_IMPORT_FILE_RETENTION)
    expired = 0
    stale = ReportImport.objects.filter(status__in=ReportImport.ACTIVE, created_at__lt=cutoff)
    for pk in stale.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            expired += report_import_fail(
                report_import_id=pk,
                code="expired",
                message="The report was not imported in time; it was deleted. Upload it again.",
            )
    pruned = rows_delete_in_batches(
        ReportImport.objects.filter(created_at__lt=now - timedelta(days=settings.REPORT_IMPORT_RETENTION_DAYS)),
        batch_size=1000,
    )
    return {"expired": expired, "orphan_files": _orphans_delete(now), "pruned": pruned}


def _orphans_delete(now: Any) -> int:
    """Scratch files of uploads that never finished, and stored reports whose import ended
    or is gone (a failed deletion, a deleted project), once older than ORPHAN_GRACE."""
    root = Path(default_storage.path(""))
    old = (now - ORPHAN_GRACE).timestamp()
    live = set(
        ReportImport.objects.filter(status__in=ReportImport.ACTIVE).exclude(file="").values_list("file", flat=True)
    )
    deleted = 0
    for folder in (INCOMING_DIR, REPORTS_DIR):
        base = root / folder
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime < old and path.relative_to(root).as_posix() not in live:
                    path.unlink()
                    deleted += 1
    return deleted
