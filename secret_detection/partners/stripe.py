"""Stripe: ``GET /v1/balance`` with the secret key as a bearer (GitLab's later
``StripeClient``, which sends it as the Basic user name; Stripe takes either).

200: the key authenticated; 401: revoked, expired or unknown. A restricted key
(``rk_live_``) without the balance permission answers 403: Stripe authenticated it before
refusing the permission, so the key exists and is active. Reading the balance changes
nothing, and a test-mode key (``sk_test_``) answers the same way without touching live
data.
"""

from __future__ import annotations

import re
from typing import ClassVar

import requests

from secret_detection.partners.base import PartnerClient, Verdict, json_body

# Secret and restricted keys, live and test (gitleaks' stripe-access-token: ``sk_`` or
# ``rk_``, ``live`` or ``test``, then 10 to 99 characters; live secret keys today are 99
# long, GitLab's StripeLiveSecretKey rule, and older ones 24, StripeLiveShortSecretKey).
# Publishable keys (``pk_``) are public by design and are not verified.
API_KEY = re.compile(r"\A[sr]k_(?:live|test)_[A-Za-z0-9]{10,247}\Z")


class StripeClient(PartnerClient):
    partner = "stripe"
    url_setting = "PARTNER_STRIPE_URL"
    probe_value: ClassVar[str] = "sk_live_" + "0" * 99

    def matches(self, value: str) -> bool:
        return bool(API_KEY.match(value))

    def _call(self, value: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {value}", "Accept": "application/json"}
        return self.session.get(self.url, headers=headers, timeout=self.timeout)

    def _interpret(self, response: requests.Response) -> Verdict:
        status = response.status_code
        if status == 200:
            json_body(self, response)
            return Verdict("active", http_status=status)
        if status == 403:
            # A restricted key without the balance permission: authenticated, so live.
            return Verdict("active", http_status=status)
        if status == 401:
            return Verdict("inactive", http_status=status)
        if status == 429:
            raise self.rate_limited(response)
        if status >= 500:
            raise self.server_error(response)
        return self.unexpected(response)
