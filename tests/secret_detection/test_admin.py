"""The admin: masked findings with filters, status actions, the partner registry and
the SDRS "check connection" button."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from project import services as core
from project.jobs import JobRun
from project.models import ApplicationSetting
from secret_detection import services
from secret_detection.models import Finding, FindingTokenStatus, PartnerTokenType
from tests.support.sdrs import keypair

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def imported(project, developer, sample_report):
    services.report_import(project=project, user=developer, report=sample_report)
    return sample_report


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_findings_list_and_page_show_fingerprints_never_tokens(admin_client, imported):
    listing = admin_client.get(reverse("admin:secret_detection_finding_changelist"))
    finding = Finding.objects.get(token_type="GitHub Personal Access Token")
    page = admin_client.get(reverse("admin:secret_detection_finding_change", args=[finding.pk]))
    statuses = admin_client.get(reverse("admin:secret_detection_findingtokenstatus_changelist"))
    for response in (listing, page, statuses):
        assert response.status_code == 200
        html = response.content.decode()
        for vuln in imported["vulnerabilities"]:
            assert vuln["raw_source_code_extract"] not in html
    assert finding.value_fingerprint in listing.content.decode()
    assert finding.value_fingerprint in page.content.decode()


def test_findings_filter_by_status_type_and_project(admin_client, imported, project):
    finding = Finding.objects.get(token_type="Postman API token")
    FindingTokenStatus.objects.filter(pk=finding.pk).update(status="active")
    url = reverse("admin:secret_detection_finding_changelist")

    by_status = admin_client.get(url, {"status": "active"})
    assert [f.pk for f in by_status.context["cl"].result_list] == [finding.pk]
    by_type = admin_client.get(url, {"token_type": "AWS"})
    assert {f.token_type for f in by_type.context["cl"].result_list} == {"AWS"}
    assert len(by_type.context["cl"].result_list) == 2
    by_project = admin_client.get(url, {"project__id__exact": project.pk})
    assert len(by_project.context["cl"].result_list) == 8
    statuses = admin_client.get(
        reverse("admin:secret_detection_findingtokenstatus_changelist"), {"finding__token_type": "AWS"}
    )
    assert len(statuses.context["cl"].result_list) == 2


def test_verify_now_sends_partner_tokens_and_checks_ours(
    admin_client, admin_user, project, import_findings, sdrs_settings
):
    sdrs_settings()
    _, value = core.access_token_create(user=admin_user, name="leaked", scopes=["api"])
    findings = import_findings(
        project, [("AWS", "AKIA1"), ("gitlab_personal_access_token", value), ("Password in URL", "https://a:b@c")]
    )
    response = admin_client.post(
        reverse("admin:secret_detection_findingtokenstatus_changelist"),
        {"action": "verify_now", "_selected_action": [f.pk for f in findings]},
        follow=True,
    )
    (message,) = _messages(response)
    assert message == (
        "Verify now: 1 sent for partner verification; 1 checked against our tokens; 1 not verifiable (no verifier)."
    )
    (run,) = JobRun.objects.filter(name="secret_detection.verify_partner_token")
    assert run.kwargs == {"finding_id": findings[0].pk, "user_id": admin_user.pk, "force": True}
    assert FindingTokenStatus.objects.get(pk=findings[1].pk).status == "active"


def test_refresh_now_makes_statuses_due_and_starts_a_tick(admin_client, imported):
    ids = list(FindingTokenStatus.objects.values_list("pk", flat=True))
    response = admin_client.post(
        reverse("admin:secret_detection_findingtokenstatus_changelist"),
        {"action": "refresh_now", "_selected_action": ids},
        follow=True,
    )
    assert _messages(response) == ["8 status(es) are due now; a refresh tick was started."]
    assert JobRun.objects.filter(name="secret_detection.refresh_token_statuses").count() == 1


def _switch_form(formset, off: PartnerTokenType) -> dict:
    data = {
        "form-TOTAL_FORMS": str(len(formset.forms)),
        "form-INITIAL_FORMS": str(len(formset.forms)),
        "_save": "Save",
    }
    for index, form in enumerate(formset.forms):
        data[f"form-{index}-id"] = str(form.instance.pk)
        data[f"form-{index}-verifier"] = form.instance.verifier
        if form.instance.pk != off.pk:
            data[f"form-{index}-enabled"] = "on"
    return data


def test_partner_types_can_be_switched_off_in_the_list_and_who_did_is_recorded(admin_client):
    aws = PartnerTokenType.objects.get(token_type="AWS")
    listing = admin_client.get(reverse("admin:secret_detection_partnertokentype_changelist"))
    assert listing.status_code == 200
    admin_client.post(
        reverse("admin:secret_detection_partnertokentype_changelist"), _switch_form(listing.context["cl"].formset, aws)
    )
    aws.refresh_from_db()
    assert (aws.enabled, aws.updated_by) == (False, "admin")
    assert PartnerTokenType.objects.filter(enabled=True).count() == PartnerTokenType.objects.count() - 1
    assert set(PartnerTokenType.objects.exclude(pk=aws.pk).values_list("updated_by", flat=True)) == {""}
    page = admin_client.get(reverse("admin:secret_detection_partnertokentype_changelist")).content.decode()
    assert 'class="field-updated_by">admin</td>' in page


def test_viewers_cannot_switch_partner_types(admin_client, client, django_user_model):
    from django.contrib.auth.models import Permission

    aws = PartnerTokenType.objects.get(token_type="AWS")
    formset = admin_client.get(reverse("admin:secret_detection_partnertokentype_changelist")).context["cl"].formset
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_partnertokentype"))
    client.force_login(viewer)
    listing = client.get(reverse("admin:secret_detection_partnertokentype_changelist"))
    assert listing.context["cl"].formset is None  # no switches
    response = client.post(reverse("admin:secret_detection_partnertokentype_changelist"), _switch_form(formset, aws))
    assert response.status_code == 403
    aws.refresh_from_db()
    assert aws.enabled is True


def test_findings_and_statuses_have_readable_names(imported, project):
    finding = Finding.objects.select_related("project").get(token_type="Postman API token")
    assert str(finding) == f"Postman API token in {finding.location} (acme/widgets)"
    assert str(FindingTokenStatus.objects.select_related("finding__project").get(pk=finding.pk)) == str(finding)


def test_a_finding_page_links_to_its_status_and_verification_runs_and_has_a_verify_button(
    admin_client, admin_user, project, import_findings, sdrs_settings
):
    sdrs_settings()
    (finding,) = import_findings(project, [("AWS", "AKIA1")])
    page = admin_client.get(reverse("admin:secret_detection_finding_change", args=[finding.pk])).content.decode()
    assert f"AWS in {finding.location} (acme/widgets)" in page  # the title
    assert reverse("admin:secret_detection_findingtokenstatus_change", args=[finding.pk]) in page
    assert 'data-action="verify_now"' in page
    assert 'name="_save"' not in page

    response = admin_client.post(
        reverse("admin:secret_detection_finding_act", args=[finding.pk, "verify_now"]), follow=True
    )
    assert _messages(response) == ["Verify now: 1 sent for partner verification."]
    (run,) = JobRun.objects.filter(name="secret_detection.verify_partner_token")
    assert run.target_id == finding.pk  # the run links back to the finding's status
    runs = (
        reverse("admin:jobs_jobrun_changelist")
        + f"?job=secret_detection.verify_partner_token&amp;kind=all&amp;target_id={finding.pk}"
    )
    assert f'<a href="{runs}">1 verification run(s)</a>' in response.content.decode()


def test_a_token_status_page_has_verify_and_refresh_buttons_and_links_to_runs(admin_client, imported):
    status = FindingTokenStatus.objects.filter(status="unknown").first()
    url = reverse("admin:secret_detection_findingtokenstatus_change", args=[status.pk])
    page = admin_client.get(url).content.decode()
    assert re.findall(r'data-action="([a-z_]+)"', page) == ["verify_now", "refresh_now"]
    assert "?job=secret_detection.verify_partner_token&amp;kind=all&amp;target_id=" in page
    assert reverse("admin:secret_detection_finding_change", args=[status.pk]) in page
    assert 'name="_save"' not in page

    FindingTokenStatus.objects.filter(pk=status.pk).update(status="pending")
    pending = admin_client.get(url).content.decode()
    assert re.findall(r'data-action="([a-z_]+)"', pending) == ["verify_now"]  # a pending status waits


def test_the_status_list_shows_times_relative_with_the_exact_time_on_hover(admin_client, imported):
    now = timezone.now()
    FindingTokenStatus.objects.update(
        last_verified_at=now - timedelta(minutes=3), next_refresh_at=now + timedelta(hours=2)
    )
    with time_machine.travel(now, tick=False):
        page = admin_client.get(reverse("admin:secret_detection_findingtokenstatus_changelist")).content.decode()
    assert ">3 min ago</time>" in page
    assert ">in 2 h</time>" in page
    assert re.search(r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d">in 2 h</time>', page)
    assert "last_request_id" not in page  # detail only


def test_refresh_now_warns_when_every_selected_status_is_pending(admin_client, imported):
    FindingTokenStatus.objects.update(status="pending")
    ids = list(FindingTokenStatus.objects.values_list("pk", flat=True))
    response = admin_client.post(
        reverse("admin:secret_detection_findingtokenstatus_changelist"),
        {"action": "refresh_now", "_selected_action": ids},
        follow=True,
    )
    assert [(m.level_tag, str(m)) for m in response.context["messages"]] == [
        ("warning", "Nothing to refresh: the selected statuses are pending.")
    ]
    assert not JobRun.objects.filter(name="secret_detection.refresh_token_statuses").exists()


def _check(admin_client) -> list[str]:
    settings_page = admin_client.get(
        reverse("admin:project_applicationsetting_change", args=[ApplicationSetting.current().pk])
    )
    check_url = reverse("admin:secret_detection_sdrs_check")
    assert check_url in settings_page.content.decode()  # the button
    response = admin_client.get(check_url, follow=True)
    assert response.redirect_chain[-1][0].endswith(
        f"/admin/project/applicationsetting/{ApplicationSetting.current().pk}/change/"
    )
    return _messages(response)


def test_check_connection_reports_a_reachable_sdrs(admin_client, sdrs_server, sdrs_settings):
    sdrs_settings(url=sdrs_server.url)
    (message,) = _check(admin_client)
    assert message.startswith("SDRS connection: SDRS is reachable and accepted our signed token")
    (probe,) = sdrs_server.verifies
    assert probe.answered == 400  # authenticated, then refused for carrying no token
    assert probe.token_sha256 == __import__("hashlib").sha256(b"").hexdigest()


def test_check_connection_reports_a_rejected_key(admin_client, sdrs_server, sdrs_settings):
    sdrs_settings(url=sdrs_server.url, sdrs_jwt_signing_key=keypair()[0])
    (message,) = _check(admin_client)
    assert "rejected our JWT" in message
    assert "HTTP 401" in message


def test_check_connection_reports_an_unreachable_sdrs(admin_client, sdrs_settings):
    sdrs_settings()
    (message,) = _check(admin_client)
    assert message.startswith("SDRS connection: SDRS is unreachable")


def test_check_connection_reports_missing_configuration_and_warnings(admin_client, sdrs_settings):
    sdrs_settings(sdrs_url="", sdrs_enabled=False, sdrs_callback_secret="")
    messages = _check(admin_client)
    assert messages[0] == "SDRS connection: SDRS is misconfigured: no SDRS URL is configured."
    assert "Verification is disabled" in messages[1]
    assert "No callback secret is set" in messages[2]


def test_check_connection_command(sdrs_server, sdrs_settings):
    from io import StringIO

    from django.core.management import CommandError, call_command

    sdrs_settings(url=sdrs_server.url)
    out = StringIO()
    call_command("sdrs_check_connection", stdout=out)
    assert out.getvalue().startswith("reachable:")
    sdrs_server.failures.status = 500
    with pytest.raises(CommandError, match="server_error"):
        call_command("sdrs_check_connection")


def test_a_partner_types_page_switches_it_through_the_service(admin_client):
    aws = PartnerTokenType.objects.get(token_type="AWS")
    url = reverse("admin:secret_detection_partnertokentype_change", args=[aws.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="token_type"' not in page  # a type is switched, not renamed
    response = admin_client.post(url, {"verifier": "auto"})  # the box unticked
    assert response.status_code == 302
    aws.refresh_from_db()
    assert (aws.enabled, aws.updated_by) == (False, "admin")


@pytest.mark.parametrize("listing", ["finding", "findingtokenstatus"])
def test_the_lists_cost_no_query_per_row(admin_client, project, import_findings, listing):
    url = reverse(f"admin:secret_detection_{listing}_changelist")
    import_findings(project, [("AWS", "AKIA1")], prefix="one")
    with CaptureQueriesContext(connection) as one:
        assert admin_client.get(url).status_code == 200
    import_findings(project, [("AWS", "AKIA2"), ("GCP API key", "AIza3"), ("Password in URL", "x")], prefix="more")
    with CaptureQueriesContext(connection) as four:
        response = admin_client.get(url)
    assert len(response.context["cl"].result_list) == 4
    assert len(four) == len(one)
