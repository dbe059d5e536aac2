"""The direct partner clients, with the HTTP layer mocked (``responses``): format checks,
each partner's answer mapped to a verdict or an error, and the request each one sends."""

from __future__ import annotations

import pytest
import requests
import responses
from prometheus_client import REGISTRY

from secret_detection import partners
from secret_detection.partners import PartnerNetworkError, PartnerRateLimited, PartnerResponseError
from secret_detection.partners.aws import AwsClient
from secret_detection.partners.gcp import GcpClient
from secret_detection.partners.github import GithubClient
from secret_detection.partners.postman import PostmanClient
from tests.support.partners import AWS_ACTIVE, GCP_ACTIVE, GITHUB_ACTIVE, POSTMAN_ACTIVE

AWS_URL = "https://sts.amazonaws.com/"
GCP_URL = "https://oauth2.googleapis.com/tokeninfo"
POSTMAN_URL = "https://api.getpostman.com/me"


def _sts_error(code: str) -> str:
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
        f"<Code>{code}</Code><Message>x</Message></Error><RequestId>1</RequestId></ErrorResponse>"
    )


@pytest.mark.parametrize(
    ("client", "value", "matches"),
    [
        (AwsClient, AWS_ACTIVE, True),
        (AwsClient, "AKIA" + "a" * 16, False),
        (AwsClient, AWS_ACTIVE + "\n", False),
        (AwsClient, "ASIA" + "A" * 16, False),
        (GcpClient, GCP_ACTIVE, True),
        (GcpClient, "ya29." + "a" * 100, True),
        (GcpClient, "ya29." + "a" * 20 + "!", False),
        (GcpClient, "x" * 24, True),
        (GcpClient, "short-token", False),
        (PostmanClient, POSTMAN_ACTIVE, True),
        (PostmanClient, POSTMAN_ACTIVE.upper(), False),
        (PostmanClient, "PMAK-abc", False),
    ],
)
def test_a_value_is_checked_against_the_partners_format(client, value, matches):
    assert client().matches(value) is matches


@responses.activate
@pytest.mark.parametrize("client", [AwsClient, GcpClient, PostmanClient])
def test_a_malformed_value_is_unknown_without_any_call(client):
    verdict = client().verify("not-a-token")
    assert (verdict.status, verdict.code) == ("unknown", "format_mismatch")
    assert len(responses.calls) == 0


@responses.activate
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, "<GetCallerIdentityResponse><Result/></GetCallerIdentityResponse>", "active"),
        (403, _sts_error("SignatureDoesNotMatch"), "active"),
        (403, _sts_error("InvalidSignature"), "active"),
        (403, _sts_error("InvalidClientTokenId"), "inactive"),
        (403, _sts_error("AccessDenied"), "inactive"),
        (400, "", "unknown"),
        (404, "", "unknown"),
    ],
)
def test_aws_answers_map_to_verdicts(status, body, expected):
    responses.post(AWS_URL, status=status, body=body)
    assert AwsClient().verify(AWS_ACTIVE).status == expected


@responses.activate
def test_aws_request_is_signed_sigv4_for_sts_with_the_found_key_id():
    responses.post(AWS_URL, status=403, body=_sts_error("SignatureDoesNotMatch"))
    AwsClient().verify(AWS_ACTIVE)
    request = responses.calls[0].request
    assert request.body == "Action=GetCallerIdentity&Version=2011-06-15"
    authorization = request.headers["Authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={AWS_ACTIVE}/")
    assert "/us-east-1/sts/aws4_request" in authorization
    assert "X-Amz-Date" in request.headers


@responses.activate
@pytest.mark.parametrize(
    ("client", "url", "status", "error"),
    [
        (AwsClient, AWS_URL, 429, PartnerRateLimited),
        (AwsClient, AWS_URL, 503, PartnerRateLimited),
        (AwsClient, AWS_URL, 500, PartnerNetworkError),
        (AwsClient, AWS_URL, 502, PartnerNetworkError),
        (AwsClient, AWS_URL, 504, PartnerNetworkError),
        (GcpClient, GCP_URL, 429, PartnerRateLimited),
        (GcpClient, GCP_URL, 500, PartnerNetworkError),
        (GcpClient, GCP_URL, 503, PartnerNetworkError),
        (PostmanClient, POSTMAN_URL, 429, PartnerRateLimited),
        (PostmanClient, POSTMAN_URL, 502, PartnerNetworkError),
    ],
)
def test_rate_limits_and_server_errors_raise(client, url, status, error):
    value = {AwsClient: AWS_ACTIVE, GcpClient: GCP_ACTIVE, PostmanClient: POSTMAN_ACTIVE}[client]
    responses.add(responses.POST if client is AwsClient else responses.GET, url, status=status)
    with pytest.raises(error) as raised:
        client().verify(value)
    assert raised.value.upstream_status == status
    assert value not in str(raised.value)


@responses.activate
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [(200, '{"aud": "x"}', "active"), (400, '{"error": "invalid_token"}', "inactive"), (401, "", "inactive")],
)
def test_gcp_answers_map_to_verdicts(status, body, expected):
    responses.get(GCP_URL, status=status, body=body)
    assert GcpClient().verify(GCP_ACTIVE).status == expected
    assert responses.calls[0].request.url == f"{GCP_URL}?access_token={GCP_ACTIVE}"


@responses.activate
def test_gcp_escapes_the_value_in_the_query():
    responses.get(GCP_URL, status=400)
    GcpClient().verify("ya29." + "a" * 100 + ".b_c-d")
    assert "access_token=ya29." in responses.calls[0].request.url


@responses.activate
@pytest.mark.parametrize(
    ("status", "body", "expected"), [(200, '{"user": {"id": 1}}', "active"), (401, "", "inactive")]
)
def test_postman_answers_map_to_verdicts(status, body, expected):
    responses.get(POSTMAN_URL, status=status, body=body)
    assert PostmanClient().verify(POSTMAN_ACTIVE).status == expected
    request = responses.calls[0].request
    assert (request.headers["X-API-Key"], request.headers["Accept"]) == (POSTMAN_ACTIVE, "application/json")


@responses.activate
@pytest.mark.parametrize(
    ("client", "method", "url", "status", "value"),
    [
        (AwsClient, responses.POST, AWS_URL, 200, AWS_ACTIVE),
        (AwsClient, responses.POST, AWS_URL, 403, AWS_ACTIVE),
        (GcpClient, responses.GET, GCP_URL, 200, GCP_ACTIVE),
        (PostmanClient, responses.GET, POSTMAN_URL, 200, POSTMAN_ACTIVE),
    ],
)
def test_a_garbage_answer_is_a_response_error(client, method, url, status, value):
    responses.add(method, url, status=status, body="<html><body>oops</bo")
    with pytest.raises(PartnerResponseError) as raised:
        client().verify(value)
    assert raised.value.code == "partner_response_invalid"
    assert not raised.value.retryable


@responses.activate
@pytest.mark.parametrize(
    "failure", [requests.ConnectTimeout("x"), requests.ReadTimeout("x"), requests.ConnectionError("x")]
)
def test_network_failures_are_retryable_and_never_quote_the_url(failure):
    value = "ya29." + "s" * 100
    responses.get(GCP_URL, body=failure)
    with pytest.raises(PartnerNetworkError) as raised:
        GcpClient().verify(value)
    assert raised.value.retryable
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    assert value not in str(raised.value)


@responses.activate
def test_metrics_name_the_partner_and_outcome_never_the_value():
    responses.post(AWS_URL, status=403, body=_sts_error("InvalidClientTokenId"))
    responses.get(POSTMAN_URL, status=429)
    AwsClient().verify(AWS_ACTIVE)
    with pytest.raises(PartnerRateLimited):
        PostmanClient().verify(POSTMAN_ACTIVE)
    labels = [
        value
        for metric in REGISTRY.collect()
        if metric.name.startswith("secret_detection_")
        for sample in metric.samples
        for value in sample.labels.values()
    ]
    assert "aws" in labels
    assert "inactive" in labels
    assert "postman_429" in labels
    assert not any(AWS_ACTIVE in label or POSTMAN_ACTIVE in label for label in labels)


def test_the_registry_routes_each_rule_to_one_partner_with_its_rate_limit_key():
    assert {key: (e.partner, e.rate_limit_key) for key, e in partners.REGISTRY.items()} == {
        "aws": ("aws", "partner_aws_api"),
        "gcp api key": ("gcp", "partner_gcp_api"),
        "gcp oauth client secret": ("gcp", "partner_gcp_api"),
        "google (gcp) service-account": ("gcp", "partner_gcp_api"),
        "postman api token": ("postman", "partner_postman_api"),
        "github personal access token": ("github", "partner_github_api"),
        "github oauth access token": ("github", "partner_github_api"),
        # GitLab's later registry (tested in test_partner_later_registry.py).
        "openaiprojectkey": ("openai", "partner_openai_api"),
        "openaiserviceaccountkey": ("openai", "partner_openai_api"),
        "open ai token": ("openai", "partner_openai_api"),
        "anthropic_key": ("anthropic", "partner_anthropic_api"),
        "sendgrid api token": ("sendgrid", "partner_sendgrid_api"),
        "heroku api key": ("heroku", "partner_heroku_api"),
        "stripelivesecretkey": ("stripe", "partner_stripe_api"),
        "stripeliveshortsecretkey": ("stripe", "partner_stripe_api"),
        "stripeliverestrictedkey": ("stripe", "partner_stripe_api"),
    }
    assert partners.entry_for("Postman API Token").per_second == 4


@pytest.mark.parametrize("client", [AwsClient, GcpClient, PostmanClient, GithubClient])
def test_the_connection_check_value_has_the_right_format(client):
    assert client().matches(client.probe_value)


GITHUB_URL = "https://api.github.com/user"


@pytest.mark.parametrize(
    ("value", "matches"),
    [
        (GITHUB_ACTIVE, True),
        ("gho_" + "a" * 36, True),
        ("github_pat_" + "a_" * 41, True),
        ("ghs_" + "a" * 36, False),
        ("ghp_short", False),
    ],
)
def test_github_formats(value, matches):
    assert GithubClient().matches(value) is matches


@responses.activate
@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [(200, {}, "active"), (401, {}, "inactive"), (403, {"X-RateLimit-Remaining": "5"}, "unknown")],
)
def test_github_answers_map_to_verdicts(status, headers, expected):
    responses.get(GITHUB_URL, status=status, json={"login": "x"}, headers=headers)
    assert GithubClient().verify(GITHUB_ACTIVE).status == expected
    assert responses.calls[0].request.headers["Authorization"] == f"Bearer {GITHUB_ACTIVE}"


@responses.activate
@pytest.mark.parametrize(("status", "headers"), [(429, {}), (403, {"X-RateLimit-Remaining": "0"})])
def test_github_rate_limits(status, headers):
    responses.get(GITHUB_URL, status=status, headers=headers)
    with pytest.raises(PartnerRateLimited):
        GithubClient().verify(GITHUB_ACTIVE)


def test_the_proxy_environment_applies_to_partner_calls(monkeypatch):
    from secret_detection.partners import base

    monkeypatch.setattr(base, "_local", type(base._local)())
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "api.getpostman.com")
    assert GcpClient().session.proxies.get("https") == "http://proxy.internal:3128"
    assert "https" not in PostmanClient().session.proxies
