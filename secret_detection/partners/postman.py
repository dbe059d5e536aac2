"""Postman: ``GET /me`` with the key in ``X-API-Key``."""

from __future__ import annotations

import re
from typing import ClassVar

import requests

from secret_detection.partners.base import PartnerClient, Verdict, json_body

API_KEY = re.compile(r"\APMAK-[a-f0-9]{24}-[a-f0-9]{34}\Z")


class PostmanClient(PartnerClient):
    partner = "postman"
    url_setting = "PARTNER_POSTMAN_URL"
    probe_value: ClassVar[str] = "PMAK-" + "0" * 24 + "-" + "0" * 34

    def matches(self, value: str) -> bool:
        return bool(API_KEY.match(value))

    def _call(self, value: str) -> requests.Response:
        return self.session.get(
            self.url, headers={"X-API-Key": value, "Accept": "application/json"}, timeout=self.timeout
        )

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
