"""The import jobs' admin pages and action, and ``manage.py import_project``."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from exports.importer import services
from exports.models import ProjectImportJob
from project.models import Issue
from tests.exports.importing import minimal_archive, run_import_attempt, upload

ISSUES = [{"iid": 1, "title": "One"}, {"iid": 2, "title": "x" * 300}]


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def test_admin_lists_imports_with_status_counts_and_failures(staff, owner) -> None:
    job = services.import_request(user=owner, file=upload(minimal_archive(issues=ISSUES)), path="imp")
    run_import_attempt(job)
    page = staff.get(reverse("admin:exports_projectimportjob_changelist")).content.decode()
    assert "owner/imp" in page
    assert "finished" in page
    assert "1 issues" in page
    detail = staff.get(reverse("admin:exports_projectimportjob_change", args=[job.pk])).content.decode()
    assert "DataError" in detail  # the failed relation
    assert reverse("admin:project_project_change", args=[job.project_id]) in detail
    # Times to the second, as the other admins show them.
    job.refresh_from_db()
    assert job.created_at.strftime("%H:%M:%S") in detail


def test_admin_cancel_fails_a_scheduled_import(staff, owner) -> None:
    job = services.import_request(user=owner, file=upload(minimal_archive()), path="imp")
    response = staff.post(
        reverse("admin:exports_projectimportjob_changelist"),
        {"action": "cancel", "_selected_action": [job.pk]},
        follow=True,
    )
    assert response.status_code == 200
    job.refresh_from_db()
    run_import_attempt(job)  # the cancelled run does not import
    job.refresh_from_db()
    assert job.status == "failed"
    assert not Issue.objects.filter(project=job.project).exists()


def test_the_cancel_action_declares_its_permission(client, owner, django_user_model) -> None:
    staff_only = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    from django.contrib.auth.models import Permission

    staff_only.user_permissions.add(Permission.objects.get(codename="view_projectimportjob"))
    client.force_login(staff_only)
    job = services.import_request(user=owner, file=upload(minimal_archive()), path="imp")
    response = client.post(
        reverse("admin:exports_projectimportjob_changelist"), {"action": "cancel", "_selected_action": [job.pk]}
    )
    assert response.status_code == 403
    job.refresh_from_db()
    assert job.status == "scheduled"


def test_command_schedules_an_import(owner, tmp_path) -> None:
    source = tmp_path / "e.tar.gz"
    source.write_bytes(minimal_archive(issues=ISSUES[:1]))
    out = StringIO()
    call_command("import_project", str(source), "--path", "owner/cli", "--user", "owner", stdout=out)
    job = ProjectImportJob.objects.get()
    assert f"Scheduled import #{job.pk} into owner/cli" in out.getvalue()
    assert run_import_attempt(job) == "succeeded"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.tar.gz", "--path", "owner/x", "--user", "owner"], "is not a file"),
        (["{file}", "--path", "nonamespace", "--user", "owner"], "--path must be NAMESPACE/NAME"),
        (["{file}", "--path", "owner/x", "--user", "nobody"], "no active user named 'nobody'"),
        (["{file}", "--path", "acme/x", "--user", "owner"], "404 Namespace Not Found"),
    ],
)
def test_command_refuses_bad_input(owner, tmp_path, args, message) -> None:
    source = tmp_path / "e.tar.gz"
    source.write_bytes(minimal_archive())
    with pytest.raises(CommandError, match=message):
        call_command("import_project", *[arg.format(file=source) for arg in args])


def test_command_wait_reports_a_failed_import(owner, tmp_path, monkeypatch) -> None:
    from exports.management.commands import import_project

    source = tmp_path / "e.tar.gz"
    source.write_bytes(minimal_archive(version="0.1.0"))

    def run_here(self, job, timeout):
        run_import_attempt(job)
        return ProjectImportJob.objects.get(pk=job.pk)

    monkeypatch.setattr(import_project.Command, "_follow", run_here)
    with pytest.raises(CommandError, match=re.escape("Import version mismatch: Required 0.2.4 but was 0.1.0")):
        call_command("import_project", str(source), "--path", "owner/x", "--user", "owner", "--wait")


def test_the_job_console_shows_import_runs_and_the_import_backlog(staff, owner) -> None:
    services.import_request(user=owner, file=upload(minimal_archive()), path="imp")
    page = staff.get("/admin/jobs/").content.decode()
    assert 'data-job="exports.import"' in page
    assert "Imports scheduled" in page
