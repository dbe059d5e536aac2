"""Database chores every feature shares."""

from __future__ import annotations

from django.db.models import QuerySet


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
