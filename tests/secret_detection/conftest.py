"""Fixtures: the sample reports, an RSA key pair, SDRS settings and a local SDRS server."""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from project.models import ApplicationSetting, Project
from secret_detection import services
from secret_detection.models import Finding
from tests.support.sdrs import SdrsServer, keypair

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "gl-secret-detection-report.json"
INVALID = DATA / "gl-secret-detection-report.invalid.json"
CALLBACK_SECRET = "callback-secret-for-tests"


@pytest.fixture
def sample_report() -> dict:
    return json.loads(SAMPLE.read_text())


@pytest.fixture
def invalid_report() -> dict:
    return json.loads(INVALID.read_text())


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[str, str]:
    return keypair()


def free_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sdrs_settings(db, rsa_keys) -> Callable[..., ApplicationSetting]:
    """``sdrs_settings(url=...)``: SDRS enabled and fully configured."""

    def configure(url: str | None = None, **overrides) -> ApplicationSetting:
        row = ApplicationSetting.current()
        values = {
            "sdrs_enabled": True,
            "sdrs_url": url or f"http://127.0.0.1:{free_port()}",
            "sdrs_jwt_signing_key": rsa_keys[0],
            "sdrs_callback_secret": CALLBACK_SECRET,
            "sdrs_timeout": 2.0,
            **overrides,
        }
        for name, value in values.items():
            setattr(row, name, value)
        row.save()
        return row

    return configure


@pytest.fixture
def sdrs_server(rsa_keys) -> Iterator[SdrsServer]:
    """A running local SDRS server that accepts but does not call back (no web server
    listens at the test settings' EXTERNAL_URL); the end-to-end tests make their own."""
    server = SdrsServer(public_key=rsa_keys[1], callback_secret=CALLBACK_SECRET).start()
    server.failures.drop_callbacks = True
    yield server
    server.close()


@pytest.fixture(autouse=True)
def partner_types(db) -> None:
    """The partner token types the migration seeds. Transactional tests (anyone's) flush
    every table afterwards, seeded rows included, so they are seeded again here."""
    import importlib

    from django.apps import apps

    importlib.import_module("secret_detection.migrations.0002_partner_token_types").seed(apps, None)


def report_with(findings: list[tuple[str, str]], *, base: dict, prefix: str = "generated") -> dict:
    """A report of ``(token_type, value)`` findings, each in its own file under ``prefix/``."""
    template = base["vulnerabilities"][0]
    report = copy.deepcopy(base)
    report["vulnerabilities"] = []
    for index, (token_type, value) in enumerate(findings):
        vuln = copy.deepcopy(template)
        vuln["id"] = f"{prefix}-{index}"
        vuln["raw_source_code_extract"] = value
        vuln["location"]["file"] = f"{prefix}/file-{index}.txt"
        vuln["identifiers"] = [
            {"type": "gitleaks_rule_id", "name": f"Gitleaks rule ID {token_type}", "value": token_type}
        ]
        report["vulnerabilities"].append(vuln)
    return report


@pytest.fixture
def import_findings(sample_report) -> Callable[..., list[Finding]]:
    """``import_findings(project, [(token_type, value), ...])`` → those findings, in order."""

    def make(project: Project, findings: list[tuple[str, str]], user=None, prefix: str = "generated") -> list[Finding]:
        report = report_with(findings, base=sample_report, prefix=prefix)
        services.report_import(project=project, user=user or project.creator, report=report)
        return list(Finding.objects.filter(project=project, file_path__startswith=f"{prefix}/").order_by("id"))

    return make
