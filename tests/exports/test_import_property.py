"""Property: any project this product can hold survives export → import unchanged.

Random projects (any Unicode, empty and huge descriptions, many labels per issue, notes by
users who were deleted since) are exported and imported through the real jobs (the toolkit's
runner, as a worker runs them), by an administrator so members map back by email; the two
projects must then agree in every modelled field (timestamps at GitLab's millisecond
precision). Bounded to a few dozen examples, so it runs in seconds.
"""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exports import services as exports
from exports.importer import services as imports
from exports.models import ProjectExportArchive
from project.models import AccessLevel, Issue, Label, LabelLink, Note, ProjectMember, User
from project.services import project_create
from tests.exports.conftest import run_attempt
from tests.exports.importing import project_snapshot, run_import_attempt

# PostgreSQL text holds no NUL; lone surrogates are not Unicode text.
TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
HUGE = "Ünïcödé ✓ " * 60_000  # 600 kB: one NDJSON line far above a page, well under the line limit
# Hypothesis takes naive bounds and adds the zone itself.
TIMES = st.datetimes(
    min_value=dt.datetime(2001, 1, 1),  # noqa: DTZ001
    max_value=dt.datetime(2030, 12, 31),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
)
AUTHORS = st.sampled_from(["owner", "maintainer", "developer", "removed", None])

notes = st.lists(
    st.fixed_dictionaries(
        {"note": st.text(TEXT, max_size=200), "system": st.booleans(), "author": AUTHORS, "at": TIMES}
    ),
    max_size=4,
)
issues = st.lists(
    st.fixed_dictionaries(
        {
            "title": st.text(TEXT, max_size=255),
            "description": st.one_of(st.just(""), st.text(TEXT, max_size=300), st.just(HUGE)),
            "state": st.sampled_from(["opened", "closed"]),
            "issue_type": st.sampled_from(list(Issue.Type.values)),
            "confidential": st.booleans(),
            "due_date": st.one_of(st.none(), st.dates(dt.date(2000, 1, 1), dt.date(2040, 1, 1))),
            "discussion_locked": st.one_of(st.none(), st.booleans()),
            "relative_position": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
            "lock_version": st.integers(0, 1000),
            "author": AUTHORS,
            "updated_by": AUTHORS,
            "closed_by": AUTHORS,
            "last_edited_by": AUTHORS,
            "last_edited_at": st.one_of(st.none(), TIMES),
            "created_at": TIMES,
            "closed_at": st.one_of(st.none(), TIMES),
            "labels": st.sets(st.integers(0, 11), max_size=12),
            "notes": notes,
        }
    ),
    max_size=5,
)
projects = st.fixed_dictionaries(
    {
        "description": st.one_of(st.just(""), st.text(TEXT, max_size=500), st.just(HUGE)),
        "labels": st.lists(
            st.tuples(st.text(TEXT, min_size=1, max_size=40), st.text(TEXT, max_size=60), TIMES),
            unique_by=lambda label: label[0],
            max_size=12,
        ),
        "issues": issues,
    }
)

_names = itertools.count()


def _build(spec: dict, people: dict[str, User]) -> object:
    n = next(_names)
    project = project_create(
        namespace_path="prop", path=f"p{n}", name=f"P{n}", owner=people["owner"], description=spec["description"]
    )
    ProjectMember.objects.create(project=project, user=people["maintainer"], access_level=AccessLevel.MAINTAINER)
    ProjectMember.objects.create(project=project, user=people["developer"], access_level=AccessLevel.DEVELOPER)
    removed = User.objects.create_user(f"removed{n}", email=f"removed{n}@example.com")
    who = {**people, "removed": removed, None: None}
    labels = [
        Label.objects.create(project=project, title=title, description=description, created_at=at)
        for title, description, at in spec["labels"]
    ]
    for iid, item in enumerate(spec["issues"], start=1):
        issue = Issue.objects.create(
            project=project,
            iid=iid,
            title=item["title"],
            description=item["description"],
            state=item["state"],
            issue_type=item["issue_type"],
            confidential=item["confidential"],
            due_date=item["due_date"],
            discussion_locked=item["discussion_locked"],
            relative_position=item["relative_position"],
            lock_version=item["lock_version"],
            author=who[item["author"]],
            updated_by=who[item["updated_by"]],
            closed_by=who[item["closed_by"]],
            last_edited_by=who[item["last_edited_by"]],
            last_edited_at=item["last_edited_at"],
            created_at=item["created_at"],
            updated_at=item["created_at"],
            closed_at=item["closed_at"],
        )
        for index in sorted(item["labels"]):
            if index < len(labels):
                LabelLink.objects.create(issue=issue, label=labels[index], created_at=item["created_at"])
        for note in item["notes"]:
            Note.objects.create(
                issue=issue,
                note=note["note"],
                system=note["system"],
                author=who[note["author"]],
                created_at=note["at"],
                updated_at=note["at"],
            )
    removed.delete()  # its issues and notes keep no author: GitLab's ghost user
    return project


@pytest.mark.django_db
def test_any_project_survives_export_and_import(owner, maintainer, developer, admin_user, media_root) -> None:
    people = {"owner": owner, "maintainer": maintainer, "developer": developer}
    seen = {"issues": 0, "notes": 0, "label_links": 0, "huge": 0}

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=True,
    )
    @given(projects)
    def round_trip(spec: dict) -> None:
        source = _build(spec, people)
        export = exports.export_request(project=source, user=admin_user)
        assert run_attempt(export) == "succeeded"
        with ProjectExportArchive.objects.get(project=source, user=admin_user).file.open("rb") as handle:
            data = handle.read()
        job = imports.import_request(
            user=admin_user, file=SimpleUploadedFile("e.tar.gz", data), path=f"copy{source.pk}", namespace="prop"
        )
        assert run_import_attempt(job) == "succeeded"
        job.refresh_from_db()
        assert job.status == "finished", job.error
        assert job.failed_relations == []
        assert project_snapshot(job.project, without_member=admin_user) == project_snapshot(source)
        for key in ("issues", "notes", "label_links"):
            seen[key] += job.counts.get(key, 0)
        seen["huge"] += HUGE in (
            source.description,
            *Issue.objects.filter(project=source).values_list("description", flat=True),
        )

    round_trip()
    # The examples were not all trivial: issues, notes, label links and a huge text went through.
    assert all(seen.values()), seen
