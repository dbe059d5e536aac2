"""AWS: STS GetCallerIdentity signed (SigV4) with the found key id and a dummy secret.

STS checks the key id before the signature: an unknown or disabled key id answers 403
InvalidClientTokenId (inactive); a live one fails on our dummy secret with 403
SignatureDoesNotMatch (active). The secret is never known, so nothing is ever done as
the key's owner.
"""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import urlsplit
from xml.etree import ElementTree

import requests
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from secret_detection.partners.base import PartnerClient, Verdict

KEY_ID = re.compile(r"\AAKIA[0-9A-Z]{16}\Z")
BODY = "Action=GetCallerIdentity&Version=2011-06-15"
# Not a secret: STS must reject the signature, which is the whole point.
DUMMY_SECRET = "0" * 40
REGION = "us-east-1"
ACTIVE_CODES = frozenset({"SignatureDoesNotMatch", "InvalidSignature"})


def _error_code(body: bytes) -> str | None:
    """The ``Code`` of an STS ``ErrorResponse`` (namespaced or not); None when the body is
    not XML. STS bodies are small; the XML comes from the operator-set endpoint."""
    try:
        root = ElementTree.fromstring(body)  # noqa: S314
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Code":
            return (element.text or "").strip()
    return ""


class AwsClient(PartnerClient):
    partner = "aws"
    url_setting = "PARTNER_AWS_URL"
    probe_value: ClassVar[str] = "AKIA" + "Z" * 16

    def matches(self, value: str) -> bool:
        return bool(KEY_ID.match(value))

    def signed_headers(self, value: str) -> dict[str, str]:
        request = AWSRequest(
            method="POST",
            url=self.url,
            data=BODY,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
        SigV4Auth(Credentials(access_key=value, secret_key=DUMMY_SECRET), "sts", REGION).add_auth(request)
        headers = {name: str(v) for name, v in request.headers.items()}
        headers.setdefault("Host", urlsplit(self.url).netloc)
        return headers

    def _call(self, value: str) -> requests.Response:
        return self.session.post(self.url, data=BODY, headers=self.signed_headers(value), timeout=self.timeout)

    def _interpret(self, response: requests.Response) -> Verdict:
        status = response.status_code
        if status == 200:
            if _error_code(response.content) is None:
                raise self.response_error(response, "the body is not XML")
            return Verdict("active", http_status=status)
        if status == 403:
            code = _error_code(response.content)
            if code is None:
                raise self.response_error(response, "the 403's body is not XML")
            return Verdict("active" if code in ACTIVE_CODES else "inactive", http_status=status)
        if status in (429, 503):
            raise self.rate_limited(response)
        if status in (500, 502, 504):
            raise self.server_error(response)
        return self.unexpected(response)
