"""Log formatting: JSON lines in production, readable text in development.

Both formats include the correlation context (see ``project.context``), so any log line
can be traced to the request and the job attempt that produced it.

Nothing secret is written: ``RedactFilter`` (on the console handler, so every logger
passes it, and on the loggers that quote request URLs, so that Django's own handlers see
the masked record too) cuts the query string of any URL or request path, and token
formats, from the message and from every extra; the formatters do the same to
tracebacks. A signed upload URL (``upload[url]`` in a query string) or an admin search
term (``?q=``) thus never reaches a log line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from project import context
from project.redact import redact

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "ctx"}
# json.dumps(..., default=str) builds an encoder on every call, a fifth of what it costs.
_JSON = json.JSONEncoder(default=str)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.ctx = context.current()
        return True


class TaskLinesFilter(logging.Filter):
    """Drops django-q2's two INFO lines per message: the worker's "<process> processing
    <task> '<function>'" and the monitor's "Processed '<function>' (<task>)". Each run
    writes its own line when its attempt ends, with its context (``job attempt
    succeeded``), and django-q2's two said the same thing again, for 0.06 to 0.2 ms of a
    worker's CPU per message of one run (docs/benchmarks-history.md, session 6). Its other
    lines (start, stop, failures) are kept. On the
    ``django-q`` logger unless ``LOG_DJANGO_Q_TASKS`` is set. Written against django-q2
    1.11.x: tests/jobs/test_djangoq_adapter.py pins both lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        if record.module == "worker":
            return " processing " not in record.getMessage()
        if record.module == "monitor":
            return not record.getMessage().startswith("Processed ")
        return True


_PLAIN = (int, float, bool, type(None))


class RedactFilter(logging.Filter):
    """Masks URL query strings and token formats (``project.redact``) in the record: its
    message and its extras. An extra that is not a plain value is written through its
    ``str()`` (django.request's ``request`` shows as ``<WSGIRequest: GET '/path?query'>``),
    so it is replaced by its masked text. The record is changed only where something was
    masked; masking twice changes nothing more (a logger's filter and then the handler's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        ctx = getattr(record, "ctx", None)
        if ctx:
            record.ctx = _masked_context(ctx)
        # Only the extras: the record's own attributes are set by logging (a set
        # difference, not a test per attribute, as this runs for every line).
        for key in record.__dict__.keys() - _RESERVED:
            value = record.__dict__[key]
            if key.startswith("_") or isinstance(value, _PLAIN):
                continue
            if isinstance(value, str):
                masked = redact(value)
                if masked != value:
                    setattr(record, key, masked)
            elif not isinstance(value, dict | list | tuple):
                text = str(value)
                masked = redact(text)
                if masked != text:
                    setattr(record, key, masked)
            else:
                text = _JSON.encode(value)
                masked = redact(text)
                if masked != text:
                    setattr(record, key, masked)
        return True


def _masked_context(ctx: dict) -> dict:
    """The context with its text values masked; the same dict when none needs it (one
    search over all of them: a job's context is ids and names)."""
    joined = "\n".join(value for value in ctx.values() if isinstance(value, str))
    if redact(joined) == joined:
        return ctx
    return {key: redact(value) if isinstance(value, str) else value for key, value in ctx.items()}


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    # A traceback quotes exception messages, which may quote a URL.
    assert record.exc_info is not None  # the callers check it
    return redact(formatter.formatException(record.exc_info))


def _extras(record: logging.LogRecord) -> dict:
    values = dict(getattr(record, "ctx", None) or context.current())
    attributes = record.__dict__
    # In the record's order (a set difference has none): the lines read the same each time.
    for key in attributes:
        if key not in _RESERVED and not key.startswith("_"):
            values[key] = attributes[key]
    return values


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            payload["exception"] = _exception(self, record)
        return _JSON.encode(payload)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line = f"{line}  [{extras}]"
        if record.exc_info:
            line = f"{line}\n{_exception(self, record)}"
        return line
