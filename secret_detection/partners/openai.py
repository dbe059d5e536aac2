"""OpenAI: ``GET /v1/models`` with the key as a bearer (GitLab's later ``OpenaiClient``).

Listing models needs no permission beyond a valid key and costs nothing: 200 means the
key authenticated, 401 (``invalid_api_key``) that it is revoked or never existed.
"""

from __future__ import annotations

import re
from typing import ClassVar

import requests

from secret_detection.partners.base import PartnerClient, Verdict, json_body

# Project, service-account and admin keys (gitleaks' openai-api-key: ``sk-proj-`` and the
# others, 58 or 74 characters either side of the ``T3BlbkFJ`` marker, which newer keys do
# not always carry, so only the prefix and the length are checked), and the legacy user
# keys (``sk-`` + 48, with or without the marker).
API_KEY = re.compile(
    r"\Ask-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,200}"
    r"|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}"
    r"|[A-Za-z0-9]{48})\Z"
)


class OpenaiClient(PartnerClient):
    partner = "openai"
    url_setting = "PARTNER_OPENAI_URL"
    probe_value: ClassVar[str] = "sk-proj-" + "0" * 60

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
        if status == 401:
            return Verdict("inactive", http_status=status)
        if status == 429:
            raise self.rate_limited(response)
        if status >= 500:
            raise self.server_error(response)
        # 403 (an unsupported region, an organisation blocked) says nothing about the key.
        return self.unexpected(response)
