"""The after-export upload (GitLab's ``WebUploadStrategy``): stream the archive to a URL.

Only http(s) is allowed, and every address the host resolves to must be public unless
``ALLOW_LOCAL_REQUESTS`` is set (GitLab's ``UrlBlocker``). The connection then goes to the
address that was checked, with the original host in ``Host`` and in TLS, so a DNS answer
that changes between the check and the request cannot point the upload inward.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

import certifi
from django.conf import settings

from project.errors import PermanentError, RetryableError, ValidationFailed

logger = logging.getLogger(__name__)

SCHEMES = ("http", "https")
METHODS = ("PUT", "POST")
_USER_AGENT = "gitlab-background-jobs project-export"


class UploadUrlBlocked(ValidationFailed):
    """The URL is not one we may send an archive to (message names the reason)."""

    code = "upload_url_blocked"


class UploadUnavailable(RetryableError):
    code = "upload_unavailable"


class UploadFailed(PermanentError):
    code = "upload_failed"


@dataclass(frozen=True)
class UploadTarget:
    scheme: str
    host: str
    port: int
    request_path: str
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _blocked(reason: str) -> UploadUrlBlocked:
    return UploadUrlBlocked(f"upload[url] is blocked: {reason}")


def _classified(address: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses a connection to ``address`` may reach: an IPv4-mapped address
    (``::ffff:a.b.c.d``) is that IPv4 address; a 6to4 (``2002:AABB:CCDD::/48``) or Teredo
    address is itself and the IPv4 addresses it embeds (a relay delivers to them)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if not isinstance(ip, ipaddress.IPv6Address):
        return [ip]
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    embedded = [ip.sixtofour, *(ip.teredo or ())]
    return [ip, *(each for each in embedded if each is not None)]


def _check_address(address: str) -> None:
    """Refuse an address that is not plainly on the public internet, with GitLab's
    ``UrlBlocker`` messages.

    Classification is ``ipaddress``'s (``is_global`` and the rest), not a list of ranges,
    applied to the address and to every IPv4 address embedded in it, so that
    ``[2002:7f00:1::]`` (6to4 of 127.0.0.1) is loopback and ``[::ffff:10.0.0.1]`` private.
    Multicast, reserved and IPv6 site-local (``fec0::/10``, deprecated but still routed
    inside sites) are refused too, although some Python versions count them as global."""
    candidates = _classified(address)
    if any(each.is_loopback or each.is_unspecified for each in candidates):
        raise _blocked("Requests to localhost are not allowed")
    if any(each.is_link_local for each in candidates):
        raise _blocked("Requests to the link local network are not allowed")
    for each in candidates:
        if (
            not each.is_global
            or each.is_private
            or each.is_multicast
            or each.is_reserved
            or getattr(each, "is_site_local", False)
        ):
            raise _blocked("Requests to the local network are not allowed")


def upload_target_resolve(url: str) -> UploadTarget:
    """Parse, resolve and check an upload URL; raises ``UploadUrlBlocked`` with the reason."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _blocked("URL is invalid") from None
    if parts.scheme not in SCHEMES:
        raise _blocked("Only allowed schemes are http, https")
    host = parts.hostname
    if not host:
        raise _blocked("URL is invalid")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise _blocked("Host cannot be resolved or invalid") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise _blocked("Host cannot be resolved or invalid")
    if not settings.ALLOW_LOCAL_REQUESTS:
        for address in addresses:
            _check_address(address)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return UploadTarget(scheme=parts.scheme, host=host, port=port, request_path=path, addresses=addresses)


def upload_method_clean(value: str | None) -> str:
    # Case-sensitive, as GitLab's Grape ``values: %w[PUT POST]`` is: "put" is refused.
    method = value or "PUT"
    if method not in METHODS:
        raise ValidationFailed("upload[http_method] does not have a valid value")
    return method


CHUNK = 64 * 1024
#: How long one socket wait lasts before the upload checks in with the toolkit again.
TICK = 0.25


def _connect(target: UploadTarget, timeout: float) -> socket.socket:
    sock = socket.create_connection((target.addresses[0], target.port), timeout=timeout)
    if target.scheme == "https":
        context = ssl.create_default_context(cafile=certifi.where())
        sock = context.wrap_socket(sock, server_hostname=target.host)
    return sock


def _send_body(sock: socket.socket, body: BinaryIO, on_progress: Callable[[int], None], stall: float) -> None:
    """Stream the body in chunks with short socket waits, so ``on_progress`` runs at least
    every TICK seconds even when the far side stops reading (it may raise to stop)."""
    sent = 0
    last_moved = time.monotonic()
    sock.settimeout(TICK)
    while chunk := body.read(CHUNK):
        view = memoryview(chunk)
        while view:
            on_progress(sent)
            try:
                written = sock.send(view)
            except TimeoutError:
                if time.monotonic() - last_moved > stall:
                    raise
                continue
            view = view[written:]
            sent += written
            last_moved = time.monotonic()
    on_progress(sent)


def _await_response(sock: socket.socket, on_progress: Callable[[int], None], sent: int, stall: float) -> None:
    waited_since = time.monotonic()
    pending = getattr(sock, "pending", lambda: 0)
    while not pending():
        readable, _, _ = select.select([sock], [], [], TICK)
        if readable:
            return
        on_progress(sent)
        if time.monotonic() - waited_since > stall:
            raise TimeoutError("no response")


def archive_upload(
    *, url: str, method: str, body: BinaryIO, size: int, on_progress: Callable[[int], None] | None = None
) -> int:
    """Stream ``body`` (``size`` bytes) to ``url``; returns the HTTP status.

    ``on_progress(bytes_sent)`` runs between chunks and while waiting for the answer, at
    least every TICK seconds; the export job reports progress there, and the toolkit
    stops a cancelled export by raising from it. A far side that takes nothing for
    EXPORT_UPLOAD_TIMEOUT seconds fails the attempt.

    Network failures are retryable; an answer other than 2xx fails the export with its
    code, as GitLab's "Error uploading the project. Code …". Messages name the host only:
    the URL may carry a signature.
    """
    try:
        target = upload_target_resolve(url)
    except UploadUrlBlocked as exc:
        if "cannot be resolved" in str(exc.message):
            raise UploadUnavailable("The upload host cannot be resolved.") from None
        raise PermanentError(str(exc.message), code=exc.code) from None
    report = on_progress or (lambda sent: None)
    stall = settings.EXPORT_UPLOAD_TIMEOUT
    conn = http.client.HTTPConnection(target.host, target.port, timeout=stall)
    try:
        conn.sock = _connect(target, stall)
        conn.putrequest(method, target.request_path, skip_host=True, skip_accept_encoding=True)
        for name, value in (
            ("Host", target.host_header),
            ("Content-Length", str(size)),
            ("Content-Type", "application/gzip"),
            ("User-Agent", _USER_AGENT),
        ):
            conn.putheader(name, value)
        conn.endheaders()
        _send_body(conn.sock, body, report, stall)
        _await_response(conn.sock, report, size, stall)
        conn.sock.settimeout(stall)
        response = conn.getresponse()
        status, reason = response.status, response.reason or ""
        response.read(1 << 16)
    except (OSError, http.client.HTTPException) as exc:
        logger.warning("export upload failed", extra={"host": target.host, "error": type(exc).__name__})
        raise UploadUnavailable(f"Could not upload the project to {target.host}: {type(exc).__name__}.") from None
    finally:
        conn.close()
    logger.info("export uploaded", extra={"host": target.host, "status": status, "bytes": size})
    if not 200 <= status < 300:
        raise UploadFailed(f"Error uploading the project. Code {status}: {reason}".rstrip(": "))
    return status
