"""seed_demo and create_access_token."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from project import services
from project.models import AccessLevel, AccessToken, Issue, Label, Note, Project, ProjectMember

pytestmark = pytest.mark.django_db


def test_seed_demo_creates_projects_with_members_in_every_role_and_is_idempotent() -> None:
    call_command("seed_demo", projects=2, issues=4, notes=2, stdout=StringIO())
    projects = Project.objects.filter(namespace_path="demo")
    assert projects.count() == 2
    project = projects.first()
    levels = set(ProjectMember.objects.filter(project=project).values_list("access_level", flat=True))
    assert levels == {level.value for level in AccessLevel}
    assert Label.objects.filter(project=project).count() == 5
    assert Issue.objects.filter(project=project).count() == 4
    assert Note.objects.filter(issue__project=project).count() == 8
    assert Issue.labels.through.objects.filter(issue__project=project).count() == 8
    counts = (Project.objects.count(), Issue.objects.count(), Note.objects.count(), Label.objects.count())
    call_command("seed_demo", projects=2, issues=4, notes=2, stdout=StringIO())
    assert (Project.objects.count(), Issue.objects.count(), Note.objects.count(), Label.objects.count()) == counts
    call_command("seed_demo", projects=2, issues=6, notes=2, stdout=StringIO())
    assert Issue.objects.filter(project=project).count() == 6


def test_seed_demo_refuses_negative_counts() -> None:
    with pytest.raises(CommandError, match="--issues must be 0 or more"):
        call_command("seed_demo", issues=-1)


def test_create_access_token_prints_the_token_last_and_nothing_else_secret(owner) -> None:
    out, err = StringIO(), StringIO()
    call_command("create_access_token", "owner", scopes="api,read_api", expires_days=7, stdout=out, stderr=err)
    lines = out.getvalue().strip().splitlines()
    value = lines[-1]
    token = services.access_token_authenticate(value=value)
    assert token.user == owner
    assert sorted(token.scopes) == ["api", "read_api"]
    assert token.expires_at is not None
    assert value not in err.getvalue()
    assert AccessToken.objects.count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody"], "no active user named 'nobody'"),
        (["owner", "--scopes", "sudo"], "unknown: sudo"),
        (["owner", "--expires-days", "0"], "--expires-days must be at least 1"),
    ],
)
def test_create_access_token_rejects_bad_input(owner, args, message) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("create_access_token", *args)
    assert not AccessToken.objects.exists()
