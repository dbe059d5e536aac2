"""Database chores every feature shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Model, QuerySet


def prepared_cursor(connection: Any = None) -> CursorWrapper:
    """A cursor that prepares its statements once per connection (``project.postgresql``),
    for a statement written once and run on a hot path; a plain cursor on another backend
    or with ``DB_PREPARED_STATEMENTS=0``."""
    connection = connection if connection is not None else transaction.get_connection()
    make = getattr(connection, "prepared_cursor", None)
    return make() if make is not None else connection.cursor()


def rows_delete_in_batches(queryset: QuerySet, *, batch_size: int) -> int:
    """Delete the queryset's rows ``batch_size`` at a time, oldest id first, so that no
    statement holds its locks for long (GitLab's pruning workers do the same). Returns how
    many rows of the queryset's model were deleted."""
    model = queryset.model
    deleted = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return deleted
        _, per_model = model._default_manager.filter(pk__in=ids).delete()
        deleted += per_model.get(model._meta.label, 0)


def rows_insert_like(template: Model, varying: Mapping[str, Sequence[Any]]) -> list[Any]:
    """Insert one row per position of the ``varying`` columns' values (field name → the
    values, as the database takes them: a JSON column's as JSON text), every other column
    taken from ``template`` and prepared once. Returns the new rows' primary keys, in order.

    One statement for many rows that differ in a few columns: ``bulk_create`` prepared
    every column of every row, most of the time of a large import's statuses and of
    routing's runs."""
    meta = template._meta
    connection = transaction.get_connection()
    changing = [field for field in meta.concrete_fields if field.name in varying]
    if len(changing) != len(varying):
        raise LookupError(f"{meta.label} has no column among {sorted(varying)}")
    # The values in the fields' order, as ``changing`` is.
    ordered = [list(varying[field.name]) for field in changing]
    constant = [field for field in meta.concrete_fields if field not in changing and not field.primary_key]
    values = [field.get_db_prep_save(getattr(template, field.attname), connection) for field in constant]
    quote = connection.ops.quote_name
    names = [f"v{index}" for index in range(len(changing))]
    columns = ", ".join(quote(field.column) for field in [*constant, *changing])
    # Typed, as a SELECT's parameters do not take their column's type.
    typed = ", ".join([*(f"%s::{field.cast_db_type(connection)}" for field in constant), *(f"v.{n}" for n in names)])
    arrays = ", ".join(f"%s::{field.cast_db_type(connection)}[]" for field in changing)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({columns}) SELECT {typed}"
        f" FROM unnest({arrays}) WITH ORDINALITY AS v({', '.join(names)}, n)"
        f" ORDER BY v.n RETURNING {quote(meta.pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, *ordered])
        return [pk for (pk,) in cursor.fetchall()]
