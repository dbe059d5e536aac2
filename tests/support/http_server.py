"""A real HTTP server on 127.0.0.1 that records what it receives (integration tests)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    size: int
    sha256: str


@dataclass
class RecordingServer:
    host: str
    port: int
    status: int = 200
    requests: list[Received] = field(default_factory=list)

    def url(self, path: str = "/upload") -> str:
        return f"http://{self.host}:{self.port}{path}"


def _handler(server: RecordingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _receive(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            digest, size = hashlib.sha256(), 0
            while size < length:
                chunk = self.rfile.read(min(65536, length - size))
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
            server.requests.append(
                Received(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, size, digest.hexdigest()
                )
            )
            self.send_response(server.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PUT = do_POST = _receive

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler


@contextmanager
def recording_server(status: int = 200) -> Iterator[RecordingServer]:
    recorder = RecordingServer(host="127.0.0.1", port=0, status=status)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    recorder.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
