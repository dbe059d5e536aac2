"""Anthropic: ``GET /v1/models`` with the key in ``x-api-key`` and ``anthropic-version``
(GitLab's later ``AnthropicClient``).

200 means the key authenticated; 401 (``authentication_error``) that it is revoked or
never existed. A 403 is left unknown, as GitLab does: Anthropic answers 403 both for a key
that lacks a permission (``permission_error``) and for a request it refuses whatever the
key (``forbidden``: a region it does not serve), so it does not tell a live key from a
dead one. 529 (overloaded) is Anthropic's outage: retried like any 5xx.
"""

from __future__ import annotations

import re
from typing import ClassVar

import requests

from secret_detection.partners.base import PartnerClient, Verdict, json_body

# gitleaks' anthropic-api-key: ``sk-ant-api03-`` + 93 characters + ``AA``. Admin keys
# (``sk-ant-admin01-``) only work on the admin API and are not claimed here.
API_KEY = re.compile(r"\Ask-ant-api03-[A-Za-z0-9_-]{93}AA\Z")
API_VERSION = "2023-06-01"


class AnthropicClient(PartnerClient):
    partner = "anthropic"
    url_setting = "PARTNER_ANTHROPIC_URL"
    probe_value: ClassVar[str] = "sk-ant-api03-" + "0" * 93 + "AA"

    def matches(self, value: str) -> bool:
        return bool(API_KEY.match(value))

    def _call(self, value: str) -> requests.Response:
        headers = {"x-api-key": value, "anthropic-version": API_VERSION, "Accept": "application/json"}
        return self.session.get(self.url, headers=headers, timeout=self.timeout)

    def _interpret(self, response: requests.Response) -> Verdict:
        status = response.status_code
        if status == 200:
            json_body(self, response)
            return Verdict("active", http_status=status)
        if status == 401:
            return Verdict("inactive", http_status=status)
        if status == 429:
            raise self.rate_limited(response)
        if status >= 500:  # 529: overloaded
            raise self.server_error(response)
        return self.unexpected(response)
