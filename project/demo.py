"""Demo data: a user ``demo`` who owns projects full of labels, members, issues and notes.

Idempotent: running it again creates only what is missing. Other apps add their own demo
data through a ``demo`` module with ``seed(*, projects, stdout)`` (for example catalog
resources), called after the projects exist.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from datetime import timedelta

from django.apps import apps
from django.db import transaction
from django.utils import timezone

from project import services
from project.models import AccessLevel, Issue, Label, LabelLink, Note, Project, ProjectMember, User, Visibility

LABELS = [("bug", "#d9534f"), ("feature", "#5cb85c"), ("docs", "#428bca"), ("security", "#8e44ad"), ("ux", "#f0ad4e")]
ROLES = [AccessLevel.GUEST, AccessLevel.REPORTER, AccessLevel.DEVELOPER, AccessLevel.MAINTAINER]
VISIBILITIES = [Visibility.PRIVATE, Visibility.INTERNAL, Visibility.PUBLIC]
BATCH = 5000


def _user(username: str) -> User:
    user, created = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def _project(index: int, owner: User, members: dict[AccessLevel, User]) -> Project:
    project = Project.objects.filter(namespace_path="demo", path=f"project-{index}").first()
    if project is None:
        project = services.project_create(
            namespace_path="demo",
            path=f"project-{index}",
            name=f"Demo project {index}",
            owner=owner,
            description=f"Demo project number {index}: issues, labels and notes to export.",
            visibility_level=VISIBILITIES[index % len(VISIBILITIES)],
        )
    for level, user in members.items():
        ProjectMember.objects.get_or_create(project=project, user=user, defaults={"access_level": level})
    for title, color in LABELS:
        Label.objects.get_or_create(project=project, title=title, defaults={"color": color})
    return project


def _issues(project: Project, count: int, notes_per_issue: int, authors: list[User], rng: random.Random) -> int:
    existing = set(Issue.objects.filter(project=project).values_list("iid", flat=True))
    missing = [iid for iid in range(1, count + 1) if iid not in existing]
    labels = list(Label.objects.filter(project=project))
    base = timezone.now() - timedelta(days=90)
    for start in range(0, len(missing), BATCH):
        chunk = missing[start : start + BATCH]
        issues = Issue.objects.bulk_create(
            [
                Issue(
                    project=project,
                    iid=iid,
                    title=f"Issue {iid}: {rng.choice(['crash', 'typo', 'slow page', 'new button', 'login'])}",
                    description=f"Steps to reproduce issue {iid}.\n\n" + "Lorem ipsum dolor sit amet. " * 4,
                    state=Issue.State.CLOSED if iid % 5 == 0 else Issue.State.OPENED,
                    author=rng.choice(authors),
                    created_at=base + timedelta(minutes=iid),
                    updated_at=base + timedelta(minutes=iid + 5),
                )
                for iid in chunk
            ]
        )
        links = [
            LabelLink(issue_id=issue.pk, label_id=label.pk)
            for issue in issues
            for label in rng.sample(labels, k=min(2, len(labels)))
        ]
        LabelLink.objects.bulk_create(links, batch_size=BATCH)
        Note.objects.bulk_create(
            [
                Note(
                    issue=issue,
                    author=rng.choice(authors),
                    note=f"Comment {n} on #{issue.iid}: looks reproducible.",
                    created_at=issue.created_at + timedelta(hours=n + 1),
                    updated_at=issue.created_at + timedelta(hours=n + 1),
                )
                for issue in issues
                for n in range(notes_per_issue)
            ],
            batch_size=BATCH,
        )
    return len(missing)


def demo_seed(
    *, projects: int = 5, issues: int = 20, notes_per_issue: int = 3, log: Callable[[str], None] = lambda _: None
) -> list[Project]:
    rng = random.Random(42)  # noqa: S311 - demo data, not security
    with transaction.atomic():
        owner = _user("demo")
        members = {level: _user(f"demo-{AccessLevel(level).label.lower()}") for level in ROLES}
        seeded = [_project(index, owner, members) for index in range(1, projects + 1)]
    authors = [owner, *members.values()]
    for project in seeded:
        with transaction.atomic():
            added = _issues(project, issues, notes_per_issue, authors, rng)
        log(f"{project.path_with_namespace}: {added} issue(s) added")
    for config in apps.get_app_configs():
        try:
            module = importlib.import_module(f"{config.name}.demo")
        except ModuleNotFoundError as exc:
            if exc.name != f"{config.name}.demo":
                raise
            continue
        if module.__name__ != __name__ and hasattr(module, "seed"):
            module.seed(projects=seeded, stdout=log)
    return seeded
