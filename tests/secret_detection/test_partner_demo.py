"""``make demo``'s partner stand-ins: the report it writes is valid, the settings and
routing it sets send each demo token to its stand-in, and each reaches its verdict."""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest

from project.jobs.testing import run_inline
from secret_detection import partners, services
from secret_detection.demo import DEMO_PARTNER_TOKENS, demo_partner_report, local_partners_command
from secret_detection.localpartners import PartnerStandIn
from secret_detection.models import FindingTokenStatus, PartnerTokenType

pytestmark = pytest.mark.django_db


def test_the_demo_routes_partner_types_to_the_stand_ins_and_writes_its_report(tmp_path):
    with mock.patch.dict(os.environ, {"PARTNERS_DEMO_PORT": "18770"}):
        command = local_partners_command(var_dir=tmp_path, python="python")
        assert os.environ["PARTNER_AWS_URL"] == "http://127.0.0.1:18770/aws/"
        assert os.environ["PARTNER_POSTMAN_URL"] == "http://127.0.0.1:18770/postman/me"
    assert command[:3] == ["python", "-m", "secret_detection.localpartners"]
    assert PartnerTokenType.objects.get(token_type="AWS").verifier == "direct"
    assert PartnerTokenType.objects.get(token_type="GitHub Refresh Token").verifier == "auto"
    report = json.loads((tmp_path / "partners" / "demo-report.json").read_text())
    assert services.report_validate(report=report) == []


def test_each_demo_token_reaches_its_verdict_against_the_stand_ins(project, developer, settings):
    settings.PARTNER_POSTMAN_RATE = 0  # no pacing: the runs are executed here, one after another
    with PartnerStandIn() as stand_in:
        for name in partners.CLIENTS:
            setattr(settings, f"PARTNER_{name.upper()}_URL", stand_in.url(name))
        services.report_import(project=project, user=developer, report=demo_partner_report())
        for status in FindingTokenStatus.objects.all():
            run_inline("secret_detection.verify_direct_token", finding_id=status.pk)
    verdicts = {s.finding.raw_value: s.status for s in FindingTokenStatus.objects.select_related("finding")}
    assert [verdicts[value] for _, value in DEMO_PARTNER_TOKENS] == [
        "active",
        "inactive",
        "active",
        "inactive",
        "active",
        "inactive",
        "unknown",
        "active",
        "active",  # OpenAI
        "inactive",  # Anthropic, revoked
        "active",  # SendGrid
        "active",  # Heroku
        "active",  # Stripe: a restricted key's 403
    ]
