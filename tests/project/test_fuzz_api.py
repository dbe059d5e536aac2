"""Arbitrary text against every text input of the core and export API (defect 3): never a
5xx. Hypothesis drives the inputs this module names; schemathesis then drives every
operation of the served schema (/api/openapi.json) over HTTP, with a bounded budget.

Upload URLs are resolved by a stand-in for DNS (as strict as the real resolver about
names, and it never goes to the network): every name resolves to a public address."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from project.models import ApplicationSetting
from tests.support.cluster import wait_until

pytestmark = pytest.mark.django_db

#: Text as an attacker sends it: any code point, lone surrogates and NUL included, plus a
#: few that broke things before.
ANY_CHARACTER = st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
NASTY = st.sampled_from(
    [
        "\x00",
        "\ud800",
        "a/b\x00",
        "%00",
        "../../etc/passwd",
        "\u2028",
        "💥",
        "x" * 5001,
        "http://[::1",
        "http://xn--/",
        "https://" + "a" * 300 + ".example/",
        "99999999999999999999999999",
        "-1",
        "0",
        " ",
    ]
)
TEXT = st.one_of(NASTY, st.text(ANY_CHARACTER, max_size=40))
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,  # nothing written into the checkout (.hypothesis/)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def resolver(monkeypatch):
    """Every host name resolves to one public address, after the same name checks as the
    real resolver (a name it cannot encode raises UnicodeError)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in ("localhost", "127.0.0.1", "::1"):
            return real(host, port, *args, **kwargs)
        if isinstance(host, str):
            host.encode("idna")
        if str(host).endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def no_limits(db) -> None:
    ApplicationSetting.objects.update_or_create(
        pk=1, defaults={"project_export_limit": 0, "project_download_export_limit": 0}
    )


def _path(text: str, safe: str = "") -> str:
    return quote(text, safe=safe, errors="surrogatepass")


def _no_server_error(response) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:300])


# --- Hypothesis: the inputs of the core and export API ------------------------------------------


def test_project_paths(api, owner, project) -> None:
    client, anonymous = api(owner), api()

    @FUZZ
    @given(ref=TEXT, slashes=st.booleans())
    def check(ref: str, slashes: bool) -> None:
        path = _path(ref, safe="/" if slashes else "")
        for answer in (client.get(f"/api/v4/projects/{path}"), anonymous.get(f"/api/v4/projects/{path}")):
            _no_server_error(answer)
        _no_server_error(client.get(f"/api/v4/projects/{path}/export"))

    check()


def test_export_parameters_as_json(api, maintainer, project, resolver, no_limits, no_broker) -> None:
    client = api(maintainer)

    @FUZZ
    @given(
        description=st.one_of(st.none(), TEXT),
        url=st.one_of(st.none(), TEXT, TEXT.map(lambda text: f"https://uploads.example/{text}")),
        method=st.one_of(st.none(), TEXT, st.sampled_from(["PUT", "post", "PATCH"])),
    )
    def check(description, url, method) -> None:
        body = {"description": description, "upload": {"url": url, "http_method": method}}
        answer = client.post(f"/api/v4/projects/{project.pk}/export", json.dumps(body), content_type="application/json")
        _no_server_error(answer)

    check()


def test_export_parameters_as_form_and_query(api, maintainer, project, resolver, no_limits, no_broker) -> None:
    client = api(maintainer)

    @FUZZ
    @given(description=TEXT, url=TEXT, method=TEXT, in_query=st.booleans())
    def check(description, url, method, in_query) -> None:
        params = {"description": description, "upload[url]": url, "upload[http_method]": method}
        # As raw bytes on the wire: a lone surrogate is sent as its (invalid) UTF-8 bytes.
        encoded = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in params.items()})
        if in_query:
            answer = client.post(f"/api/v4/projects/{project.pk}/export?{encoded}")
        else:
            answer = client.post(
                f"/api/v4/projects/{project.pk}/export", encoded, content_type="application/x-www-form-urlencoded"
            )
        _no_server_error(answer)

    check()


def test_query_parameters(api, developer, maintainer, project) -> None:
    client, maintainer_client = api(developer), api(maintainer)

    @FUZZ
    @given(page=TEXT, per_page=TEXT, status=TEXT, token_type=TEXT, extra=TEXT)
    def check(page, per_page, status, token_type, extra) -> None:
        query = urlencode(
            {
                key.encode("utf-8", "surrogatepass"): value.encode("utf-8", "surrogatepass")
                for key, value in {
                    "page": page,
                    "per_page": per_page,
                    "status": status,
                    "token_type": token_type,
                    extra: extra,
                }.items()
            }
        )
        _no_server_error(client.get(f"/api/v4/projects/{project.pk}/secret_detection/findings?{query}"))
        _no_server_error(client.get(f"/api/v4/projects/{project.pk}?{query}"))
        _no_server_error(maintainer_client.get(f"/api/v4/projects/{project.pk}/export?{query}"))

    check()


def test_token_headers(api) -> None:
    @FUZZ
    @given(token=st.text(st.characters(codec="latin-1"), max_size=60), bearer=st.booleans())
    def check(token: str, bearer: bool) -> None:
        client = api()
        if bearer:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        else:
            client.credentials(HTTP_PRIVATE_TOKEN=token)
        _no_server_error(client.get("/api/v4/user"))

    check()


# --- schemathesis: every operation of the served schema ------------------------------------------

ST = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
#: The budget: examples per operation and phase.
SCHEMATHESIS_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))


def _sizes(*paths: Path) -> tuple[int, ...]:
    return tuple(path.stat().st_size if path.exists() else 0 for path in paths)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(ST is None, reason="schemathesis is not installed (pip install -r requirements.txt)")
def test_schemathesis_finds_no_server_error(
    live_server, maintainer, project, token_for, resolver, no_limits, no_broker, tmp_path, settings
) -> None:
    """Over HTTP, authenticated as a maintainer of a project, every documented operation with
    generated (valid and invalid) input: no 5xx. Failures are written to tmp_path as a
    report, and the output names the operation and the request that failed."""
    settings.API_AUTH_FAILURE_LIMIT = 0  # generated tokens must not ban the run's own address
    token = token_for(maintainer)
    config = tmp_path / "schemathesis.toml"
    # Half the path ids are the real project, so the operations' own inputs are reached.
    config.write_text(
        "[generation]\nallow-x00 = true\ncodec = 'utf-8'\n"
        f'[dictionaries.projects]\nvalues = ["{project.pk}", "acme/widgets"]\n'
        '[parameters]\n"path.project_id" = { dictionary = "projects", probability = 0.7 }\n'
    )
    output, events = tmp_path / "schemathesis.log", tmp_path / "report" / "events.ndjson"
    command = [
        ST,
        "--config-file",
        str(config),
        "run",
        f"{live_server.url}/api/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(SCHEMATHESIS_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--header",
        f"PRIVATE-TOKEN: {token}",
        # One: with two threads, Hypothesis's ast.parse of its filters' lambdas met
        # CPython 3.11.7's AST recursion-depth race (a "Runtime Error", not our server).
        "--workers",
        "1",
        "--seed",
        "20261129",
        *(["--max-time", os.environ["SCHEMATHESIS_MAX_TIME"]] if os.environ.get("SCHEMATHESIS_MAX_TIME") else []),
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--no-shrink",
        "--warnings",
        "off",
        # The events file grows as each operation's cases run: the wait's progress.
        "--report",
        "junit,ndjson",
        "--report-dir",
        str(tmp_path / "report"),
        "--report-ndjson-path",
        str(events),
        "--no-color",
    ]
    with output.open("w") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            # A slow machine takes longer; a hung run stops writing events.
            wait_until(lambda: process.poll() is not None, progress=lambda: _sizes(output, events), stall=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = output.read_text()
    if os.environ.get("SCHEMATHESIS_SHOW"):
        print(text)
    assert process.returncode == 0, f"schemathesis found a server error:\n{text[-6000:]}"
