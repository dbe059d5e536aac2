"""The admin of direct partners: per-type routing, a switch per partner, "Check
connection" against the stand-ins (with its permission), and rate-limit hits in the job
console."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from project.jobs import overview
from secret_detection import services
from secret_detection.models import DirectPartner, PartnerTokenType
from tests.support.partners import PartnerStandIn, partner_stand_ins, partner_urls

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:secret_detection_directpartner_changelist"


@pytest.fixture
def admin_client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def stand_ins(settings) -> Iterator[dict[str, PartnerStandIn]]:
    with partner_stand_ins() as servers:
        for name, url in partner_urls(servers).items():
            setattr(settings, name, url)
        settings.PARTNER_TIMEOUT = 2.0
        yield servers


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_the_list_shows_one_row_per_partner_client(admin_client):
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert set(DirectPartner.objects.values_list("partner", flat=True)) == {
        "aws",
        "gcp",
        "postman",
        "github",
        "openai",
        "anthropic",
        "sendgrid",
        "heroku",
        "stripe",
    }


def test_check_connection_shows_the_answer_and_latency(admin_client, stand_ins):
    admin_client.get(reverse(CHANGELIST))
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "check_connection", "_selected_action": ["aws", "postman"]},
        follow=True,
    )
    messages = _messages(response)
    assert any(m.startswith("aws: reachable: answered inactive (HTTP 403)") and " ms (" in m for m in messages)
    assert any(m.startswith("postman: reachable: answered inactive (HTTP 401)") for m in messages)
    # A value that cannot exist, in each partner's format.
    assert stand_ins["aws"].values() == ["AKIA" + "Z" * 16]
    row = DirectPartner.objects.get(partner="aws")
    assert row.last_check_at is not None
    assert row.last_check_ms is not None
    assert "reachable" in row.last_check_result


def test_check_connection_reports_a_partner_that_is_down(admin_client, stand_ins):
    stand_ins["gcp"].mode = "502"
    check = services.direct_partner_check(partner="gcp")
    assert (check.ok, check.result) == (False, "unreachable")
    assert "partner_server_error (HTTP 502)" in check.message


def test_check_connection_needs_its_permission(client, django_user_model, stand_ins):
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_directpartner"))
    client.force_login(viewer)
    listing = client.get(reverse(CHANGELIST))
    assert "check_connection" not in listing.content.decode()
    client.post(reverse(CHANGELIST), {"action": "check_connection", "_selected_action": ["aws"]})
    assert stand_ins["aws"].received == []


def test_a_partner_switch_goes_through_the_service_and_records_who(admin_user):
    message = services.direct_partner_switch(partner="postman", enabled=False, by=admin_user.username)
    assert message == "Direct verification with postman is now off."
    row = DirectPartner.objects.get(partner="postman")
    assert (row.enabled, row.updated_by) == (False, "admin")


def test_a_type_is_routed_to_a_verifier_and_direct_needs_a_client(admin_user):
    aws = PartnerTokenType.objects.get(token_type="AWS")
    services.partner_type_route(type_id=aws.pk, verifier="sdrs", by="admin")
    aws.refresh_from_db()
    assert aws.verifier == "sdrs"
    github = PartnerTokenType.objects.get(token_type="GitHub Refresh Token")
    with pytest.raises(services.partner_admin.ValidationFailed):
        services.partner_type_route(type_id=github.pk, verifier="direct", by="admin")


def test_the_job_console_shows_rate_limit_hits_and_partner_switches(admin_user):
    from secret_detection.services import pacing

    pacing.partner_rate_limit_record(partner="postman", limit="postman_429", pause=30)
    figures = {b.label: b for source in overview._backlog_sources for b in source()}
    postman = next(b for label, b in figures.items() if label.startswith("Rate-limit hits: postman"))
    assert postman.count == 1
    assert postman.warn  # paused
    switches = {s.key for source in overview._switch_sources for s in source.list()}
    assert {"direct_partner.aws", "direct_partner.gcp", "direct_partner.postman"} <= switches


def test_a_status_page_shows_the_partner_and_links_to_direct_runs(admin_client, project, import_findings, stand_ins):
    from project.jobs.testing import run_inline
    from tests.support.partners import AWS_ACTIVE

    (finding,) = import_findings(project, [("AWS", AWS_ACTIVE)])
    run_inline("secret_detection.verify_direct_token", finding_id=finding.pk)
    page = admin_client.get(
        reverse("admin:secret_detection_findingtokenstatus_change", args=[finding.pk])
    ).content.decode()
    assert "1 direct verification run(s)" in page
    assert '<div class="readonly">aws</div>' in page
    assert AWS_ACTIVE not in page
