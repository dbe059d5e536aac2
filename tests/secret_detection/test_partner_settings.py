"""Partner URLs are settings that default to the real endpoints and must be https in
production: a token value never travels in clear text to a partner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]


def _settings(**env: str) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.environ.get("PATH", ""),
        "DEBUG": "0",
        "SECRET_KEY": "x" * 50,
        "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        "DJANGO_SETTINGS_MODULE": "project.settings",
    }
    code = "from django.conf import settings; print(settings.PARTNER_AWS_URL, settings.PARTNER_POSTMAN_URL)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def test_the_defaults_are_the_real_https_endpoints():
    done = _settings()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["https://sts.amazonaws.com/", "https://api.getpostman.com/me"]


@pytest.mark.parametrize("extra", [{}, {"PARTNER_ALLOW_HTTP": "0"}])
def test_plain_http_is_refused_in_production(extra):
    done = _settings(PARTNER_AWS_URL="http://sts.example.com/", **extra)
    assert done.returncode != 0
    assert "PARTNER_AWS_URL" in done.stderr


def test_plain_http_is_allowed_for_stand_ins_when_asked():
    done = _settings(PARTNER_AWS_URL="http://127.0.0.1:8770/aws/", PARTNER_ALLOW_HTTP="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "http://127.0.0.1:8770/aws"
