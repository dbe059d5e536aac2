"""Direct partner verification: one client per partner API and the registry of the token
types each verifies (GitLab 18.7/18.8 ``PartnerTokens``).

The registry is keyed by the report's gitleaks rule name (case-insensitive). Each entry
names its client and its rate-limit key; the per-partner switch and pause live in the
``DirectPartner`` table, the per-type routing choice on ``PartnerTokenType``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from secret_detection.partners.anthropic import AnthropicClient
from secret_detection.partners.aws import AwsClient
from secret_detection.partners.base import (
    PartnerClient,
    PartnerError,
    PartnerNetworkError,
    PartnerRateLimited,
    PartnerResponseError,
    Verdict,
)
from secret_detection.partners.gcp import GcpClient
from secret_detection.partners.github import GithubClient
from secret_detection.partners.heroku import HerokuClient
from secret_detection.partners.openai import OpenaiClient
from secret_detection.partners.postman import PostmanClient
from secret_detection.partners.sendgrid import SendgridClient
from secret_detection.partners.stripe import StripeClient

__all__ = [
    "CLIENTS",
    "REGISTRY",
    "PartnerClient",
    "PartnerError",
    "PartnerNetworkError",
    "PartnerRateLimited",
    "PartnerResponseError",
    "RegistryEntry",
    "Verdict",
    "client_for",
    "entry_for",
]

CLIENTS: dict[str, type[PartnerClient]] = {
    AwsClient.partner: AwsClient,
    GcpClient.partner: GcpClient,
    PostmanClient.partner: PostmanClient,
    GithubClient.partner: GithubClient,
    OpenaiClient.partner: OpenaiClient,
    AnthropicClient.partner: AnthropicClient,
    SendgridClient.partner: SendgridClient,
    HerokuClient.partner: HerokuClient,
    StripeClient.partner: StripeClient,
}


@dataclass(frozen=True)
class RegistryEntry:
    token_type: str
    partner: str
    #: Our own limit, per project: ``<rate_limit_key>:<project id>``.
    rate_limit_key: str
    #: The setting holding the limit in requests per second (0: none).
    rate_setting: str

    @property
    def per_second(self) -> float:
        return float(getattr(settings, self.rate_setting))


_ENTRIES = [
    RegistryEntry("AWS", "aws", "partner_aws_api", "PARTNER_AWS_RATE"),
    RegistryEntry("GCP API key", "gcp", "partner_gcp_api", "PARTNER_GCP_RATE"),
    RegistryEntry("GCP OAuth client secret", "gcp", "partner_gcp_api", "PARTNER_GCP_RATE"),
    RegistryEntry("Google (GCP) Service-account", "gcp", "partner_gcp_api", "PARTNER_GCP_RATE"),
    RegistryEntry("Postman API token", "postman", "partner_postman_api", "PARTNER_POSTMAN_RATE"),
    # GitLab's later registry. App and refresh tokens are left to SDRS: /user does not
    # answer for an installation token, and a refresh token is not a bearer token.
    RegistryEntry("GitHub Personal Access Token", "github", "partner_github_api", "PARTNER_GITHUB_RATE"),
    RegistryEntry("GitHub OAuth Access Token", "github", "partner_github_api", "PARTNER_GITHUB_RATE"),
    # GitLab's keys (OpenAiProjectKey, anthropic_key, Sendgrid API token, Heroku API Key,
    # StripeLiveSecretKey) plus the sibling rules whose values the same call verifies.
    RegistryEntry("OpenAiProjectKey", "openai", "partner_openai_api", "PARTNER_OPENAI_RATE"),
    RegistryEntry("OpenAiServiceAccountKey", "openai", "partner_openai_api", "PARTNER_OPENAI_RATE"),
    RegistryEntry("open ai token", "openai", "partner_openai_api", "PARTNER_OPENAI_RATE"),
    RegistryEntry("anthropic_key", "anthropic", "partner_anthropic_api", "PARTNER_ANTHROPIC_RATE"),
    RegistryEntry("Sendgrid API token", "sendgrid", "partner_sendgrid_api", "PARTNER_SENDGRID_RATE"),
    RegistryEntry("Heroku API Key", "heroku", "partner_heroku_api", "PARTNER_HEROKU_RATE"),
    RegistryEntry("StripeLiveSecretKey", "stripe", "partner_stripe_api", "PARTNER_STRIPE_RATE"),
    RegistryEntry("StripeLiveShortSecretKey", "stripe", "partner_stripe_api", "PARTNER_STRIPE_RATE"),
    RegistryEntry("StripeLiveRestrictedKey", "stripe", "partner_stripe_api", "PARTNER_STRIPE_RATE"),
]
REGISTRY: dict[str, RegistryEntry] = {entry.token_type.lower(): entry for entry in _ENTRIES}


def entry_for(token_type: str) -> RegistryEntry | None:
    return REGISTRY.get(token_type.lower())


def client_for(partner: str) -> PartnerClient:
    return CLIENTS[partner]()
