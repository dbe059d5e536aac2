"""``project.db.rows_insert_like``: many rows in one INSERT, differing in a few columns."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from project.db import rows_insert_like
from project.jobs.models import JobRun

pytestmark = pytest.mark.django_db


def test_rows_take_their_own_values_in_order_and_the_template_for_the_rest() -> None:
    template = JobRun(name="probe.ok", max_attempts=3, request_id="req-1", queue="q")
    later = timezone.now() + timezone.timedelta(seconds=60)

    pks = rows_insert_like(
        template,
        {"kwargs": [json.dumps({"key": str(n)}) for n in range(3)], "target_id": [7, None, 9], "due_at": [later] * 3},
    )

    rows = JobRun.objects.in_bulk(pks)
    assert [rows[pk].kwargs for pk in pks] == [{"key": "0"}, {"key": "1"}, {"key": "2"}]
    assert [rows[pk].target_id for pk in pks] == [7, None, 9]
    assert {(row.name, row.max_attempts, row.request_id, row.queue, row.due_at) for row in rows.values()} == {
        ("probe.ok", 3, "req-1", "q", later)
    }
    assert pks == sorted(pks)


def test_a_column_the_model_lacks_is_refused() -> None:
    with pytest.raises(LookupError, match="no column"):
        rows_insert_like(JobRun(name="probe.ok"), {"no_such_column": [1]})
    assert not JobRun.objects.exists()
