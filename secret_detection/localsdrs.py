"""A local SDRS-compatible HTTP server: a stand-in for the partner verification service.

A documented tool of the product, for ``make demo`` (which starts it, see
``secret_detection.demo``), the integration tests and the benchmark. Not for production.

It speaks SDRS's side of the contract: ``POST /api/v1/token/verify`` with an RS256 JWT
(checked against the public key: iss ``sdrs-client``, aud ``sdrs``, ``sub``,
``project_id``, ``finding_id``), answers 202, and later POSTs the result to the request's
``callback_url``, signed with the shared secret (``X-SDRS-Timestamp`` and
``X-SDRS-Signature: sha256=<hmac>``). A token value containing "revoked", "inactive" or
"expired" is reported inactive, one containing "lost" gets no callback, any other is
active. Failures can be injected while it runs: latency (longer than the client's timeout
makes a timeout), a fixed status (500, 401...), 429 with ``Retry-After``, the next N
answers, or "fail once with 500" for a share of findings.

Standalone (Django is not needed; ``--help`` lists the options)::

    python -m secret_detection.localsdrs --port 8765 --public-key var/sdrs/public.pem \\
        --callback-secret-file var/sdrs/callback_secret --callback-delay 2

In Python (tests)::

    with SdrsServer(public_key=public_pem, callback_secret="s3cret") as sdrs:
        ...  # point the SDRS URL at sdrs.url; inspect sdrs.verifies, sdrs.callbacks
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import queue
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import requests

__all__ = [
    "INACTIVE_MARKERS",
    "VERIFY_PATH",
    "CallbackRecord",
    "Failures",
    "SdrsServer",
    "VerifyRecord",
    "default_decision",
    "keypair",
    "main",
    "sign",
]

logger = logging.getLogger("sdrs")

VERIFY_PATH = "/api/v1/token/verify"
INACTIVE_MARKERS = ("revoked", "inactive", "expired")


def keypair() -> tuple[str, str]:
    """A fresh RSA key pair as PEM text: (private key for the client, public key for SDRS)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def sign(*, secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def default_decision(token_type: str, token_value: str) -> str | None:
    """The partner's verdict: inactive when the value says so, otherwise active; a value
    containing "lost" gets no callback at all (SDRS accepted it, then lost it)."""
    lowered = token_value.lower()
    if "lost" in lowered:
        return None
    return "inactive" if any(marker in lowered for marker in INACTIVE_MARKERS) else "active"


@dataclass
class Failures:
    """What to do wrong; change the attributes while the server runs."""

    latency: float = 0.0
    status: int | None = None
    retry_after: int | None = None
    fail_once_percent: float = 0.0
    next_statuses: list[int] = field(default_factory=list)
    #: Answer every request for these token types with this status (a partner's outage).
    status_by_token_type: dict[str, int] = field(default_factory=dict)
    #: Accept requests but never call back (SDRS lost them).
    drop_callbacks: bool = False


@dataclass
class VerifyRecord:
    request_id: str
    finding_id: int | None
    token_type: str
    token_sha256: str
    answered: int
    at: float
    subject: str = ""
    project_id: int | None = None


@dataclass
class CallbackRecord:
    finding_id: int
    status: str
    request_id: str
    http_status: int | None
    error: str = ""


class SdrsServer:
    def __init__(
        self,
        *,
        public_key: str,
        callback_secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        callback_delay: float = 0.0,
        callback_workers: int = 4,
        decide=default_decision,
    ) -> None:
        self.public_key = public_key
        self.callback_secret = callback_secret
        self.host = host
        self.port = port
        self.callback_delay = callback_delay
        self.decide = decide
        self.failures = Failures()
        self.verifies: list[VerifyRecord] = []
        self.callbacks: list[CallbackRecord] = []
        self.rejections: Counter[str] = Counter()
        self._failed_once: set[int] = set()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._callback_queue: queue.Queue = queue.Queue()
        self._pending_callbacks = 0
        self._in_flight = 0
        #: The most verify requests it was handling at once.
        self.max_in_flight = 0
        self._callback_threads = [
            threading.Thread(target=self._callback_worker, name=f"sdrs-callback-{n}", daemon=True)
            for n in range(callback_workers)
        ]
        for thread in self._callback_threads:
            thread.start()

    # --- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SdrsServer:
        server = self

        class Handler(_Handler):
            sdrs = server

        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        # stop() waits for the serving loop to look at its stop flag, once per poll interval
        # (0.5 s by default): tests and demos stop and restart it.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="sdrs-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are then refused); ``start()`` again reuses the port."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def close(self) -> None:
        self.stop()
        for _ in self._callback_threads:
            self._callback_queue.put(None)

    def __enter__(self) -> SdrsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inspection -----------------------------------------------------------------

    def accepted(self) -> list[VerifyRecord]:
        with self._lock:
            return [record for record in self.verifies if record.answered == 202]

    def callbacks_idle(self) -> bool:
        with self._lock:
            return self._pending_callbacks == 0

    # --- verify requests ------------------------------------------------------------

    def _injected_status(self, finding_id: int | None, token_type: Any) -> int | None:
        with self._lock:
            if self.failures.next_statuses:
                return self.failures.next_statuses.pop(0)
            if self.failures.status is not None:
                return self.failures.status
            if token_type in self.failures.status_by_token_type:
                return self.failures.status_by_token_type[token_type]
            if finding_id is not None and self.failures.fail_once_percent > 0 and finding_id not in self._failed_once:
                bucket = int(hashlib.sha256(str(finding_id).encode()).hexdigest(), 16) % 10000
                if bucket < self.failures.fail_once_percent * 100:
                    self._failed_once.add(finding_id)
                    return 500
        return None

    def _claims(self, authorization: str) -> dict[str, Any] | None:
        if not authorization.lower().startswith("bearer "):
            return None
        try:
            claims = jwt.decode(
                authorization[7:],
                self.public_key,
                algorithms=["RS256"],
                audience="sdrs",
                issuer="sdrs-client",
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            self.rejections[exc.__class__.__name__] += 1
            return None
        if not str(claims.get("sub", "")).startswith("user:") or not isinstance(claims.get("finding_id"), int):
            self.rejections["claims"] += 1
            return None
        if not isinstance(claims.get("project_id"), int):
            self.rejections["claims"] += 1
            return None
        return claims

    def handle_verify(self, headers: Any, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return self._verify(headers, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _verify(self, headers: Any, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.failures.latency:
            time.sleep(self.failures.latency)
        request_id = headers.get("X-Request-ID", "")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        finding_id = payload.get("finding_id") if isinstance(payload, dict) else None
        token_type = payload.get("token_type") if isinstance(payload, dict) else None
        forced = self._injected_status(finding_id if isinstance(finding_id, int) else None, token_type)
        if forced is not None:
            extra = {}
            if forced in (429, 503) and self.failures.retry_after is not None:
                extra["Retry-After"] = str(self.failures.retry_after)
            self._record(request_id, payload, forced)
            return forced, {"error": f"injected {forced}"}, extra
        claims = self._claims(headers.get("Authorization", ""))
        if claims is None:
            self._record(request_id, payload, 401)
            return 401, {"error": "invalid token"}, {}
        problem = _body_problem(payload, claims)
        if problem:
            self._record(request_id, payload, 400, claims)
            return 400, {"error": problem}, {}
        self._record(request_id, payload, 202, claims)
        status = self.decide(payload["token_type"], payload["token_value"])
        if self.failures.drop_callbacks or status is None:
            # Accepted, then lost: no callback will ever come for this request.
            return 202, {"status": "accepted", "request_id": request_id}, {}
        with self._lock:
            self._pending_callbacks += 1
        self._callback_queue.put(
            (time.monotonic() + self.callback_delay, payload["callback_url"], payload["finding_id"], status, request_id)
        )
        return 202, {"status": "accepted", "request_id": request_id}, {}

    def _record(self, request_id: str, payload: Any, answered: int, claims: dict | None = None) -> None:
        payload = payload if isinstance(payload, dict) else {}
        value = payload.get("token_value") if isinstance(payload.get("token_value"), str) else ""
        record = VerifyRecord(
            request_id=request_id,
            finding_id=payload.get("finding_id") if isinstance(payload.get("finding_id"), int) else None,
            token_type=str(payload.get("token_type", "")),
            token_sha256=hashlib.sha256(value.encode()).hexdigest(),
            answered=answered,
            at=time.time(),
            subject=str((claims or {}).get("sub", "")),
            project_id=(claims or {}).get("project_id"),
        )
        with self._lock:
            self.verifies.append(record)
        logger.info("verify finding %s (%s): %s", record.finding_id, record.token_type, answered)

    # --- callbacks ------------------------------------------------------------------

    def _callback_worker(self) -> None:
        session = requests.Session()
        while True:
            item = self._callback_queue.get()
            if item is None:
                return
            due, url, finding_id, status, request_id = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            record = self.send_callback(
                url=url, finding_id=finding_id, status=status, request_id=request_id, session=session
            )
            with self._lock:
                self.callbacks.append(record)
                self._pending_callbacks -= 1
            logger.info("callback finding %s: %s -> %s", finding_id, status, record.http_status or record.error)

    def send_callback(
        self,
        *,
        url: str,
        finding_id: int,
        status: str,
        request_id: str,
        verified_at: datetime | None = None,
        session: requests.Session | None = None,
    ) -> CallbackRecord:
        body = json.dumps(
            {
                "finding_id": finding_id,
                "status": status,
                "verified_at": (verified_at or datetime.now(UTC)).isoformat(),
                "request_id": request_id,
            }
        ).encode()
        http_status, error = None, ""
        for attempt in range(3):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-SDRS-Timestamp": timestamp,
                "X-SDRS-Signature": sign(secret=self.callback_secret, timestamp=timestamp, body=body),
            }
            try:
                response = (session or requests).post(url, data=body, headers=headers, timeout=10)
                http_status, error = response.status_code, ""
                if response.status_code < 500:
                    break
            except requests.RequestException as exc:
                error = exc.__class__.__name__
            time.sleep(0.2 * (attempt + 1))
        return CallbackRecord(finding_id, status, request_id, http_status, error)


def _body_problem(payload: Any, claims: dict[str, Any]) -> str:
    if not isinstance(payload, dict):
        return "the body must be a JSON object"
    for key in ("token_type", "token_value", "callback_url"):
        if not isinstance(payload.get(key), str) or not payload[key]:
            return f"{key} is required"
    if not isinstance(payload.get("finding_id"), int) or payload["finding_id"] != claims["finding_id"]:
        return "finding_id must match the token's finding_id"
    if not payload["callback_url"].startswith(("http://", "https://")):
        return "callback_url must be an http(s) URL"
    return ""


class _Handler(BaseHTTPRequestHandler):
    sdrs: SdrsServer
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service would allow
    # Headers and body go out in two writes; without TCP_NODELAY the second waits for the
    # client's delayed ACK (about 40 ms a request).
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path != VERIFY_PATH:
            self._send(404, {"error": "not found"})
            return
        status, payload, extra = self.sdrs.handle_verify(self.headers, body)
        self._send(status, payload, extra)

    def do_GET(self) -> None:
        self._send(404, {"error": "not found"})

    def _send(self, status: int, payload: dict, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m secret_detection.localsdrs",
        description="A local SDRS-compatible server (partner token verification), for demos and tests.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--public-key", required=True, help="PEM file of the public key that checks the JWTs")
    parser.add_argument("--callback-secret-file", required=True, help="file holding the shared callback secret")
    parser.add_argument("--callback-delay", type=float, default=2.0, help="seconds before calling back")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering each request")
    parser.add_argument("--fail-once-percent", type=float, default=0.0, help="500 once for this share of findings")
    parser.add_argument("--drop-callbacks", action="store_true", help="accept requests but never call back")
    parser.add_argument("--callback-workers", type=int, default=4, help="threads sending callbacks")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s sdrs: %(message)s")
    server = SdrsServer(
        public_key=Path(args.public_key).read_text(),
        callback_secret=Path(args.callback_secret_file).read_text().strip(),
        host=args.host,
        port=args.port,
        callback_delay=args.callback_delay,
        callback_workers=args.callback_workers,
    )
    server.failures.latency = args.latency
    server.failures.fail_once_percent = args.fail_once_percent
    server.failures.drop_callbacks = args.drop_callbacks
    server.start()
    logger.info("listening on %s (callbacks after %.1f s)", server.url, args.callback_delay)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
