"""Filters of the job console's templates."""

from __future__ import annotations

import datetime as dt

from django import template

from project import admin_tools

register = template.Library()


@register.filter
def when(value: dt.datetime | None) -> str:
    return admin_tools.when(value)


@register.filter
def seconds(value: float | None) -> str:
    return "-" if value is None else admin_tools.seconds_text(value)


@register.filter
def clipped(value: object, length: int = 60) -> str:
    return admin_tools.clipped(str(value) if value is not None else "", length)
