"""Correlation context carried by every log line: request id, job, attempt and object ids.

The values live in a context variable, so they follow a request through the view, into the
job it enqueues (the id is stored with the job) and into the worker that runs it.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import uuid
from collections.abc import Iterator
from typing import Any

# The default is never mutated: bind() always sets a new dict.
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context", default={})  # noqa: B039

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def current() -> dict[str, Any]:
    return _context.get()


def request_id() -> str | None:
    return _context.get().get("request_id")


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | None) -> str:
    """The caller's X-Request-ID if it is safe to log and echo, otherwise a fresh one."""
    if value and _REQUEST_ID_RE.match(value):
        return value
    return new_request_id()


@contextlib.contextmanager
def bind(**values: Any) -> Iterator[dict[str, Any]]:
    """Add values to the context for the duration of the block (None values are dropped)."""
    merged = {**_context.get(), **{k: v for k, v in values.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)
