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
    """A running local SDRS server; its callbacks go to the callback_url each request names."""
    server = SdrsServer(public_key=rsa_keys[1], callback_secret=CALLBACK_SECRET).start()
    yield server
    server.close()


def report_with(findings: list[tuple[str, str]], *, base: dict) -> dict:
    """A report of ``(token_type, value)`` findings, each in its own file."""
    template = base["vulnerabilities"][0]
    report = copy.deepcopy(base)
    report["vulnerabilities"] = []
    for index, (token_type, value) in enumerate(findings):
        vuln = copy.deepcopy(template)
        vuln["id"] = f"generated-{index}"
        vuln["raw_source_code_extract"] = value
        vuln["location"]["file"] = f"generated/file-{index}.txt"
        vuln["identifiers"] = [
            {"type": "gitleaks_rule_id", "name": f"Gitleaks rule ID {token_type}", "value": token_type}
        ]
        report["vulnerabilities"].append(vuln)
    return report


@pytest.fixture
def import_findings(sample_report) -> Callable[..., list[Finding]]:
    """``import_findings(project, [(token_type, value), ...])`` → the stored findings, in order."""

    def make(project: Project, findings: list[tuple[str, str]], user=None) -> list[Finding]:
        services.report_import(
            project=project, user=user or project.creator, report=report_with(findings, base=sample_report)
        )
        return list(Finding.objects.filter(project=project).order_by("id"))

    return make


@pytest.fixture
def isolated_queue(settings) -> Iterator[None]:
    """Runs executed by hand in this test: their messages go to a queue no cluster serves
    (a session cluster started by another test must not run them too), purged afterwards."""
    import uuid
    from unittest import mock

    from django_q.conf import Conf

    from project.jobs.brokers import get_broker

    name = f"{Conf.CLUSTER_NAME}-manual-{uuid.uuid4().hex[:8]}"
    with mock.patch.object(Conf, "CLUSTER_NAME", name):
        yield
        try:
            get_broker(name).purge_queue()
        except Exception:  # noqa: BLE001 - cleanup only; the ORM queue goes with the test database
            pass
