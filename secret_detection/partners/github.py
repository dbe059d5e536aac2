"""GitHub: ``GET /user`` with the token as a bearer (personal access tokens, classic and
fine-grained, and OAuth access tokens: both act as a user, so /user answers for them)."""

from __future__ import annotations

import re
from typing import ClassVar

import requests

from secret_detection.partners.base import PartnerClient, Verdict, json_body

TOKEN = re.compile(r"\A(?:gh[po]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{82})\Z")


class GithubClient(PartnerClient):
    partner = "github"
    url_setting = "PARTNER_GITHUB_URL"
    probe_value: ClassVar[str] = "ghp_" + "0" * 36

    def matches(self, value: str) -> bool:
        return bool(TOKEN.match(value))

    def _call(self, value: str) -> requests.Response:
        headers = {
            "Authorization": f"Bearer {value}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        return self.session.get(self.url, headers=headers, timeout=self.timeout)

    def _interpret(self, response: requests.Response) -> Verdict:
        status = response.status_code
        if status == 200:
            json_body(self, response)
            return Verdict("active", http_status=status)
        if status == 401:
            return Verdict("inactive", http_status=status)
        # GitHub signals its rate limit with 403 and no requests left, or 429.
        if status == 429 or (status == 403 and response.headers.get("X-RateLimit-Remaining") == "0"):
            raise self.rate_limited(response)
        if status >= 500:
            raise self.server_error(response)
        return self.unexpected(response)
