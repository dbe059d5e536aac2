"""Google Cloud: the OAuth2 tokeninfo endpoint (GitLab's PartnerTokens GCP client)."""

from __future__ import annotations

import re
from typing import ClassVar

import requests

from secret_detection.partners.base import PartnerClient, Verdict, json_body

API_KEY = re.compile(r"\AAIza[0-9A-Za-z_-]{35}\Z")
ACCESS_TOKEN = re.compile(r"\Aya29\.[0-9A-Za-z._-]{100,}\Z")
# OAuth client secrets and service-account key material: long opaque strings.
OPAQUE = re.compile(r"\A[A-Za-z0-9_-]{24,}\Z")


class GcpClient(PartnerClient):
    partner = "gcp"
    url_setting = "PARTNER_GCP_URL"
    probe_value: ClassVar[str] = "ya29." + "0" * 120

    def matches(self, value: str) -> bool:
        return any(pattern.match(value) for pattern in (API_KEY, ACCESS_TOKEN, OPAQUE))

    def _call(self, value: str) -> requests.Response:
        # ``params`` escapes the value; it goes in the query as Google's endpoint expects.
        return self.session.get(self.url, params={"access_token": value}, timeout=self.timeout)

    def _interpret(self, response: requests.Response) -> Verdict:
        status = response.status_code
        if status == 200:
            json_body(self, response)
            return Verdict("active", http_status=status)
        if status in (400, 401):
            return Verdict("inactive", http_status=status)
        if status == 429:
            raise self.rate_limited(response)
        if status >= 500:
            raise self.server_error(response)
        return self.unexpected(response)
