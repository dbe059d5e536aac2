"""Unauthenticated surfaces (defect 4): /metrics behind an optional token or basic auth and
cheap to scrape, the HTTPS settings `check --deploy` asks for, a Content-Security-Policy on
every response and no-store on the API's."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client, override_settings

from project import metrics
from project.middleware import API_CSP, DEFAULT_CSP, DOCS_CSP
from tests.support.cluster import ROOT

pytestmark = pytest.mark.django_db


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


# --- /metrics authentication -------------------------------------------------------------------


def test_metrics_are_open_when_no_credential_is_configured(client) -> None:
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("Bearer s3cret-scrape-token-x", 401),
        ("Bearer s3cret-scrape-token", 200),
        ("bearer s3cret-scrape-token", 200),
        (_basic("prometheus:s3cret-scrape-token"), 401),  # a token is not a password
    ],
)
def test_metrics_token(client, settings, authorization, status) -> None:
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    extra = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    response = client.get("/metrics", **extra)
    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"jobs_" not in response.content
    else:
        assert b"jobs_runs" in response.content


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        (_basic("prometheus:wrong"), 401),
        (_basic("prometheus:pass:word"), 200),
        ("Basic !!!not-base64!!!", 401),
        ("Bearer prometheus:pass:word", 401),
    ],
)
def test_metrics_basic_auth(client, settings, authorization, status) -> None:
    settings.METRICS_BASIC_AUTH = "prometheus:pass:word"
    extra = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    response = client.get("/metrics", **extra)
    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"] == 'Basic realm="metrics"'


def test_the_comparison_is_constant_time() -> None:
    import inspect

    source = inspect.getsource(metrics.scrape_authorized)
    assert source.count("hmac.compare_digest") == 2
    assert "==" not in source.replace("scheme ==", "")


def test_metrics_are_not_cached(client) -> None:
    assert client.get("/metrics")["Cache-Control"] == "no-store"


# --- /metrics: the files of dead processes are folded ------------------------------------------

_WRITER = """
import os, sys, time
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import Counter, Gauge, Histogram
Counter("sec_probe_total", "probe", ["kind"]).labels(kind="a").inc(int(sys.argv[2]))
Histogram("sec_probe_seconds", "probe", buckets=(1.0,)).observe(0.5)
Gauge("sec_probe_live", "probe", multiprocess_mode="livesum").set(1)
if len(sys.argv) > 3:
    print("ready", flush=True)
    time.sleep(60)
"""


def _write(directory: Path, amount: int = 1) -> None:
    subprocess.run([sys.executable, "-c", _WRITER, str(directory), str(amount)], check=True, timeout=30)


def _scrape(client, monkeypatch, directory: Path) -> str:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    return client.get("/metrics").content.decode()


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if not path.name.startswith("."))


def test_a_scrape_folds_the_counters_of_dead_processes_and_keeps_their_values(client, monkeypatch, tmp_path) -> None:
    _write(tmp_path, 1)
    _write(tmp_path, 2)
    assert len([name for name in _names(tmp_path) if name.startswith("counter_")]) == 2
    body = _scrape(client, monkeypatch, tmp_path)
    assert 'sec_probe_total{kind="a"} 3.0' in body
    assert "sec_probe_seconds_count 2.0" in body
    assert 'sec_probe_seconds_bucket{le="1.0"} 2.0' in body
    assert "sec_probe_live 0.0" in body or "sec_probe_live" not in body  # dead processes' live gauges dropped
    assert _names(tmp_path) == ["counter_archive-1.db", "histogram_archive-1.db"]
    _write(tmp_path, 4)
    body = _scrape(client, monkeypatch, tmp_path)
    assert 'sec_probe_total{kind="a"} 7.0' in body
    assert "sec_probe_seconds_count 3.0" in body
    assert _names(tmp_path) == ["counter_archive-2.db", "histogram_archive-2.db"]
    # Nothing new: the archive is read as it is.
    assert 'sec_probe_total{kind="a"} 7.0' in _scrape(client, monkeypatch, tmp_path)


def test_the_files_of_live_processes_are_left_alone(client, monkeypatch, tmp_path) -> None:
    live = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), "5", "stay"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert live.stdout.readline().strip() == "ready"
        body = _scrape(client, monkeypatch, tmp_path)
        assert 'sec_probe_total{kind="a"} 5.0' in body
        assert "sec_probe_live 1.0" in body
        assert f"counter_{live.pid}.db" in _names(tmp_path)
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    body = _scrape(client, monkeypatch, tmp_path)
    assert 'sec_probe_total{kind="a"} 5.0' in body
    assert f"counter_{live.pid}.db" not in _names(tmp_path)


def test_an_interrupted_compaction_is_finished_without_counting_twice(client, monkeypatch, tmp_path) -> None:
    _write(tmp_path, 1)
    _scrape(client, monkeypatch, tmp_path)  # counter_archive-1.db holds 1
    _write(tmp_path, 10)

    class Crash(Exception):
        pass

    real_remove = os.remove

    def remove(path, *args, **kwargs):
        if "counter_archive-1" in str(path) or "merging" in str(path):
            raise Crash(path)  # the process dies after the commit, before its clean-up
        return real_remove(path, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(os, "remove", remove)
        with pytest.raises(Crash):
            metrics.compact_dead_processes(str(tmp_path))
    names = _names(tmp_path)
    assert {"counter_archive-1.db", "counter_archive-2.db"} <= set(names)
    assert any(name.startswith("counter_") and name.endswith(".merging-2") for name in names)
    body = _scrape(client, monkeypatch, tmp_path)
    assert 'sec_probe_total{kind="a"} 11.0' in body
    assert [name for name in _names(tmp_path) if name.startswith("counter")] == ["counter_archive-2.db"]


def test_a_compaction_that_died_before_its_commit_is_picked_up(client, monkeypatch, tmp_path) -> None:
    _write(tmp_path, 1)
    _scrape(client, monkeypatch, tmp_path)  # archive 1 holds 1
    _write(tmp_path, 10)
    (dead,) = [name for name in _names(tmp_path) if name.startswith("counter_") and "archive" not in name]
    os.replace(tmp_path / dead, tmp_path / f"{dead}.merging-2")  # renamed, never committed
    (tmp_path / "counter_archive-2.db.tmp").write_bytes(b"half written")
    body = _scrape(client, monkeypatch, tmp_path)
    assert 'sec_probe_total{kind="a"} 11.0' in body
    assert [name for name in _names(tmp_path) if name.startswith("counter")] == ["counter_archive-2.db"]


def test_compaction_can_be_turned_off(client, monkeypatch, tmp_path, settings) -> None:
    settings.METRICS_COMPACT = False
    _write(tmp_path, 1)
    assert 'sec_probe_total{kind="a"} 1.0' in _scrape(client, monkeypatch, tmp_path)
    assert any(name.startswith("counter_") and "archive" not in name for name in _names(tmp_path))


def test_a_scrape_of_many_dead_processes_leaves_their_counts_in_one_archive(client, monkeypatch, tmp_path) -> None:
    for amount in range(1, 9):
        _write(tmp_path, amount)
    _scrape(client, monkeypatch, tmp_path)
    body = _scrape(client, monkeypatch, tmp_path)
    assert 'sec_probe_total{kind="a"} 36.0' in body
    assert len(metrics.multiprocess_files(str(tmp_path))) == 2


def test_request_latency_histograms_are_trimmed(settings) -> None:
    assert len(settings.PROMETHEUS_LATENCY_BUCKETS) == 9


# --- HTTPS: HSTS and the redirect ---------------------------------------------------------------


def test_https_settings_are_off_by_default(settings, client) -> None:
    assert settings.SECURE_SSL_REDIRECT is False
    assert settings.SECURE_HSTS_SECONDS == 0
    response = client.get("/-/liveness")
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response


@override_settings(SECURE_SSL_REDIRECT=True, SECURE_HSTS_SECONDS=31536000, SECURE_HSTS_INCLUDE_SUBDOMAINS=True)
def test_https_redirect_and_hsts_when_turned_on() -> None:
    client = Client()
    redirected = client.get("/admin/login/")
    assert redirected.status_code == 301
    assert redirected["Location"] == "https://testserver/admin/login/"
    assert client.get("/api/v4/user").status_code == 301
    # Probes and scrapers inside may call these over HTTP.
    assert client.get("/-/liveness").status_code == 200
    assert client.get("/metrics").status_code == 200
    secure = client.get("/admin/login/", secure=True)
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


_READ_SETTINGS = """
import json, project.settings as s
print(json.dumps({k: getattr(s, k) for k in (
    "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
    "ADMIN_LOGIN_FAILURE_LIMIT", "AXES_FAILURE_LIMIT", "ADMIN_LOGIN_COOLOFF", "METRICS_TOKEN",
    "API_AUTH_FAILURE_LIMIT", "TRUSTED_PROXY_COUNT")}))
"""


def _settings_with(env_vars: dict[str, str]) -> subprocess.CompletedProcess:
    environ = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    environ.update({"DEBUG": "1", "DATABASE_URL": "postgres://unused@127.0.0.1/unused", **env_vars})
    return subprocess.run(
        [sys.executable, "-c", _READ_SETTINGS], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


def test_security_settings_come_from_the_environment(tmp_path) -> None:
    import json

    token_file = tmp_path / "metrics-token"
    token_file.write_text("from-a-file\n")
    done = _settings_with(
        {
            "SECURE_SSL_REDIRECT": "1",
            "SECURE_HSTS_SECONDS": "63072000",
            "SECURE_HSTS_INCLUDE_SUBDOMAINS": "yes",
            "SECURE_HSTS_PRELOAD": "on",
            "ADMIN_LOGIN_FAILURE_LIMIT": "3",
            "ADMIN_LOGIN_COOLOFF": "60",
            "METRICS_TOKEN_FILE": str(token_file),
            "API_AUTH_FAILURE_LIMIT": "20",
            "TRUSTED_PROXY_COUNT": "1",
        }
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 63072000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "ADMIN_LOGIN_FAILURE_LIMIT": 3,
        "AXES_FAILURE_LIMIT": 3,
        "ADMIN_LOGIN_COOLOFF": 60,
        "METRICS_TOKEN": "from-a-file",
        "API_AUTH_FAILURE_LIMIT": 20,
        "TRUSTED_PROXY_COUNT": 1,
    }


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SECURE_HSTS_SECONDS", "a year", "SECURE_HSTS_SECONDS='a year' is invalid: expected an integer"),
        ("API_AUTH_BAN_TIME", "86400", "API_AUTH_BAN_TIME='86400' is invalid: expected an integer <= 7200"),
        ("ADMIN_LOGIN_FAILURE_LIMIT", "0", "ADMIN_LOGIN_FAILURE_LIMIT='0' is invalid: expected an integer >= 1"),
    ],
)
def test_bad_security_settings_stop_start_up_naming_them(name, value, expected) -> None:
    done = _settings_with({name: value})
    assert done.returncode != 0
    assert expected in done.stderr


def test_check_deploy_no_longer_warns_about_hsts_and_the_redirect_once_set() -> None:
    base = {
        "SECRET_KEY": "k" * 60 + "-not-a-default-secret-key-for-tests",
        "ENCRYPTION_KEY": "7tRZ0UQhHM2nb9QZx8cGqX5mQvV8bS2qkEo8sMw9F2Y=",
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        "EXTERNAL_URL": "https://gitlab.example.com",
    }
    environ = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}

    def check(extra: dict[str, str]) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", "check", "--deploy"],
            cwd=ROOT,
            env={**environ, **base, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.stdout + done.stderr

    default = check({})
    assert "security.W004" in default  # off by default, for local use
    assert "security.W008" in default
    hardened = check({"SECURE_SSL_REDIRECT": "1", "SECURE_HSTS_SECONDS": "31536000"})
    assert "security.W004" not in hardened
    assert "security.W008" not in hardened


# --- Content-Security-Policy and Cache-Control ------------------------------------------------


def test_html_pages_get_the_strict_policy(client) -> None:
    response = client.get("/admin/login/")
    assert response["Content-Security-Policy"] == DEFAULT_CSP
    assert "script-src 'self';" in DEFAULT_CSP
    assert "'unsafe-inline'" not in DEFAULT_CSP.split("script-src", 1)[1].split(";", 1)[0]


def test_api_answers_load_nothing_and_are_not_stored(api, owner) -> None:
    for response in (api(owner).get("/api/v4/user"), api().get("/api/v4/user"), api(owner).get("/api/v4/nope")):
        assert response["Content-Security-Policy"] == API_CSP
        assert response["Cache-Control"] == "no-store"


def test_the_docs_page_may_start_redoc(client) -> None:
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == DOCS_CSP


def test_the_policy_of_html_pages_can_be_replaced(settings) -> None:
    settings.CONTENT_SECURITY_POLICY = "default-src 'self'"
    assert Client().get("/admin/login/")["Content-Security-Policy"] == "default-src 'self'"
