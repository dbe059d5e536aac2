"""Heroku: ``GET /account`` with the key as a bearer and the v3 ``Accept`` header
(GitLab's later ``HerokuClient``). 200: the key authenticated; 401 (``unauthorized``):
revoked, expired or unknown."""

from __future__ import annotations

import re
from typing import ClassVar

import requests

from secret_detection.partners.base import PartnerClient, Verdict, json_body

# The legacy API key is a UUID (gitleaks' heroku-api-key captures it next to the word
# "heroku"); the current ones are ``HRKU-`` + 60 (gitleaks' heroku-api-key-v2: ``HRKU-AA``
# + 58).
API_KEY = re.compile(
    r"\A(?:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|HRKU-[A-Za-z0-9_-]{60})\Z"
)
ACCEPT = "application/vnd.heroku+json; version=3"


class HerokuClient(PartnerClient):
    partner = "heroku"
    url_setting = "PARTNER_HEROKU_URL"
    probe_value: ClassVar[str] = "00000000-0000-0000-0000-000000000000"

    def matches(self, value: str) -> bool:
        return bool(API_KEY.match(value))

    def _call(self, value: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {value}", "Accept": ACCEPT}
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
        return self.unexpected(response)
