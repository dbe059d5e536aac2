"""The routing job (UpdateTokenStatus): partner types to SDRS, our tokens checked here,
anything else unknown and backed off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from project import services as core
from project.jobs import JobRun
from project.jobs.testing import run_inline
from secret_detection import services
from secret_detection.models import Finding, FindingTokenStatus, PartnerTokenType
from secret_detection.services.verifiers import POOL_MIN_FINDINGS

pytestmark = pytest.mark.django_db

VERIFY = "secret_detection.verify_partner_token"


def _statuses(project) -> dict[str, FindingTokenStatus]:
    return {
        s.finding.file_path: s for s in FindingTokenStatus.objects.filter(project=project).select_related("finding")
    }


def test_sample_report_is_routed_by_token_type(project, developer, sample_report, sdrs_settings):
    sdrs_settings()
    services.report_import(project=project, user=developer, report=sample_report)

    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        counts = services.token_statuses_route(project_id=project.pk)

    assert counts == {"partner_enqueued": 5, "local_inactive": 1, "no_verifier": 2}
    verify_runs = JobRun.objects.filter(name=VERIFY)
    partner_ids = set(
        Finding.objects.filter(
            project=project, token_type__in=["AWS", "GCP API key", "Postman API token", "GitHub Personal Access Token"]
        ).values_list("pk", flat=True)
    )
    # Ids only in the job arguments: never a token.
    assert {run.kwargs["finding_id"] for run in verify_runs} == partner_ids
    assert all(set(run.kwargs) == {"finding_id", "user_id"} for run in verify_runs)
    assert {run.kwargs["user_id"] for run in verify_runs} == {developer.pk}

    statuses = _statuses(project)
    glpat = statuses[".gitlab-ci.yml"]
    assert (glpat.status, glpat.verifier, glpat.next_refresh_at) == ("inactive", "local", None)
    password = statuses["docker/compose.yml"]
    assert (password.status, password.verifier, password.last_error_code) == ("unknown", "none", "no_verifier")
    assert password.next_refresh_at == datetime(2026, 11, 21, 12, 10, tzinfo=UTC)  # backed off 10 min
    aws = statuses["deploy/terraform.tfvars"]
    assert (aws.status, aws.verifier, aws.next_refresh_at) == ("unknown", "partner", None)
    assert all(s.routed_at is not None for s in statuses.values())


def test_our_own_token_is_active_when_it_matches_a_live_token(project, developer, import_findings):
    _token, value = core.access_token_create(user=developer, name="leaked", scopes=["api"])
    revoked, revoked_value = core.access_token_create(user=developer, name="revoked", scopes=["api"])
    core.access_token_revoke(token_id=revoked.pk)
    live, dead = import_findings(
        project, [("gitlab_personal_access_token", value), ("gitlab_personal_access_token", revoked_value)]
    )

    services.token_statuses_route(project_id=project.pk)

    live_status, dead_status = FindingTokenStatus.objects.get(pk=live.pk), FindingTokenStatus.objects.get(pk=dead.pk)
    assert live_status.status == "active"
    assert live_status.last_verified_at is not None
    assert live_status.next_refresh_at > timezone.now() + timedelta(hours=23)
    assert dead_status.status == "inactive"
    assert not JobRun.objects.filter(name=VERIFY).exists()


def test_routing_walks_new_findings_in_batches_of_100(project, developer, import_findings, sdrs_settings):
    sdrs_settings()
    import_findings(project, [("AWS", f"AKIA{n:016d}") for n in range(250)])

    with CaptureQueriesContext(connection) as queries:
        counts = services.token_statuses_route(project_id=project.pk)

    # Fresh findings by the hundred go to the refresher's pool, not one job each.
    assert counts == {"partner_pooled": 250}
    claims = [q["sql"] for q in queries.captured_queries if "FOR UPDATE" in q["sql"] and "SKIP LOCKED" in q["sql"]]
    assert len(claims) == 4  # 100 + 100 + 50, then an empty claim ends the walk
    assert all("LIMIT 100" in sql for sql in claims)
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "job_runs"')]
    assert len(inserts) == 1  # one tick for the three batches (the later ones find it queued)
    assert JobRun.objects.filter(name=VERIFY).count() == 0
    (tick,) = JobRun.objects.filter(name="secret_detection.refresh_token_statuses")
    assert tick.kwargs == {"fresh": True}
    assert FindingTokenStatus.objects.filter(project=project, next_refresh_at__lte=timezone.now()).count() == 250


def test_a_few_fresh_findings_keep_one_job_each(project, developer, import_findings, sdrs_settings):
    sdrs_settings()
    import_findings(project, [("AWS", f"AKIA{n:016d}") for n in range(POOL_MIN_FINDINGS - 1)])

    counts = services.token_statuses_route(project_id=project.pk)

    assert counts == {"partner_enqueued": POOL_MIN_FINDINGS - 1}
    assert JobRun.objects.filter(name=VERIFY).count() == POOL_MIN_FINDINGS - 1
    assert not JobRun.objects.filter(name="secret_detection.refresh_token_statuses").exists()


def test_routing_twice_routes_nothing_twice(project, developer, sample_report, sdrs_settings):
    sdrs_settings()
    services.report_import(project=project, user=developer, report=sample_report)
    services.token_statuses_route(project_id=project.pk)
    assert services.token_statuses_route(project_id=project.pk) == {}
    assert JobRun.objects.filter(name=VERIFY).count() == 5


def test_a_partner_type_switched_off_is_not_sent(project, developer, import_findings, sdrs_settings):
    sdrs_settings()
    PartnerTokenType.objects.filter(token_type="Postman API token").update(enabled=False)
    (finding,) = import_findings(project, [("Postman API token", "PMAK-abc")])

    assert services.token_statuses_route(project_id=project.pk) == {"no_verifier": 1}
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.last_error_code) == ("unknown", "no_verifier")
    assert status.next_refresh_at is not None
    assert not JobRun.objects.filter(name=VERIFY).exists()


def test_partner_types_wait_while_verification_is_disabled(project, developer, import_findings, sdrs_settings):
    sdrs_settings(sdrs_enabled=False)
    # A type with no direct client (AWS would go to its partner's API with SDRS off).
    (finding,) = import_findings(project, [("GitHub Refresh Token", "ghr_x")])

    assert services.token_statuses_route(project_id=project.pk) == {"verification_disabled": 1}
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.verifier, status.last_error_code) == ("partner", "verification_disabled")
    # The refresher looks again after the back-off, so enabling SDRS later verifies it.
    assert status.next_refresh_at > timezone.now()


def test_partner_type_lookup_ignores_case(project, developer, import_findings, sdrs_settings):
    sdrs_settings()
    import_findings(project, [("Github Personal Access Token", "ghp_x"), ("aws", "AKIA1")])
    assert services.token_statuses_route(project_id=project.pk) == {"partner_enqueued": 2}


def test_routing_job_runs_through_the_toolkit(project, developer, sample_report, sdrs_settings, no_broker):
    sdrs_settings()
    result = services.report_import(project=project, user=developer, report=sample_report)
    queued = JobRun.objects.get(pk=result.routing_run_id)
    outcome, run = run_inline(queued.name, **queued.kwargs)
    assert outcome == "succeeded"
    assert run.result == {"partner_enqueued": 5, "local_inactive": 1, "no_verifier": 2}


@pytest.mark.parametrize(
    ("token_type", "has_value", "unavailable", "expected"),
    [
        ("gitlab_personal_access_token", True, "", ("local", "", "")),
        ("gitlab_personal_access_token", True, "verification_disabled", ("local", "", "")),
        ("aws", True, "", ("partner", "aws", "")),
        ("AWS", True, "verification_disabled", ("partner", "aws", "verification_disabled")),
        ("AWS", True, "signing_key_invalid", ("partner", "aws", "signing_key_invalid")),
        ("Password in URL", True, "", ("none", "", "no_verifier")),
        ("AWS", False, "", ("partner", "aws", "finding_without_token")),
        ("gitlab_personal_access_token", False, "", ("local", "", "finding_without_token")),
    ],
)
def test_one_routing_decision_for_every_caller(token_type, has_value, unavailable, expected):
    from secret_detection.services.routing import token_route

    route = token_route(
        token_type=token_type, has_value=has_value, partner_types={"aws": "aws"}, unavailable=unavailable
    )
    assert (route.verifier, route.partner, route.reason) == expected


def test_a_finding_without_a_token_is_backed_off_not_sent(project, developer, import_findings, sdrs_settings):
    sdrs_settings()
    (finding,) = import_findings(project, [("AWS", "")])

    with time_machine.travel("2026-11-21T12:00:00Z", tick=False):
        assert services.token_statuses_route(project_id=project.pk) == {"finding_without_token": 1}

    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.verifier, status.last_error_code) == ("unknown", "partner", "finding_without_token")
    assert status.next_refresh_at == datetime(2026, 11, 21, 12, 10, tzinfo=UTC)
    assert not JobRun.objects.filter(name=VERIFY).exists()
