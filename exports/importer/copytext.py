"""Rows as PostgreSQL's COPY text format, formatted by us and written as one block per
relation and batch.

psycopg's ``write_row`` adapts every value through its dumpers; most of an import's values
are plain strings that need no escaping, and its timestamps are already parsed, so
formatting them here cost about a third of the time (see docs/benchmarks.md). A value
PostgreSQL refuses (a NUL character, say) still fails the batch with a DatabaseError, which
sends it down the writer's row-by-row path as before.
"""

from __future__ import annotations

import re

NULL = "\\N"
_SPECIAL = re.compile(r"[\\\n\r\t]")


def text(value: str) -> str:
    # A regex search runs in C and most values hold nothing to escape; str.replace is many
    # times faster than str.translate on long descriptions.
    if _SPECIAL.search(value) is None:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
