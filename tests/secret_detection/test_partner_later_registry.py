"""The direct clients of GitLab's later registry entries (OpenAI, Anthropic, SendGrid,
Heroku, Stripe): format checks with no call, each answer mapped (``responses``), each
client against its stand-in (real HTTP), routing with SDRS off, and where each value goes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import responses

from project.jobs import JobRun
from project.jobs.testing import run_inline
from secret_detection import partners, services
from secret_detection.models import FindingTokenStatus, PartnerTokenType
from secret_detection.partners import (
    PartnerClient,
    PartnerNetworkError,
    PartnerRateLimited,
    PartnerResponseError,
)
from secret_detection.partners.anthropic import AnthropicClient
from secret_detection.partners.heroku import HerokuClient
from secret_detection.partners.openai import OpenaiClient
from secret_detection.partners.sendgrid import SendgridClient
from secret_detection.partners.stripe import StripeClient
from tests.support.partners import (
    ANTHROPIC_ACTIVE,
    ANTHROPIC_INACTIVE,
    HEROKU_ACTIVE,
    HEROKU_INACTIVE,
    OPENAI_ACTIVE,
    OPENAI_INACTIVE,
    SENDGRID_ACTIVE,
    SENDGRID_INACTIVE,
    STRIPE_ACTIVE,
    STRIPE_INACTIVE,
    STRIPE_RESTRICTED,
    PartnerStandIn,
    partner_stand_ins,
    partner_urls,
)

DIRECT = "secret_detection.verify_direct_token"

# client, its real endpoint, a live value, a revoked value
CLIENTS: list[tuple[type[PartnerClient], str, str, str]] = [
    (OpenaiClient, "https://api.openai.com/v1/models", OPENAI_ACTIVE, OPENAI_INACTIVE),
    (AnthropicClient, "https://api.anthropic.com/v1/models", ANTHROPIC_ACTIVE, ANTHROPIC_INACTIVE),
    (SendgridClient, "https://api.sendgrid.com/v3/scopes", SENDGRID_ACTIVE, SENDGRID_INACTIVE),
    (HerokuClient, "https://api.heroku.com/account", HEROKU_ACTIVE, HEROKU_INACTIVE),
    (StripeClient, "https://api.stripe.com/v1/balance", STRIPE_ACTIVE, STRIPE_INACTIVE),
]
CLIENT_IDS = [client.partner for client, *_ in CLIENTS]
# One rule id per partner, as the report names it.
TOKEN_TYPES = {
    "openai": ("OpenAiProjectKey", OPENAI_ACTIVE),
    "anthropic": ("anthropic_key", ANTHROPIC_ACTIVE),
    "sendgrid": ("Sendgrid API token", SENDGRID_ACTIVE),
    "heroku": ("Heroku API Key", HEROKU_ACTIVE),
    "stripe": ("StripeLiveSecretKey", STRIPE_ACTIVE),
}


# --- formats: no call for a value that cannot be the partner's -------------------------


@pytest.mark.parametrize(
    ("client", "value", "matches"),
    [
        (OpenaiClient, OPENAI_ACTIVE, True),
        (OpenaiClient, "sk-svcacct-" + "a_-B" * 20, True),
        (OpenaiClient, "sk-" + "a" * 20 + "T3BlbkFJ" + "b" * 20, True),
        (OpenaiClient, "sk-" + "a1" * 24, True),
        (OpenaiClient, "sk-proj-short", False),
        (OpenaiClient, ANTHROPIC_ACTIVE, False),
        (OpenaiClient, OPENAI_ACTIVE + "\n", False),
        (AnthropicClient, ANTHROPIC_ACTIVE, True),
        (AnthropicClient, "sk-ant-api03-" + "a" * 93 + "AB", False),
        (AnthropicClient, "sk-ant-admin01-" + "a" * 93 + "AA", False),
        (AnthropicClient, OPENAI_ACTIVE, False),
        (SendgridClient, SENDGRID_ACTIVE, True),
        (SendgridClient, "SG." + "a" * 22 + "." + "b" * 42, False),
        (SendgridClient, "SG." + "a" * 66, False),
        (HerokuClient, HEROKU_ACTIVE, True),
        (HerokuClient, HEROKU_ACTIVE.upper(), True),
        (HerokuClient, "HRKU-AA" + "x_-Y" * 14 + "zz", True),
        (HerokuClient, "0123456789abcdef0123456789abcdef", False),
        (HerokuClient, "HRKU-short", False),
        (StripeClient, STRIPE_ACTIVE, True),
        (StripeClient, STRIPE_RESTRICTED, True),
        (StripeClient, "sk_live_" + "a" * 24, True),
        (StripeClient, "pk_live_" + "a" * 99, False),
        (StripeClient, "sk_prod_" + "a" * 99, False),
    ],
)
def test_each_client_checks_the_partner_format(client, value, matches):
    assert client().matches(value) is matches


@responses.activate
@pytest.mark.parametrize(("client", "url", "active", "_inactive"), CLIENTS, ids=CLIENT_IDS)
def test_a_value_of_another_format_is_unknown_without_any_call(client, url, active, _inactive):
    verdict = client().verify("not-" + active)
    assert (verdict.status, verdict.code) == ("unknown", "format_mismatch")
    assert len(responses.calls) == 0


@pytest.mark.parametrize("client", [client for client, *_ in CLIENTS], ids=CLIENT_IDS)
def test_the_connection_check_value_has_the_right_format(client):
    assert client().matches(client.probe_value)


# --- each answer mapped (responses) -----------------------------------------------------

# status → verdict (a string) or the error raised, per partner where they differ.
COMMON = {200: "active", 401: "inactive", 404: "unknown", 400: "unknown"}
ERRORS = {429: PartnerRateLimited, 500: PartnerNetworkError, 502: PartnerNetworkError, 503: PartnerNetworkError}
FORBIDDEN = {
    "openai": "unknown",
    "anthropic": "unknown",
    "sendgrid": "inactive",
    "heroku": "unknown",
    "stripe": "active",
}


def _cases() -> list:
    cases = []
    for client, url, active, _inactive in CLIENTS:
        table: dict[int, object] = {**COMMON, **ERRORS, 403: FORBIDDEN[client.partner]}
        if client is AnthropicClient:
            table[529] = PartnerNetworkError  # overloaded
        for status, expected in table.items():
            cases.append(pytest.param(client, url, active, status, expected, id=f"{client.partner}-{status}"))
    return cases


@responses.activate
@pytest.mark.parametrize(("client", "url", "value", "status", "expected"), _cases())
def test_each_answer_maps_to_a_verdict_or_an_error(client, url, value, status, expected):
    responses.get(url, status=status, json={"ok": True}, headers={"Retry-After": "7"})
    if isinstance(expected, str):
        verdict = client().verify(value)
        assert verdict.status == expected
        assert verdict.http_status == status
        assert verdict.code == ("" if expected != "unknown" else f"partner_http_{status}")
    else:
        with pytest.raises(expected) as caught:
            client().verify(value)
        assert caught.value.partner == client.partner
        assert caught.value.upstream_status == status
        assert value not in str(caught.value)
        if expected is PartnerRateLimited:
            assert caught.value.retry_after == 7


@responses.activate
@pytest.mark.parametrize(("client", "url", "value", "_inactive"), CLIENTS, ids=CLIENT_IDS)
def test_a_200_that_does_not_parse_is_a_response_error(client, url, value, _inactive):
    responses.get(url, status=200, body="<html>Service temporarily", content_type="text/html")
    with pytest.raises(PartnerResponseError):
        client().verify(value)


@responses.activate
@pytest.mark.parametrize(("client", "url", "value", "_inactive"), CLIENTS, ids=CLIENT_IDS)
def test_a_connection_failure_is_a_network_error_without_the_value(client, url, value, _inactive):
    responses.get(url, body=requests.ConnectionError(f"refused {url}"))
    with pytest.raises(PartnerNetworkError) as caught:
        client().verify(value)
    assert value not in str(caught.value)


@responses.activate
@pytest.mark.parametrize(
    ("client", "url", "value", "expected"),
    [
        (OpenaiClient, CLIENTS[0][1], OPENAI_ACTIVE, {"Authorization": f"Bearer {OPENAI_ACTIVE}"}),
        (
            AnthropicClient,
            CLIENTS[1][1],
            ANTHROPIC_ACTIVE,
            {"x-api-key": ANTHROPIC_ACTIVE, "anthropic-version": "2023-06-01"},
        ),
        (SendgridClient, CLIENTS[2][1], SENDGRID_ACTIVE, {"Authorization": f"Bearer {SENDGRID_ACTIVE}"}),
        (
            HerokuClient,
            CLIENTS[3][1],
            HEROKU_ACTIVE,
            {"Authorization": f"Bearer {HEROKU_ACTIVE}", "Accept": "application/vnd.heroku+json; version=3"},
        ),
        (StripeClient, CLIENTS[4][1], STRIPE_ACTIVE, {"Authorization": f"Bearer {STRIPE_ACTIVE}"}),
    ],
    ids=CLIENT_IDS,
)
def test_each_client_sends_the_key_as_its_partner_expects(client, url, value, expected):
    responses.get(url, status=200, json={})
    client().verify(value)
    (call,) = responses.calls
    assert call.request.method == "GET"
    assert call.request.url == url  # the value never in the URL
    for name, header in expected.items():
        assert call.request.headers[name] == header
    if client is AnthropicClient:
        assert "Authorization" not in call.request.headers


def test_the_registry_routes_the_later_rules_with_their_rate_limit_keys():
    expected = {
        "OpenAiProjectKey": ("openai", "partner_openai_api", 1.0),
        "OpenAiServiceAccountKey": ("openai", "partner_openai_api", 1.0),
        "open ai token": ("openai", "partner_openai_api", 1.0),
        "anthropic_key": ("anthropic", "partner_anthropic_api", 0.5),
        "Sendgrid API token": ("sendgrid", "partner_sendgrid_api", 1.0),
        "Heroku API Key": ("heroku", "partner_heroku_api", 1.0),
        "StripeLiveSecretKey": ("stripe", "partner_stripe_api", 2.0),
        "StripeLiveShortSecretKey": ("stripe", "partner_stripe_api", 2.0),
        "StripeLiveRestrictedKey": ("stripe", "partner_stripe_api", 2.0),
    }
    for token_type, (partner, key, rate) in expected.items():
        entry = partners.entry_for(token_type.upper())
        assert entry is not None, token_type
        assert (entry.partner, entry.rate_limit_key, entry.per_second) == (partner, key, rate)
        assert partners.client_for(partner).partner == partner
    # Left out on purpose: Datadog (site-dependent answers).
    assert partners.entry_for("DataDogAPIKey") is None


# --- each client against its stand-in (real HTTP server) -------------------------------


@pytest.fixture(params=[client for client, *_ in CLIENTS], ids=CLIENT_IDS)
def against_stand_in(request, settings) -> Iterator[tuple[PartnerClient, PartnerStandIn, str, str]]:
    client_class = request.param
    _client, _url, active, inactive = next(row for row in CLIENTS if row[0] is client_class)
    with PartnerStandIn(partner=client_class.partner) as stand_in:
        setattr(settings, client_class.url_setting, stand_in.url())
        yield client_class(timeout=2.0), stand_in, active, inactive


def test_each_stand_in_answers_live_and_revoked_keys_as_its_partner(against_stand_in):
    client, stand_in, active, inactive = against_stand_in
    assert client.verify(active).status == "active"
    assert client.verify(inactive).status == "inactive"
    assert client.verify(client.probe_value).status == "inactive"
    assert stand_in.values() == [active, inactive, client.probe_value]


@pytest.mark.parametrize(
    ("mode", "error"),
    [("429", PartnerRateLimited), ("503", PartnerNetworkError), ("500", PartnerNetworkError)],
)
def test_each_stand_in_rate_limits_and_fails_on_demand(against_stand_in, mode, error):
    client, stand_in, active, _inactive = against_stand_in
    stand_in.then(mode)
    with pytest.raises(error) as caught:
        client.verify(active)
    assert caught.value.upstream_status == int(mode)
    if mode == "429":
        assert caught.value.retry_after == 1
    assert client.verify(active).status == "active"  # the script is spent


def test_each_stand_in_refuses_on_demand(against_stand_in):
    client, stand_in, active, _inactive = against_stand_in
    stand_in.then("401", "403")
    assert client.verify(active).status == "inactive"
    forbidden = client.verify(active)
    assert forbidden.status == FORBIDDEN[client.partner]
    assert forbidden.http_status == 403


def test_each_stand_in_garbage_is_a_response_error(against_stand_in):
    client, stand_in, active, _inactive = against_stand_in
    stand_in.mode = "garbage"
    with pytest.raises(PartnerResponseError):
        client.verify(active)


def test_a_slow_stand_in_is_a_timeout(against_stand_in):
    client, stand_in, active, _inactive = against_stand_in
    client.timeout = 0.2
    stand_in.latency = 1.0
    with pytest.raises(PartnerNetworkError) as caught:
        client.verify(active)
    assert caught.value.code == "partner_timeout"


def test_a_stripe_restricted_key_without_the_balance_permission_is_active(settings):
    with PartnerStandIn(partner="stripe") as stand_in:
        settings.PARTNER_STRIPE_URL = stand_in.url()
        verdict = StripeClient(timeout=2.0).verify(STRIPE_RESTRICTED)
    assert (verdict.status, verdict.http_status, verdict.code) == ("active", 403, "")


def test_the_anthropic_stand_in_reads_the_key_from_x_api_key(settings):
    with PartnerStandIn(partner="anthropic") as stand_in:
        settings.PARTNER_ANTHROPIC_URL = stand_in.url()
        AnthropicClient(timeout=2.0).verify(ANTHROPIC_ACTIVE)
        (received,) = stand_in.received
    assert (received.method, received.path, received.value) == ("GET", "/v1/models", ANTHROPIC_ACTIVE)
    assert received.headers["anthropic-version"] == "2023-06-01"


def test_the_combined_stand_in_serves_each_new_partner_under_its_prefix(settings):
    with PartnerStandIn() as stand_in:
        for client_class, _url, active, _inactive in CLIENTS:
            setattr(settings, client_class.url_setting, stand_in.url(client_class.partner))
            assert client_class(timeout=2.0).verify(active).status == "active"
            assert stand_in.values(client_class.partner) == [active]


# --- routing and end to end (real servers, one per partner) ----------------------------


@pytest.mark.django_db
def test_the_later_types_are_seeded_and_routed_directly_while_sdrs_is_off(project, developer, import_findings):
    seeded = dict(PartnerTokenType.objects.values_list("token_type", "partner"))
    for partner, (token_type, _value) in TOKEN_TYPES.items():
        assert seeded[token_type] == partner
    findings = import_findings(project, list(TOKEN_TYPES.values()))

    counts = services.token_statuses_route(project_id=project.pk)

    assert counts == {"direct_enqueued": len(TOKEN_TYPES)}
    statuses = FindingTokenStatus.objects.filter(pk__in=[f.pk for f in findings]).order_by("pk")
    assert [s.verifier for s in statuses] == ["direct"] * len(TOKEN_TYPES)
    direct = JobRun.objects.filter(name=DIRECT)
    assert {run.kwargs["finding_id"] for run in direct} == {f.pk for f in findings}


@pytest.fixture
def stand_ins(settings) -> Iterator[dict[str, PartnerStandIn]]:
    with partner_stand_ins() as servers:
        for name, url in partner_urls(servers).items():
            setattr(settings, name, url)
        settings.PARTNER_TIMEOUT = 2.0
        for partner in TOKEN_TYPES:
            setattr(settings, f"PARTNER_{partner.upper()}_RATE", 0)
        yield servers


@pytest.mark.django_db
def test_each_value_reaches_its_verdict_and_only_its_own_partner(project, import_findings, stand_ins):
    cases = [*TOKEN_TYPES.items(), ("stripe", ("StripeLiveRestrictedKey", STRIPE_RESTRICTED))]
    cases += [
        ("openai", ("open ai token", OPENAI_INACTIVE)),
        ("heroku", ("Heroku API Key", HEROKU_INACTIVE)),
    ]
    findings = import_findings(project, [pair for _partner, pair in cases])
    for finding in findings:
        assert run_inline(DIRECT, finding_id=finding.pk)[0] == "succeeded"

    for finding, (owner, (_token_type, value)) in zip(findings, cases, strict=True):
        status = FindingTokenStatus.objects.get(pk=finding.pk)
        expected = "inactive" if value in (OPENAI_INACTIVE, HEROKU_INACTIVE) else "active"
        assert (status.status, status.partner, status.verifier) == (expected, owner, "direct")
        for name, server in stand_ins.items():
            assert (value in server.values()) is (name == owner), (value, name)
