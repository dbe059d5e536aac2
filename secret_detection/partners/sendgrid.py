"""SendGrid: ``GET /v3/scopes`` with the key as a bearer (GitLab's later
``SendgridClient``).

Every key may read its own scopes, so 200 means the key authenticated; SendGrid answers a
revoked or unknown key with 401, and with 403 a key it refuses outright (a disabled
account or key): both inactive.
"""

from __future__ import annotations

import re
from typing import ClassVar

import requests

from secret_detection.partners.base import PartnerClient, Verdict, json_body

# ``SG.`` + the 22-character key id + ``.`` + the 43-character secret (gitleaks'
# sendgrid-api-token allows 66 characters of that alphabet after ``SG.``).
API_KEY = re.compile(r"\ASG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\Z")


class SendgridClient(PartnerClient):
    partner = "sendgrid"
    url_setting = "PARTNER_SENDGRID_URL"
    probe_value: ClassVar[str] = "SG." + "0" * 22 + "." + "0" * 43

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
        if status in (401, 403):
            return Verdict("inactive", http_status=status)
        if status == 429:
            raise self.rate_limited(response)
        if status >= 500:
            raise self.server_error(response)
        return self.unexpected(response)
