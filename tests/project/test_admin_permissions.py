"""Who may do what in the admin.

Every action declares the permission it needs. For each feature action, four personas:
a superuser and a staff user holding the action's permission can run it; a staff user
with view permissions only sees everything but no button or action, and a crafted POST
(to the list with ``action=`` or to the detail page's ``<pk>/act/<name>/``) is refused
with 403 and changes nothing; a user who is not staff is sent to the login page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from catalog import services as catalog_services
from catalog.models import CatalogResource, SyncEvent
from exports import services as export_services
from exports.models import ProjectExportArchive, ProjectExportJob
from project import services as core
from project.jobs import JobRun
from project.models import AccessToken, Project, User
from secret_detection import services as sd_services
from secret_detection.models import FindingTokenStatus

pytestmark = pytest.mark.django_db


# --- every action declares its permission -------------------------------------------------


def test_every_admin_action_declares_the_permission_it_needs() -> None:
    undeclared, unchecked = [], []
    for model, model_admin in admin.site._registry.items():
        for func, name, _ in model_admin._get_base_actions():
            label = f"{model._meta.label}.{name}"
            permissions = getattr(func, "allowed_permissions", None)
            if not permissions:
                undeclared.append(label)
                continue
            unchecked += [
                f"{label}: has_{p}_permission" for p in permissions if not hasattr(model_admin, f"has_{p}_permission")
            ]
    assert undeclared == [], "actions without @admin.action(permissions=[...])"
    assert unchecked == [], "permissions no has_<name>_permission method checks"


def test_the_check_fails_for_an_action_without_a_permission() -> None:
    """The test above would catch an action added without ``permissions=``."""

    class Careless(admin.ModelAdmin):
        @admin.action(description="Do something")
        def something(self, request, queryset) -> None: ...

        actions = ["something"]

    careless = Careless(CatalogResource, admin.AdminSite())
    declared = {name: getattr(func, "allowed_permissions", None) for func, name, _ in careless._get_base_actions()}
    assert declared["something"] is None


# --- the feature actions ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One feature action: where it is, the permission it needs, how to make a record it
    applies to (returns the record's pk), and whether it was done."""

    model: str  # "app_label_modelname"
    action: str
    permission: str
    setup: Callable[[Project, User], int]
    done: Callable[[int], bool]
    button: bool  # also a button on the record's page

    @property
    def changelist(self) -> str:
        return reverse(f"admin:{self.model}_changelist")

    def change(self, pk: int) -> str:
        return reverse(f"admin:{self.model}_change", args=[pk])

    def act(self, pk: int) -> str:
        return reverse(f"admin:{self.model}_act", args=[pk, self.action])


def _failed_export(project: Project, owner: User) -> int:
    job = export_services.export_request(project=project, user=owner)
    export_services.export_job_fail(export_job_id=job.pk, code="x", error="x")
    return job.pk


def _queued_export(project: Project, owner: User) -> int:
    return export_services.export_request(project=project, user=owner).pk


def _finished_export(project: Project, owner: User) -> int:
    job = export_services.export_request(project=project, user=owner)
    export_services.export_run(export_job_id=job.pk)
    return job.pk


def _archive(project: Project, owner: User) -> int:
    _finished_export(project, owner)
    return ProjectExportArchive.objects.get().pk


_REPORT_SCAN = {
    "scanner": {"id": "gitleaks", "name": "Gitleaks", "vendor": {"name": "GitLab"}, "version": "8.24.0"},
    "analyzer": {"id": "secrets", "name": "secrets", "vendor": {"name": "GitLab"}, "version": "7.3.0"},
    "type": "secret_detection",
    "start_time": "2026-11-20T10:01:02",
    "end_time": "2026-11-20T10:01:09",
    "status": "success",
}


def _leaked_token(project: Project, owner: User) -> int:
    """A finding whose token is one of ours: "Verify now" checks it here and finds it active."""
    _, value = core.access_token_create(user=owner, name="leaked", scopes=["api"])
    report = {
        "version": "15.2.1",
        "scan": _REPORT_SCAN,
        "vulnerabilities": [
            {
                "id": "leak-1",
                "category": "secret_detection",
                "name": "GitLab personal access token",
                "description": "A token.",
                "severity": "Critical",
                "confidence": "Unknown",
                "raw_source_code_extract": value,
                "scanner": {"id": "gitleaks", "name": "Gitleaks"},
                "location": {"file": "app/config.py", "commit": {"sha": "3f2a9c1d5e7b"}, "start_line": 12},
                "identifiers": [{"type": "gitleaks_rule_id", "name": "rule", "value": "gitlab_personal_access_token"}],
            }
        ],
    }
    sd_services.report_import(project=project, user=owner, report=report)
    return FindingTokenStatus.objects.get().pk


def _verified(pk: int) -> bool:
    return FindingTokenStatus.objects.get(pk=pk).status == "active"


def _stale_resource(project: Project, owner: User) -> int:
    resource = catalog_services.catalog_resource_create(project_id=project.pk)
    CatalogResource.objects.filter(pk=resource.pk).update(name="stale")
    return resource.pk


def _pending_event_resource(project: Project, owner: User) -> int:
    resource = catalog_services.catalog_resource_create(project_id=project.pk)
    Project.objects.filter(pk=project.pk).update(name="renamed")  # the trigger records an event
    return resource.pk


def _pending_event(project: Project, owner: User) -> int:
    _pending_event_resource(project, owner)
    return SyncEvent.objects.pending().get().pk


def _processor_queued(pk: int) -> bool:
    return JobRun.objects.filter(name="catalog.process_sync_events").exists()


def _token(project: Project, owner: User) -> int:
    return core.access_token_create(user=owner, name="ci", scopes=["api"])[0].pk


CASES = [
    Case(
        "exports_projectexportjob",
        "retry",
        "exports.control_projectexportjob",
        _failed_export,
        lambda pk: ProjectExportJob.objects.count() == 2,
        button=True,
    ),
    Case(
        "exports_projectexportjob",
        "cancel",
        "exports.control_projectexportjob",
        _queued_export,
        lambda pk: ProjectExportJob.objects.get(pk=pk).status == "failed",
        button=True,
    ),
    Case(
        "exports_projectexportjob",
        "delete_archive",
        "exports.delete_projectexportarchive",
        _finished_export,
        lambda pk: not ProjectExportArchive.objects.exists(),
        button=True,
    ),
    Case(
        "exports_projectexportarchive",
        "delete_archives",
        "exports.delete_projectexportarchive",
        _archive,
        lambda pk: not ProjectExportArchive.objects.exists(),
        button=False,
    ),
    Case(
        "secret_detection_findingtokenstatus",
        "verify_now",
        "secret_detection.verify_finding",
        _leaked_token,
        _verified,
        button=True,
    ),
    Case(
        "secret_detection_finding",
        "verify_now",
        "secret_detection.verify_finding",
        _leaked_token,
        _verified,
        button=True,
    ),
    Case(
        "secret_detection_findingtokenstatus",
        "refresh_now",
        "secret_detection.verify_finding",
        _leaked_token,
        lambda pk: FindingTokenStatus.objects.get(pk=pk).next_refresh_at is not None,
        button=True,
    ),
    Case(
        "catalog_catalogresource",
        "resync_selected",
        "catalog.sync_catalogresource",
        _stale_resource,
        lambda pk: CatalogResource.objects.get(pk=pk).name != "stale",
        button=True,
    ),
    Case(
        "catalog_catalogresource",
        "process_pending_now",
        "catalog.sync_catalogresource",
        _pending_event_resource,
        _processor_queued,
        button=False,
    ),
    Case(
        "catalog_syncevent",
        "process_pending_now",
        "catalog.sync_catalogresource",
        _pending_event,
        _processor_queued,
        button=False,
    ),
    Case(
        "project_accesstoken",
        "revoke",
        "project.revoke_accesstoken",
        _token,
        lambda pk: AccessToken.objects.get(pk=pk).revoked_at is not None,
        button=True,
    ),
]
IDS = [f"{case.model.split('_', 1)[1]}-{case.action}" for case in CASES]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def _permissions(*labels: str):
    query = Permission.objects.none()
    for label in labels:
        app_label, codename = label.split(".")
        query |= Permission.objects.filter(content_type__app_label=app_label, codename=codename)
    return query


def _viewer_permissions():
    return Permission.objects.filter(codename__startswith="view_")


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(admin_user) -> Client:
    return _client(admin_user)


@pytest.fixture
def viewer(django_user_model) -> Client:
    """Staff with every view permission and nothing else."""
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.set(_viewer_permissions())
    return _client(user)


@pytest.fixture
def controller(django_user_model) -> Callable[[str], Client]:
    """``controller(permission)``: staff with every view permission plus that one."""

    def make(permission: str) -> Client:
        user = django_user_model.objects.create_user("operator", password="pw", is_staff=True)
        user.user_permissions.set(_viewer_permissions() | _permissions(permission))
        return _client(user)

    return make


def _action_choices(response) -> list[str]:
    form = response.context.get("action_form")
    return [value for value, _ in form.fields["action"].choices] if form else []


def _buttons(page: str) -> list[str]:
    return re.findall(r'data-action="([a-z_]+)"', page)


def _run(client: Client, case: Case, pk: int, *, via_button: bool):
    if via_button:
        return client.post(case.act(pk))
    return client.post(case.changelist, {"action": case.action, "_selected_action": [pk]})


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_viewer_sees_no_action_and_a_crafted_post_is_refused(case, viewer, project, owner) -> None:
    pk = case.setup(project, owner)

    listing = viewer.get(case.changelist)
    assert listing.status_code == 200
    assert case.action not in _action_choices(listing)
    assert case.action not in _buttons(listing.content.decode())
    detail = viewer.get(case.change(pk))
    assert detail.status_code == 200
    assert _buttons(detail.content.decode()) == []
    assert 'name="_save"' not in detail.content.decode()

    assert viewer.post(case.changelist, {"action": case.action, "_selected_action": [pk]}).status_code == 403
    assert viewer.post(case.act(pk)).status_code == 403
    assert not case.done(pk)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_staff_with_the_actions_permission_can_run_it(case, controller, project, owner) -> None:
    pk = case.setup(project, owner)
    client = controller(case.permission)

    listing = client.get(case.changelist)
    assert case.action in _action_choices(listing)
    buttons = _buttons(client.get(case.change(pk)).content.decode())
    assert (case.action in buttons) is case.button

    response = _run(client, case, pk, via_button=False)
    assert response.status_code == 302
    assert case.done(pk)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_superuser_can_run_it_from_the_list_or_the_records_page(case, superuser, project, owner) -> None:
    pk = case.setup(project, owner)

    response = _run(superuser, case, pk, via_button=case.button)
    assert response.status_code == 302
    assert case.done(pk)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_users_who_are_not_staff_are_sent_to_the_login_page(case, client, project, owner, maintainer) -> None:
    pk = case.setup(project, owner)
    client.force_login(maintainer)
    login = reverse("admin:login")

    for response in (
        client.get(case.changelist),
        client.get(case.change(pk)),
        client.post(case.changelist, {"action": case.action, "_selected_action": [pk]}),
        client.post(case.act(pk)),
    ):
        assert response.status_code == 302
        assert response["Location"].startswith(login)
    assert not case.done(pk)


def test_an_action_permission_of_one_feature_does_not_open_another(controller, project, owner) -> None:
    pk = _stale_resource(project, owner)
    client = controller("exports.control_projectexportjob")

    assert client.post(reverse("admin:catalog_catalogresource_act", args=[pk, "resync_selected"])).status_code == 403
    assert CatalogResource.objects.get(pk=pk).name == "stale"


# --- the pages and views beside the actions -----------------------------------------------


def test_the_process_now_view_and_button_need_the_sync_permission(viewer, controller, project, owner) -> None:
    _pending_event(project, owner)
    process = reverse("admin:catalog_syncevent_process")
    events = reverse("admin:catalog_syncevent_changelist")

    assert "process_pending_now" not in _buttons(viewer.get(events).content.decode())
    assert viewer.post(process).status_code == 403
    assert not _processor_queued(0)

    operator = controller("catalog.sync_catalogresource")
    assert "process_pending_now" in _buttons(operator.get(events).content.decode())
    assert operator.post(process).status_code == 302
    assert _processor_queued(0)


def test_viewers_may_download_archives_but_not_delete_them(viewer, project, owner) -> None:
    pk = _archive(project, owner)
    download = viewer.get(reverse("admin:exports_projectexportarchive_download", args=[pk]))
    assert download.status_code == 200
    assert b"".join(download.streaming_content)
    assert (
        viewer.post(reverse("admin:exports_projectexportarchive_delete", args=[pk]), {"post": "yes"}).status_code == 403
    )
    assert ProjectExportArchive.objects.filter(pk=pk).exists()


def test_staff_without_the_archive_view_permission_cannot_download(django_user_model, project, owner) -> None:
    pk = _archive(project, owner)
    user = django_user_model.objects.create_user("jobs-only", password="pw", is_staff=True)
    user.user_permissions.set(_permissions("exports.view_projectexportjob"))
    response = _client(user).get(reverse("admin:exports_projectexportarchive_download", args=[pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:exports_projectexportarchive_changelist")


def test_viewers_cannot_create_or_change_access_tokens(viewer, project, owner) -> None:
    pk = _token(project, owner)
    add = viewer.post(reverse("admin:project_accesstoken_add"), {"user": owner.pk, "name": "sneaky", "scopes": ["api"]})
    assert add.status_code == 403
    assert not AccessToken.objects.filter(name="sneaky").exists()
    change = viewer.post(reverse("admin:project_accesstoken_change", args=[pk]), {"expires_at": "2031-01-01"})
    assert change.status_code == 403
    assert AccessToken.objects.get(pk=pk).expires_at is None


def test_viewers_cannot_add_or_change_catalog_resources(viewer, project, owner) -> None:
    pk = _stale_resource(project, owner)
    assert viewer.post(reverse("admin:catalog_catalogresource_add"), {"project": project.pk}).status_code == 403
    change = viewer.post(reverse("admin:catalog_catalogresource_change", args=[pk]), {"state": 1})
    assert change.status_code == 403
    assert CatalogResource.objects.get(pk=pk).state == CatalogResource.State.DRAFT


def test_the_sdrs_check_needs_the_change_permission_on_application_settings(viewer) -> None:
    response = viewer.get(reverse("admin:secret_detection_sdrs_check"), follow=True)
    assert [str(m) for m in response.context["messages"]] == ["You may not change the application settings."]
