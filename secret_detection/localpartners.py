"""Local stand-ins for the partner APIs that direct verification calls (AWS STS, Google's
tokeninfo, Postman's ``/me``, GitHub's ``/user``, OpenAI's and Anthropic's ``/v1/models``,
SendGrid's ``/v3/scopes``, Heroku's ``/account``, Stripe's ``/v1/balance``): real HTTP
servers answering as each partner does.

A documented tool of the product, for ``make demo`` (``secret_detection.demo`` starts
them), the integration tests and the benchmark. Not for production.

Each answers "active" for a value unless it contains one of ``INACTIVE_MARKERS``
(case-insensitive; "dead" fits Postman's hex keys) or is one of the admin's "Check
connection" values (twelve ``Z`` or ``0`` in a row). Stripe answers a live restricted
key (``rk_``) with 403, as for one without the balance permission. Switches, settable while
it runs:

* ``mode``: ``normal``, ``signature_mismatch`` / ``invalid_client_token`` (AWS's two
  403s, whatever the key), ``429``, ``503``, ``500``, ``garbage`` (200 with a body that
  does not parse), `redirect:<url>` (a 307 to that URL), or any HTTP status as a string;
* ``script``: modes for the next requests, one each, before ``mode`` applies again;
* ``latency``: seconds before each answer (longer than the client's timeout: a hang);
* ``retry_after``: the ``Retry-After`` of a 429.

Standalone: ``python -m secret_detection.localpartners --port 8770`` serves them all on
one port, each under ``/<partner>`` (``/aws/``, ``/gcp/tokeninfo``, ``/postman/me``,
``/github/user``, ``/openai/v1/models``...): it prints each PARTNER_<NAME>_URL.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

INACTIVE_MARKERS = ("revoked", "inactive", "expired", "dead", "zzzzzzzzzzzz", "000000000000")
#: The path each partner's client calls (PARTNER_<NAME>_URL's path).
PATHS = {
    "aws": "/",
    "gcp": "/tokeninfo",
    "postman": "/me",
    "github": "/user",
    "openai": "/v1/models",
    "anthropic": "/v1/models",
    "sendgrid": "/v3/scopes",
    "heroku": "/account",
    "stripe": "/v1/balance",
}
PARTNERS = tuple(PATHS)
#: Partners reading the token as ``Authorization: Bearer <value>``.
_BEARER = frozenset({"github", "openai", "sendgrid", "heroku", "stripe"})
_CREDENTIAL = re.compile(r"Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request")


@dataclass
class Received:
    partner: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: The token value as the partner reads it (key id, access_token, X-API-Key).
    value: str
    #: AWS only: the SigV4 credential scope's region and service.
    region: str = ""
    service: str = ""
    answered: int = 0


def is_active(value: str) -> bool:
    lowered = value.lower()
    return bool(value) and not any(marker in lowered for marker in INACTIVE_MARKERS)


@dataclass
class PartnerStandIn:
    """One server; ``partner`` None serves them all under ``/<partner>/``."""

    partner: str | None = None
    mode: str = "normal"
    latency: float = 0.0
    #: The ``Retry-After`` of a 429 (empty: none).
    retry_after: str = "1"
    script: deque[str] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> PartnerStandIn:
        stand_in = self

        class Handler(_Handler):
            server_state = stand_in

        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 256
        self.port = self._httpd.server_address[1]
        # close() waits for the serving loop to look at its stop flag, once per poll
        # interval: at the default 0.5 s, closing the nine stand-ins took up to 4.5 s.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="partner-stand-in", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> PartnerStandIn:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, partner: str | None = None) -> str:
        """The URL to configure as PARTNER_<NAME>_URL."""
        base = f"http://{self.host}:{self.port}"
        partner = partner or self.partner
        prefix = f"/{partner}" if self.partner is None else ""
        return base + prefix + PATHS[partner or "aws"]

    # --- switches -------------------------------------------------------------------
    def then(self, *modes: str) -> None:
        with self._lock:
            self.script.extend(modes)

    def values(self, partner: str | None = None) -> list[str]:
        with self._lock:
            return [r.value for r in self.received if partner is None or r.partner == partner]

    def _next_mode(self) -> str:
        with self._lock:
            return self.script.popleft() if self.script else self.mode

    # --- answers --------------------------------------------------------------------
    def answer(self, record: Received) -> tuple[int, str, bytes, dict[str, str]]:
        mode = self._next_mode()
        if self.latency:
            time.sleep(self.latency)
        if mode == "garbage":
            return 200, "text/html", b"<html><body>Service temporarily </bo", {}
        if mode == "429":
            extra = {"Retry-After": self.retry_after} if self.retry_after else {}
            return 429, "application/json", b'{"error":"rate limited"}', extra
        if mode.startswith("redirect:"):  # to the URL after the colon
            return 307, "text/plain", b"", {"Location": mode.removeprefix("redirect:")}
        if mode.isdigit() and mode not in ("200",):
            return int(mode), "text/plain", b"error", {}
        return getattr(self, f"_{record.partner}")(record, mode)

    def _aws(self, record: Received, mode: str) -> tuple[int, str, bytes, dict[str, str]]:
        if mode == "normal":
            mode = "signature_mismatch" if is_active(record.value) else "invalid_client_token"
        code = {"signature_mismatch": "SignatureDoesNotMatch", "invalid_client_token": "InvalidClientTokenId"}[mode]
        body = (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>refused</Message></Error><RequestId>0</RequestId></ErrorResponse>"
        )
        return 403, "text/xml", body.encode(), {}

    def _gcp(self, record: Received, mode: str) -> tuple[int, str, bytes, dict[str, str]]:
        if is_active(record.value):
            return 200, "application/json", b'{"azp":"stand-in","aud":"stand-in","expires_in":"3599"}', {}
        return 400, "application/json", b'{"error":"invalid_token","error_description":"Invalid Value"}', {}

    def _postman(self, record: Received, mode: str) -> tuple[int, str, bytes, dict[str, str]]:
        if is_active(record.value):
            return 200, "application/json", b'{"user":{"id":1,"username":"stand-in"}}', {}
        return 401, "application/json", b'{"error":{"name":"AuthenticationError","message":"Invalid API Key"}}', {}

    def _github(self, record: Received, mode: str) -> tuple[int, str, bytes, dict[str, str]]:
        if is_active(record.value):
            return 200, "application/json", b'{"login":"stand-in","id":1}', {}
        return 401, "application/json", b'{"message":"Bad credentials"}', {}

    def _openai(self, record: Received, mode: str) -> tuple[int, str, bytes, dict[str, str]]:
        if is_active(record.value):
            return 200, "application/json", b'{"object":"list","data":[{"id":"gpt-4o","object":"model"}]}', {}
        body = (
            b'{"error":{"message":"Incorrect API key provided","type":"invalid_request_error",'
            b'"code":"invalid_api_key"}}'
        )
        return 401, "application/json", body, {}

    def _anthropic(self, record: Received, mode: str) -> tuple[int, str, bytes, dict[str, str]]:
        if is_active(record.value):
            body = b'{"data":[{"type":"model","id":"claude-sonnet-4-5"}],"has_more":false}'
            return 200, "application/json", body, {}
        body = b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}'
        return 401, "application/json", body, {}

    def _sendgrid(self, record: Received, mode: str) -> tuple[int, str, bytes, dict[str, str]]:
        if is_active(record.value):
            return 200, "application/json", b'{"scopes":["mail.send"]}', {}
        return 401, "application/json", b'{"errors":[{"field":null,"message":"authorization required"}]}', {}

    def _heroku(self, record: Received, mode: str) -> tuple[int, str, bytes, dict[str, str]]:
        if is_active(record.value):
            return 200, "application/json", b'{"id":"01234567-89ab-cdef-0123-456789abcdef","email":"stand-in"}', {}
        return 401, "application/json", b'{"id":"unauthorized","message":"Invalid credentials provided."}', {}

    def _stripe(self, record: Received, mode: str) -> tuple[int, str, bytes, dict[str, str]]:
        if not is_active(record.value):
            body = b'{"error":{"type":"invalid_request_error","message":"Invalid API Key provided"}}'
            return 401, "application/json", body, {}
        if record.value.startswith("rk_"):
            body = b'{"error":{"type":"invalid_request_error","message":"The provided key does not have access"}}'
            return 403, "application/json", body, {}
        return 200, "application/json", b'{"object":"balance","available":[],"livemode":false}', {}


class _Handler(BaseHTTPRequestHandler):
    server_state: PartnerStandIn
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY the second waits for the
    # client's delayed ACK (about 40 ms a request, which the benchmark counted as latency).
    disable_nagle_algorithm = True

    def _handle(self) -> None:
        state = self.server_state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        partner = state.partner
        path = url.path
        if partner is None:
            first, _, rest = path.lstrip("/").partition("/")
            partner, path = first, "/" + rest
        headers = {k.lower(): v for k, v in self.headers.items()}
        record = Received(partner or "", self.command, path, headers, body, "")
        if partner == "aws":
            match = _CREDENTIAL.search(headers.get("authorization", ""))
            if match:
                record.value, _, record.region, record.service = match.groups()
        elif partner == "gcp":
            record.value = (parse_qs(url.query).get("access_token") or [""])[0]
        elif partner in ("postman", "anthropic"):
            record.value = headers.get("x-api-key", "")
        elif partner in _BEARER:
            record.value = headers.get("authorization", "").removeprefix("Bearer ")
        answer: tuple[int, str, bytes, dict[str, str]] = (400, "text/plain", b"bad request", {})
        if partner in PARTNERS and record.value:
            answer = state.answer(record)
        status, ctype, payload, extra = answer
        record.answered = status
        with state._lock:
            state.received.append(record)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8770)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    stand_in = PartnerStandIn(host=args.host, port=args.port, latency=args.latency).start()
    for partner in PARTNERS:
        sys.stdout.write(f"PARTNER_{partner.upper()}_URL={stand_in.url(partner)}\n")
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    stand_in.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
