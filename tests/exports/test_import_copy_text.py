"""The import writes its rows as COPY text it formats itself: values that need escaping, the
timestamp forms an archive may hold, and a value PostgreSQL refuses."""

from __future__ import annotations

import datetime as dt

from django.core.files.uploadedfile import SimpleUploadedFile

from exports.importer import services
from project.models import Issue, Note
from tests.exports.importing import minimal_archive, run_import_attempt

TRICKY = "tab\there, back\\slash \\N, new\nline, carriage\r\nreturn, trailing backslash\\"


def _import(user, issues: list[dict]):
    job = services.import_request(
        user=user, file=SimpleUploadedFile("a.tar.gz", minimal_archive(issues=issues)), path="copy-text"
    )
    assert run_import_attempt(job) == "succeeded"
    job.refresh_from_db()
    return job


def _issue(iid: int, **fields) -> dict:
    return {"iid": iid, "title": f"Issue {iid}", "state": "opened", "notes": [], "label_links": [], **fields}


def test_text_that_needs_escaping_arrives_unchanged(owner) -> None:
    note = {"note": TRICKY, "author_id": None, "created_at": "2020-01-02T03:04:05.678Z", "system": False}
    job = _import(owner, [_issue(1, title=TRICKY, description=TRICKY, notes=[note])])
    issue = Issue.objects.get(project=job.project)
    assert (issue.title, issue.description) == (TRICKY, TRICKY)
    assert Note.objects.get(issue=issue).note == TRICKY


def test_timestamps_in_every_form_are_stored_at_the_same_instant(owner) -> None:
    utc = dt.UTC
    forms = {
        1: ("2020-01-02T03:04:05.678Z", dt.datetime(2020, 1, 2, 3, 4, 5, 678000, tzinfo=utc)),
        2: ("2020-01-02T05:04:05+02:00", dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=utc)),
        3: ("2020-01-02 03:04:05", dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=utc)),  # naive: UTC
        4: ("2020-01-02T03:04:05.123456789Z", dt.datetime(2020, 1, 2, 3, 4, 5, 123456, tzinfo=utc)),
        5: ("20200102T030405Z", dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=utc)),
    }
    job = _import(owner, [_issue(iid, created_at=text, closed_at=text) for iid, (text, _) in forms.items()])
    stored = {issue.iid: (issue.created_at, issue.closed_at) for issue in Issue.objects.filter(project=job.project)}
    assert stored == {iid: (when, when) for iid, (_, when) in forms.items()}


def test_a_value_postgresql_refuses_fails_only_its_issue(owner) -> None:
    bad_note = {"note": "nul \x00 inside", "author_id": None, "system": False}
    job = _import(owner, [_issue(1), _issue(2, notes=[bad_note]), _issue(3, notes=[{"note": "fine"}])])
    assert sorted(Issue.objects.filter(project=job.project).values_list("iid", flat=True)) == [1, 3]
    (failed,) = job.failed_relations
    assert (failed["relation_name"], failed["line_number"]) == ("issues", 1)
    assert job.counts["notes"] == 1
