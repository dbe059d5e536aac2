"""No signed upload URL and no admin search term reaches a log line.

A known signature travels in ``upload[url]`` (in the query string of the export request)
and as an admin search term (``?q=``); every log line the site writes is captured, at
DEBUG, where it is written (the console handler of the site's LOGGING, and a real
gunicorn's access and error logs with the project's config), and searched for it.

Before: the access log's request line (``%(r)s``) had both; django.request's warning had
them in its ``request`` extra (``<WSGIRequest: POST '/api/v4/…/export?upload%5Burl%5D=…'>``);
urllib3 logged ``"PUT /bucket/…?…"`` at debug level; gunicorn's "Error handling request"
quoted the request target.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import requests
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from project.logs import JsonFormatter, RedactFilter, TextFormatter
from tests.exports.conftest import latest_job, run_attempt
from tests.support.cluster import database_url, process_activity, wait_until
from tests.support.http_server import recording_server

ROOT = Path(__file__).resolve().parents[2]
#: Matched by no rule but the one that cuts query strings: not a token format, not long,
#: not after a key the redaction knows (``proof=`` rather than ``signature=``).
SIGNATURE = "Kq7ZfA2mWxN3"
SEARCH_TERM = "AKIQzz-my-leaked-key"


def _signed(url: str) -> str:
    return f"{url}?expires=1900000000&proof={SIGNATURE}"


def _console() -> logging.Handler:
    (handler,) = [h for h in logging.getLogger().handlers if h.get_name() == "console"]
    return handler


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """What the site's console handler writes (every logger reaches it), at DEBUG."""
    handler = _console()
    output = io.StringIO()
    previous_stream = handler.setStream(output)
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "urllib3", "urllib3.connectionpool")}
    root.setLevel(logging.DEBUG)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    try:
        yield output
    finally:
        handler.setStream(previous_stream)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_the_site_logging_masks_query_strings_in_every_logger() -> None:
    handler = _console()
    assert any(isinstance(f, RedactFilter) for f in handler.filters)
    for name in ("django.request", "urllib3.connectionpool"):
        # Before any handler, Django's own (mail_admins; its console in DEBUG) included.
        assert any(isinstance(f, RedactFilter) for f in logging.getLogger(name).filters), name


@pytest.mark.django_db
def test_no_signature_or_search_term_in_any_log_line_of_the_django_stack(
    logged, settings, api, project, maintainer, developer, admin_client, no_broker
) -> None:
    settings.ALLOW_LOCAL_REQUESTS = True
    with recording_server() as server:
        upload_url = _signed(server.url("/bucket/project.tar.gz"))
        query = urlencode({"upload[url]": upload_url, "upload[http_method]": "PUT"})
        path = f"/api/v4/projects/{project.pk}/export?{query}"
        # Accepted, then exported and uploaded (the worker's log lines).
        assert api(maintainer).post(path).status_code == 202
        assert run_attempt(latest_job(maintainer, project)) == "succeeded"
        (received,) = server.requests
        assert SIGNATURE in received.path  # the signature did travel, to the upload only
        # Refused: django.request logs a warning with the request.
        assert api(developer).post(path).status_code == 403
        assert api().post(path).status_code == 401
        # urllib3 at debug level: "PUT /bucket/project.tar.gz?… HTTP/1.1".
        requests.put(_signed(server.url("/bucket/other.tar.gz")), data=b"x", timeout=5).close()
    # An error quoting a URL, with its traceback.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    try:
        requests.put(_signed(f"http://127.0.0.1:{closed}/bucket/x"), timeout=2)
    except requests.ConnectionError:
        logging.getLogger("exports.clients").exception("upload failed")
    # Admin search terms: a search, and a 404 (django.request) with the term in its query.
    assert admin_client.get("/admin/secret_detection/finding/", {"q": SEARCH_TERM}).status_code == 200
    assert admin_client.get("/admin/nothing-here/", {"q": SEARCH_TERM}).status_code == 404

    text = logged.getvalue()
    assert "Forbidden: /api/v4/projects/" in text
    assert "Not Found: /admin/nothing-here/" in text
    assert "urllib3.connectionpool" in text
    assert "Traceback" in text
    assert "?…" in text  # masked, not dropped
    assert SIGNATURE not in text
    assert SEARCH_TERM not in text
    assert quote(SIGNATURE) not in text


def test_the_filter_masks_messages_extras_objects_and_tracebacks() -> None:
    class Request:
        def __repr__(self) -> str:
            query = f"upload%5Burl%5D=https%3A%2F%2Fs3%3Fproof%3D{SIGNATURE}"
            return f"<WSGIRequest: POST '/api/v4/projects/1/export?{query}'>"

    logger = logging.getLogger("tests.redaction")
    record = logger.makeRecord(
        logger.name,
        logging.WARNING,
        __file__,
        1,
        "PUT %s failed",
        (f"/bucket/a.tar.gz?proof={SIGNATURE}",),
        None,
        extra={
            "request": Request(),
            "url": f"https://uploads.example.com/a?proof={SIGNATURE}",
            "urls": [f"https://uploads.example.com/b?proof={SIGNATURE}"],
            "finding_id": 7,
        },
    )
    try:
        raise RuntimeError(f"Max retries exceeded with url: /bucket/a.tar.gz?proof={SIGNATURE}")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    assert RedactFilter().filter(record)
    assert RedactFilter().filter(record)  # a second pass (logger, then handler) changes nothing more
    text = TextFormatter().format(record)
    assert SIGNATURE not in text
    assert "/bucket/a.tar.gz?…" in text
    line = JsonFormatter().format(record)
    assert SIGNATURE not in line
    payload = json.loads(line)
    assert (payload["message"], payload["finding_id"]) == ("PUT /bucket/a.tar.gz?… failed", 7)
    assert payload["url"] == "https://uploads.example.com/a?…"
    assert payload["request"] == "<WSGIRequest: POST '/api/v4/projects/1/export?…'>"
    assert "/bucket/a.tar.gz?…" in payload["exception"]


# --- a real gunicorn with the project's config --------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db
def test_no_signature_or_search_term_in_gunicorns_logs(project, tmp_path) -> None:
    port = _free_port()
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "LOG_LEVEL": "debug",
        "WEB_THREADS": "2",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "project.wsgi:application",
                "--config",
                str(ROOT / "project" / "gunicorn_conf.py"),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def serving() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                # The worker loads the application on its first request: slow on a busy machine.
                requests.get(f"http://127.0.0.1:{port}/-/liveness", timeout=10).close()
            except requests.RequestException:
                return False
            return True

        wait_until(
            serving,
            progress=process_activity(process, files=[log]),
            stall=60,
            message=lambda: f"gunicorn did not start:\n{log.read_text()}",
        )
        base = f"http://127.0.0.1:{port}"
        query = urlencode({"upload[url]": _signed("https://uploads.example.com/bucket/a.tar.gz")})
        answers = [
            requests.post(f"{base}/api/v4/projects/{project.pk}/export?{query}", timeout=10).status_code,
            requests.get(
                f"{base}/admin/secret_detection/finding/", params={"q": SEARCH_TERM}, timeout=10, allow_redirects=False
            ).status_code,
            requests.get(f"{base}/admin/nothing-here/", params={"q": SEARCH_TERM}, timeout=10).status_code,
        ]
        assert answers[0] in (401, 404)
        assert answers[1] == 302
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    logged = f'"POST /api/v4/projects/{project.pk}/export HTTP/1.1"'
    wait_until(
        lambda: logged in log.read_text(), progress=process_activity(files=[log]), stall=5, message=log.read_text
    )
    text = log.read_text()
    # The access log names each request by its path, without the query.
    assert f'"POST /api/v4/projects/{project.pk}/export HTTP/1.1" {answers[0]}' in text, text
    assert '"GET /admin/secret_detection/finding/ HTTP/1.1" 302' in text, text
    assert SIGNATURE not in text, text
    assert SEARCH_TERM not in text, text


_PIECES = (
    *("a", "Z", "0", "_", "-", ".", ":", "/", "?", "=", "&", " ", "\n", "'", '"', "<", "("),
    *("https://h/p", "token", "sig", "-----BEGIN KEY-----", "-----END KEY-----", "ghp_", "glpat-"),
    *("AKIA", "xoxb-", "ya29.", "sk-", "abcd", "0123456789", "token=x", "/p?q=1", "PMAK-abcd"),
    *("+", "abcdefghijklmnopqrst", "Process-1:3\n", "probe.noop"),
)


@hypothesis_settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=8) | st.lists(st.sampled_from(_PIECES), max_size=30))
@example(["token=x"])
@example(["/p?q=1"])
@example(["a", "://b?c"])
@example(["ghp_", "abcd"])
@example(["-----BEGIN KEY-----"])
@example(["0123456789"] * 4)
@example(["abcdefghijklmnopqrst", "-", "abcdefghijklmnopqrs"])
@example(["abcdefghijklmnopqrst", "abcdefghijklmnopqrs", ".", "abcd"])
def test_the_shortcut_masks_exactly_what_every_rule_masks(pieces) -> None:
    # redact() skips the rules for a text that has nothing any rule needs (no literal a
    # rule needs, no run long enough to be opaque): it must give what applying every rule
    # gives, for any text, short or long.
    from project.redact import _RULES, redact

    text = "".join(pieces)
    expected = text
    for pattern, replacement in _RULES:
        expected = pattern.sub(replacement, expected)
    assert redact(text) == expected
