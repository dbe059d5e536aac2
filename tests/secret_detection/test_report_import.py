"""Importing gl-secret-detection-report.json: validation, de-duplication, encryption at rest."""

from __future__ import annotations

import copy
import json
import logging
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from project.jobs import JobRun
from secret_detection import services
from secret_detection.models import Finding, FindingTokenStatus
from tests.secret_detection.conftest import INVALID, SAMPLE

pytestmark = pytest.mark.django_db

REPORTS_URL = "/api/v4/projects/{}/secret_detection/reports"


def test_sample_report_stores_each_finding_with_its_gitleaks_rule_id_as_token_type(project, developer, sample_report):
    result = services.report_import(project=project, user=developer, report=sample_report)

    assert (result.findings, result.created, result.updated, result.unchanged) == (8, 8, 0, 0)
    types = sorted(Finding.objects.filter(project=project).values_list("token_type", flat=True))
    assert types == sorted(
        [
            "AWS",
            "AWS",
            "GCP API key",
            "Postman API token",
            "GitHub Personal Access Token",
            "gitlab_personal_access_token",
            "Password in URL",
            "SSH private key",
        ]
    )
    # The AWS key found in two files is two findings, with one fingerprint.
    aws = Finding.objects.filter(project=project, token_type="AWS")
    assert {f.file_path for f in aws} == {"deploy/terraform.tfvars", "deploy/staging.tfvars"}
    assert len({f.value_fingerprint for f in aws}) == 1
    assert FindingTokenStatus.objects.filter(project=project, status="unknown").count() == 8
    assert JobRun.objects.filter(name="secret_detection.update_token_status").get().kwargs == {"project_id": project.pk}


def test_raw_token_is_encrypted_at_rest_and_only_its_fingerprint_is_kept_in_clear(project, developer, sample_report):
    services.report_import(project=project, user=developer, report=sample_report)
    finding = Finding.objects.get(project=project, token_type="GitHub Personal Access Token")
    assert finding.raw_value == "ghp_EXAMPLE0123456789abcdefghijklmnopqrs"

    with connection.cursor() as cursor:
        cursor.execute("SELECT raw_value, value_fingerprint FROM secret_detection_findings WHERE id = %s", [finding.pk])
        stored, fingerprint = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM secret_detection_findings WHERE raw_value LIKE %s", ["%EXAMPLE%"])
        (plaintext_rows,) = cursor.fetchone()
    assert "ghp_" not in stored
    assert plaintext_rows == 0
    assert fingerprint.startswith("ghp_…")
    assert "EXAMPLE" not in fingerprint


def test_importing_the_same_report_twice_changes_nothing(project, developer, sample_report):
    services.report_import(project=project, user=developer, report=sample_report)
    before = list(FindingTokenStatus.objects.order_by("pk").values())
    runs = JobRun.objects.count()

    again = services.report_import(project=project, user=developer, report=copy.deepcopy(sample_report))

    assert (again.created, again.updated, again.unchanged, again.routing_run_id) == (0, 0, 8, None)
    assert Finding.objects.filter(project=project).count() == 8
    assert list(FindingTokenStatus.objects.order_by("pk").values()) == before
    assert JobRun.objects.count() == runs


def test_a_new_secret_at_the_same_place_updates_the_finding_and_routes_it_again(project, developer, sample_report):
    services.report_import(project=project, user=developer, report=sample_report)
    finding = Finding.objects.get(project=project, token_type="Postman API token")
    FindingTokenStatus.objects.filter(pk=finding.pk).update(status="inactive", routed_at="2026-01-01T00:00:00Z")
    changed = copy.deepcopy(sample_report)
    changed["vulnerabilities"][2]["raw_source_code_extract"] = "PMAK-another-value-0123456789"

    result = services.report_import(project=project, user=developer, report=changed)

    assert (result.created, result.updated, result.unchanged) == (0, 1, 7)
    finding.refresh_from_db()
    assert finding.raw_value == "PMAK-another-value-0123456789"
    status = FindingTokenStatus.objects.get(pk=finding.pk)
    assert (status.status, status.routed_at) == ("unknown", None)
    assert result.routing_run_id is not None


def test_the_invalid_sample_is_rejected_whole_listing_every_problem(project, developer, invalid_report):
    with pytest.raises(services.InvalidReport) as caught:
        services.report_import(project=project, user=developer, report=invalid_report)

    problems = caught.value.problems
    assert 'scan.type must be "secret_detection" (got "dast")' in problems
    assert "vulnerabilities[0].identifiers must be a list (got a string)" in problems
    assert "vulnerabilities[0].location is required" in problems
    assert Finding.objects.count() == 0
    assert FindingTokenStatus.objects.count() == 0
    assert JobRun.objects.count() == 0


def test_one_bad_vulnerability_rejects_the_whole_report(project, developer, sample_report):
    sample_report["vulnerabilities"][5]["location"]["start_line"] = "nine"
    sample_report["vulnerabilities"][6]["identifiers"][0] = "gitleaks"
    sample_report["vulnerabilities"][7]["severity"] = "Apocalyptic"

    with pytest.raises(services.InvalidReport) as caught:
        services.report_import(project=project, user=developer, report=sample_report)

    assert caught.value.problems == [
        "vulnerabilities[5].location.start_line must be an integer (got a string)",
        "vulnerabilities[6].identifiers[0] must be an object (got a string)",
        "vulnerabilities[7].severity must be one of Critical, High, Info, Low, Medium, Unknown",
    ]
    assert Finding.objects.count() == 0


@pytest.mark.parametrize(
    ("report", "problem"),
    [
        ([], "the report must be a JSON object (got a list)"),
        ({"version": "15.2.1", "scan": {"type": "secret_detection"}}, "vulnerabilities is required"),
        ({"version": 15, "scan": {"type": "secret_detection"}, "vulnerabilities": []}, "version must be a string"),
        ({"version": "15", "scan": "secret_detection", "vulnerabilities": []}, "scan must be an object"),
        ({"version": "15", "scan": {"type": "secret_detection"}, "vulnerabilities": [1]}, "vulnerabilities[0] must be"),
    ],
)
def test_report_shape_problems_are_named_by_path(report, problem):
    assert any(found.startswith(problem) for found in services.report_validate(report=report))


def test_validation_messages_never_echo_a_token_value(sample_report):
    sample_report["vulnerabilities"][0]["raw_source_code_extract"] = ["AKIAZQ3EXAMPLE7Q4VNB"]
    problems = services.report_validate(report=sample_report)
    assert problems == ["vulnerabilities[0].raw_source_code_extract must be a string (got a list)"]
    assert "AKIA" not in " ".join(problems)


def test_import_logs_counts_but_never_a_token(project, developer, sample_report, caplog):
    caplog.set_level(logging.DEBUG)
    services.report_import(project=project, user=developer, report=sample_report)
    assert "secret detection report imported" in caplog.text
    for vuln in sample_report["vulnerabilities"]:
        assert vuln["raw_source_code_extract"] not in caplog.text


# --- the management command ---------------------------------------------------------


def test_command_imports_the_sample_report(project):
    out = StringIO()
    call_command("import_secret_detection_report", project.path_with_namespace, str(SAMPLE), stdout=out)
    assert "8 finding(s) in the report, 8 new, 0 updated, 0 unchanged; routing job #" in out.getvalue()
    assert Finding.objects.filter(project=project, imported_by=project.creator).count() == 8


def test_command_rejects_the_invalid_report_listing_each_problem(project):
    with pytest.raises(CommandError) as caught:
        call_command("import_secret_detection_report", str(project.pk), str(INVALID))
    message = str(caught.value)
    assert "nothing was imported" in message
    assert '  - scan.type must be "secret_detection" (got "dast")' in message
    assert "  - vulnerabilities[0].identifiers must be a list (got a string)" in message
    assert Finding.objects.count() == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nobody/nothing", str(SAMPLE)], "no project 'nobody/nothing'"),
        (["{project}", "/no/such/report.json"], "cannot read /no/such/report.json"),
        (["{project}", str(SAMPLE), "--user", "ghost"], "no active user named 'ghost'"),
    ],
)
def test_command_bad_arguments_are_command_errors(project, args, error):
    args = [arg.format(project=project.pk) for arg in args]
    with pytest.raises(CommandError, match=error):
        call_command("import_secret_detection_report", *args)


def test_command_rejects_a_file_that_is_not_json(project, tmp_path):
    path = tmp_path / "report.json"
    path.write_text("{not json")
    with pytest.raises(CommandError, match="the report is not valid JSON"):
        call_command("import_secret_detection_report", str(project.pk), str(path))


# --- the API -------------------------------------------------------------------------


def test_developer_imports_a_report_through_the_api(api, project, developer, sample_report):
    response = api(developer).post(REPORTS_URL.format(project.pk), sample_report, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["findings"] == body["created"] == 8
    assert body["routing_run_id"] == JobRun.objects.get(name="secret_detection.update_token_status").pk

    again = api(developer).post(REPORTS_URL.format("acme%2Fwidgets"), sample_report, format="json")
    assert again.status_code == 200
    assert again.json()["created"] == 0


def test_report_can_be_uploaded_as_a_multipart_file(api, project, maintainer):
    with SAMPLE.open("rb") as handle:
        response = api(maintainer).post(REPORTS_URL.format(project.pk), {"file": handle}, format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["created"] == 8


def test_api_rejects_the_invalid_report_with_every_problem_in_the_message(api, project, developer, invalid_report):
    response = api(developer).post(REPORTS_URL.format(project.pk), invalid_report, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_report"
    assert 'scan.type must be "secret_detection" (got "dast")' in body["message"]
    assert "vulnerabilities[0].identifiers must be a list (got a string)" in body["message"]
    assert Finding.objects.count() == 0
    assert JobRun.objects.count() == 0


def test_api_rejects_a_body_that_is_not_json(api, project, developer):
    response = api(developer).post(REPORTS_URL.format(project.pk), "{nope", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_report"


def test_multipart_without_file_is_a_clear_400(api, project, developer):
    response = api(developer).post(REPORTS_URL.format(project.pk), {"other": "x"}, format="multipart")
    assert response.status_code == 400
    assert "file is missing" in response.json()["message"]


@pytest.mark.parametrize(("persona", "status"), [("reporter", 403), ("guest", 403), ("outsider", 404)])
def test_only_developers_and_above_import_reports(api, project, sample_report, request, persona, status):
    user = request.getfixturevalue(persona)
    response = api(user).post(REPORTS_URL.format(project.pk), sample_report, format="json")
    assert response.status_code == status
    assert Finding.objects.count() == 0


def test_import_needs_the_api_scope(api, project, developer, sample_report):
    response = api(developer, scopes=("read_api",)).post(REPORTS_URL.format(project.pk), sample_report, format="json")
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"


def test_findings_api_shows_fingerprints_never_tokens(api, project, developer, sample_report):
    services.report_import(project=project, user=developer, report=sample_report)
    response = api(developer).get(f"/api/v4/projects/{project.pk}/secret_detection/findings?per_page=100")
    assert response.status_code == 200
    assert response["X-Total"] == "8"
    text = response.content.decode()
    for vuln in sample_report["vulnerabilities"]:
        assert vuln["raw_source_code_extract"] not in text
    github = next(item for item in response.json() if item["token_type"] == "GitHub Personal Access Token")
    assert github["token"].startswith("ghp_…")
    assert github["token_status"]["status"] == "unknown"

    filtered = api(developer).get(f"/api/v4/projects/{project.pk}/secret_detection/findings?token_type=aws")
    assert [item["token_type"] for item in filtered.json()] == ["AWS", "AWS"]
    bad = api(developer).get(f"/api/v4/projects/{project.pk}/secret_detection/findings?status=alive")
    assert bad.status_code == 400


def test_imported_reports_are_not_echoed_in_error_bodies(api, project, developer, sample_report):
    sample_report["scan"]["type"] = "AKIAZQ3EXAMPLE7Q4VNB" * 3
    response = api(developer).post(REPORTS_URL.format(project.pk), sample_report, format="json")
    assert response.status_code == 400
    # Only the first 40 characters of a wrong scan type are shown, and never a raw value.
    assert "AKIAZQ3EXAMPLE7Q4VNB" * 3 not in json.dumps(response.json())
