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
    # shutdown() waits for the loop's next look at its stop flag (0.5 s apart by default).
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@dataclass
class StallingServer:
    """Takes a connection and the request's headers, then reads nothing more and never
    answers: an upload target that stalls mid-body."""

    host: str
    port: int
    connections: list = field(default_factory=list)

    def url(self, path: str = "/upload") -> str:
        return f"http://{self.host}:{self.port}{path}"


@contextmanager
def stalling_server() -> Iterator[StallingServer]:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    # A small receive buffer, so the sender soon finds the connection full.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server = StallingServer(host="127.0.0.1", port=listener.getsockname()[1])
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.recv(1024)  # the request line and headers; the body is never read
            server.connections.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in server.connections:
            conn.close()
        listener.close()
