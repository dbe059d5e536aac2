"""Reading the archive's JSON with a bound on each line, so one huge line cannot take the
worker's memory, and with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from exports.importer.errors import ImportArchiveInvalid


def _too_long(name: str, number: int, limit: int) -> ImportArchiveInvalid:
    return ImportArchiveInvalid(f"{name} line {number} is longer than {limit} bytes.")


def lines(path: Path, *, name: str, limit: int) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of the non-blank lines, each at most ``limit`` bytes."""
    with open(path, "rb") as handle:
        number = 0
        while True:
            line = handle.readline(limit + 1)
            if not line:
                return
            number += 1
            if len(line) > limit and not (len(line) == limit + 1 and line.endswith(b"\n")):
                raise _too_long(name, number, limit)
            if line.strip():
                yield number, line


def _loads(line: bytes, *, name: str, number: int) -> Any:
    try:
        # orjson parses a line about five times as fast as json; what only json reads (NaN,
        # integers past 64 bits) goes to json, so the import accepts the archives it did.
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except ValueError as exc:
        raise ImportArchiveInvalid(f"{name} line {number} is not valid JSON ({exc}).") from None


def objects(path: Path, *, name: str, limit: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of an NDJSON file; a line that is not a JSON object refuses
    the import (the archive is corrupt, and half of a relation must not be imported)."""
    for number, line in lines(path, name=name, limit=limit):
        value = _loads(line, name=name, number=number)
        if not isinstance(value, dict):
            raise ImportArchiveInvalid(f"{name} line {number} is not a JSON object.")
        yield number, value


def document(path: Path, *, name: str, limit: int) -> dict[str, Any]:
    """A whole JSON file (project.json, which GitLab pretty-prints) of at most ``limit`` bytes."""
    if path.stat().st_size > limit:
        raise ImportArchiveInvalid(f"{name} is larger than {limit} bytes.")
    try:
        value = json.loads(path.read_bytes())
    except ValueError as exc:
        raise ImportArchiveInvalid(f"{name} is not valid JSON ({exc}).") from None
    if not isinstance(value, dict):
        raise ImportArchiveInvalid(f"{name} is not a JSON object.")
    return value
