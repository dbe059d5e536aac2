"""Model instances from hand-written SQL, for the few hot paths where one statement must
read several tables (the export status that GitLab clients poll every second).

The ORM builds and compiles a statement on every call, which costs more CPU than
PostgreSQL spends answering it on such small reads; these statements are written once, and
their rows become ordinary model instances (through the fields' converters, as the ORM
does), so the code that uses them does not know the difference. A field left unread is
deferred: touching it loads it with a query of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from django.db import connection, models
from django.db.models import signals
from django.db.models.base import ModelState

M = TypeVar("M", bound=models.Model)
_FROM_DB = models.Model.from_db.__func__  # type: ignore[attr-defined]  # a classmethod's function


def _init_receivers(model: type[models.Model]) -> bool:
    """Whether anything listens to ``model``'s pre_init or post_init (then its instances are
    built through ``__init__``, which sends them)."""
    return signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model)


class Columns:
    """Some fields of ``model`` under a table alias: their SQL, and the instance built from
    their values in a row."""

    def __init__(self, model: type[M], alias: str, names: Iterable[str]) -> None:
        wanted = set(names)
        self.model = model
        # In the model's order: Model.from_db takes the values of a subset in that order.
        self.fields = [field for field in model._meta.concrete_fields if field.name in wanted]
        unknown = wanted - {field.name for field in self.fields}
        if unknown:
            raise LookupError(f"{model.__name__} has no column {', '.join(sorted(unknown))}")
        self.sql = ", ".join(f'{alias}."{field.column}"' for field in self.fields)
        self.attnames = [field.attname for field in self.fields]
        self.width = len(self.fields)
        # Each field's converters, looked up once: asking the field for them on every value
        # was half of building an instance (one backend serves the process).
        self._converters: list[list[Any]] | None = None

    def instance(self, values: Sequence[Any]) -> Any:
        """The instance of these columns' values (None when its primary key is NULL: a LEFT
        JOIN that found nothing)."""
        if values[0] is None and self.fields[0].primary_key:
            return None
        if self._converters is None:
            self._converters = [field.get_db_converters(connection) for field in self.fields]
        converted = []
        for field, converters, value in zip(self.fields, self._converters, values, strict=True):
            for converter in converters:
                value = converter(value, field, connection)
            converted.append(value)
        model = self.model
        if model.from_db.__func__ is not _FROM_DB or _init_receivers(model):  # type: ignore[attr-defined]
            return model.from_db(connection.alias, self.attnames, converted)
        # What Model.from_db makes, without Model.__init__'s walk over every field (a
        # deferred one is simply left out of __dict__) and its two signals, which nothing
        # listens to here: a seventh of a status poll's Python went to building its
        # seven instances (7 µs each, 1 µs this way).
        instance = model.__new__(model)
        state = instance._state = ModelState()
        state.adding, state.db = False, connection.alias
        instance.__dict__.update(zip(self.attnames, converted, strict=True))
        return instance


def split(row: Sequence[Any], *parts: Columns) -> list[Any]:
    """The instances of consecutive column groups in ``row``, then the remaining values."""
    instances, start = [], 0
    for part in parts:
        instances.append(part.instance(row[start : start + part.width]))
        start += part.width
    return [*instances, *row[start:]]
