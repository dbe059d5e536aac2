"""The admin: staff only, every page renders, tokens shown once, secrets write-only."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib import admin
from django.urls import reverse

from project import services
from project.jobs.models import JobRun
from project.models import AccessToken, ApplicationSetting

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_admin_is_for_staff_only(client, owner) -> None:
    client.force_login(owner)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_every_admin_list_and_add_page_renders(staff_client, project) -> None:
    for model, model_admin in admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        response = staff_client.get(reverse("admin:{}_{}_changelist".format(*info)), follow=True)
        assert response.status_code == 200, info
        if model_admin.has_add_permission(response.wsgi_request):
            assert staff_client.get(reverse("admin:{}_{}_add".format(*info))).status_code == 200, info


def test_new_access_token_is_shown_once_and_stored_hashed(staff_client, owner) -> None:
    response = staff_client.post(
        reverse("admin:project_accesstoken_add"),
        {"user": owner.pk, "name": "ci", "scopes": ["api", "read_api"], "expires_at": ""},
    )
    assert response.status_code == 200
    value = response.context["value"]
    assert value.startswith("glpat-")
    assert value in response.content.decode()
    token = AccessToken.objects.get(name="ci")
    listing = staff_client.get(reverse("admin:project_accesstoken_changelist")).content.decode()
    detail = staff_client.get(reverse("admin:project_accesstoken_change", args=[token.pk])).content.decode()
    assert value not in listing
    assert value not in detail
    assert token.prefix in listing


def test_application_settings_open_as_a_single_row(staff_client) -> None:
    response = staff_client.get(reverse("admin:project_applicationsetting_changelist"))
    assert response.status_code == 302
    assert response["Location"].endswith(f"/{ApplicationSetting.current().pk}/change/")


def _pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _settings_form(**overrides) -> dict:
    data = {
        "project_export_enabled": "on",
        "project_export_limit": 6,
        "project_download_export_limit": 1,
        "max_export_size": 0,
        "max_import_size": 0,
        "max_decompressed_archive_size": 25600,
        "catalog_sync_enabled": "on",
        "sdrs_url": "https://sdrs.example.com",
        "sdrs_timeout": 10,
        "sdrs_jwt_signing_key": "",
        "sdrs_callback_secret": "",
    }
    data.update(overrides)
    return data


def test_sdrs_secrets_are_write_only(staff_client) -> None:
    row = ApplicationSetting.current()
    url = reverse("admin:project_applicationsetting_change", args=[row.pk])
    pem = _pem()
    assert (
        staff_client.post(url, _settings_form(sdrs_jwt_signing_key=pem, sdrs_callback_secret="s3cret")).status_code
        == 302
    )
    row.refresh_from_db()
    assert row.sdrs_jwt_signing_key.startswith("-----BEGIN PRIVATE KEY-----")
    assert row.sdrs_callback_secret == "s3cret"
    page = staff_client.get(url).content.decode()
    assert "s3cret" not in page
    assert "BEGIN PRIVATE KEY" not in page
    # Saving with the secret fields blank keeps them.
    assert staff_client.post(url, _settings_form(sdrs_timeout=5)).status_code == 302
    row.refresh_from_db()
    assert (row.sdrs_callback_secret, row.sdrs_timeout) == ("s3cret", 5)
    assert staff_client.post(url, _settings_form(clear_sdrs_callback_secret="on")).status_code == 302
    row.refresh_from_db()
    assert row.sdrs_callback_secret == ""
    assert row.sdrs_jwt_signing_key


def test_secrets_are_encrypted_at_rest(staff_client) -> None:
    from django.db import connection

    row = ApplicationSetting.current()
    row.sdrs_callback_secret = "plain-value"
    row.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT sdrs_callback_secret FROM application_settings WHERE id = %s", [row.pk])
        stored = cursor.fetchone()[0]
    assert "plain-value" not in stored


def test_an_invalid_signing_key_is_refused_with_a_message(staff_client) -> None:
    row = ApplicationSetting.current()
    url = reverse("admin:project_applicationsetting_change", args=[row.pk])
    response = staff_client.post(url, _settings_form(sdrs_jwt_signing_key="not a key"))
    assert response.status_code == 200
    assert "not an unencrypted PEM private key" in response.content.decode()


def test_job_run_actions_cancel_and_run_again(staff_client) -> None:
    queued = JobRun.objects.create(name="probe.ok", kwargs={"key": "a"})
    url = reverse("admin:jobs_jobrun_changelist")
    response = staff_client.post(url, {"action": "cancel", "_selected_action": [queued.pk]}, follow=True)
    assert f"Run #{queued.pk} (probe.ok) was cancelled." in response.content.decode()
    queued.refresh_from_db()
    assert (queued.status, queued.error_code) == ("cancelled", "cancelled")
    response = staff_client.post(url, {"action": "rerun", "_selected_action": [queued.pk]}, follow=True)
    assert f"Run #{queued.pk} (probe.ok) was re-run as run #" in response.content.decode()
    assert JobRun.objects.filter(name="probe.ok", status="queued", kwargs={"key": "a"}).count() == 1


def _token(owner, name: str = "ci") -> AccessToken:
    return services.access_token_create(user=owner, name=name, scopes=["api"])[0]


def test_access_token_list_shows_state_and_times_and_never_the_value(staff_client, owner) -> None:
    live, revoked = _token(owner, "live"), _token(owner, "old")
    services.access_token_revoke(token_id=revoked.pk)
    page = staff_client.get(reverse("admin:project_accesstoken_changelist")).content.decode()
    assert ">live</span>" in page
    assert ">revoked</span>" in page
    assert 'class="field-last_used_shown">never</td>' in page
    assert f"{live.prefix}…" in page


def test_revoke_reports_counts_and_warns_when_nothing_was_revoked(staff_client, owner) -> None:
    live, revoked = _token(owner, "live"), _token(owner, "old")
    services.access_token_revoke(token_id=revoked.pk)
    url = reverse("admin:project_accesstoken_changelist")
    response = staff_client.post(url, {"action": "revoke", "_selected_action": [live.pk, revoked.pk]}, follow=True)
    messages = [(m.level_tag, str(m)) for m in response.context["messages"]]
    assert messages == [("warning", f"{revoked}: already revoked."), ("success", "Revoked 1 token(s).")]
    live.refresh_from_db()
    assert live.revoked_at is not None
    again = staff_client.post(url, {"action": "revoke", "_selected_action": [live.pk]}, follow=True)
    assert [(m.level_tag, str(m)) for m in again.context["messages"]][-1] == ("warning", "Nothing was revoked.")


def test_a_token_page_has_a_revoke_button_until_it_is_revoked(staff_client, owner) -> None:
    token = _token(owner)
    detail = reverse("admin:project_accesstoken_change", args=[token.pk])
    assert 'data-action="revoke"' in staff_client.get(detail).content.decode()
    response = staff_client.post(reverse("admin:project_accesstoken_act", args=[token.pk, "revoke"]), follow=True)
    assert response.redirect_chain[-1][0] == detail
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert 'data-action="revoke"' not in response.content.decode()


def test_a_tokens_expiry_can_still_be_changed(staff_client, owner) -> None:
    token = _token(owner)
    response = staff_client.post(
        reverse("admin:project_accesstoken_change", args=[token.pk]), {"expires_at": "2031-01-02"}
    )
    assert response.status_code == 302
    token.refresh_from_db()
    assert str(token.expires_at) == "2031-01-02"
