"""Importing gl-secret-detection-report.json: the streaming check against the JSON Schema,
de-duplication, encryption at rest, bounded memory, and the management command. The API's
upload and job are in test_report_api.py, the property-based test in test_report_fuzz.py."""

from __future__ import annotations

import copy
import io
import json
import logging
import tracemalloc
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from project.jobs import JobRun
from secret_detection import services
from secret_detection.models import Finding, FindingTokenStatus
from tests.secret_detection.conftest import INVALID, SAMPLE

pytestmark = pytest.mark.django_db

SCHEMA_NAME = "secret-detection-report.schema.json"


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
    assert problems == [
        # GitLab's schema requires these of a scan: the invalid sample has only a type.
        "scan.analyzer is required",
        "scan.end_time is required",
        "scan.scanner is required",
        "scan.start_time is required",
        "scan.status is required",
        'scan.type must be "secret_detection"',
        "vulnerabilities[0].identifiers must be a list (got a string)",
        "vulnerabilities[0].location is required",
    ]
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
        ({"version": "15", "scan": {}, "vulnerabilities": []}, "version must be a schema version MAJOR.MINOR.PATCH"),
        ({"version": "15.2.0", "scan": {}, "vulnerabilities": {}}, "vulnerabilities must be a list (got an object)"),
        ("report", "the report must be a JSON object (got a string)"),
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


def test_the_report_is_checked_against_the_shipped_json_schema(sample_report):
    """The schema file is a JSON Schema (draft 7) that the sample satisfies as it is, with
    plain jsonschema and its $refs: the checker's rules are that file's."""
    from jsonschema import Draft7Validator

    schema = json.loads((Path(services.reports.__file__).parents[1] / "report_schema" / SCHEMA_NAME).read_text())
    Draft7Validator.check_schema(schema)
    assert list(Draft7Validator(schema).iter_errors(sample_report)) == []
    del sample_report["vulnerabilities"][0]["location"]["commit"]
    assert [error.validator for error in Draft7Validator(schema).iter_errors(sample_report)] == ["required"]
    assert services.report_validate(report=sample_report) == ["vulnerabilities[0].location.commit is required"]


# --- issue 10: loose report checks ------------------------------------------------------


@pytest.mark.parametrize("version", ["16.0.0", "14.1.2", "1.0.0", "15.3.0"])
def test_a_schema_version_gitlab_does_not_support_is_refused(sample_report, version):
    """Any ``version`` string was accepted."""
    sample_report["version"] = version
    problems = services.report_validate(report=sample_report)
    assert len(problems) == 1
    assert problems[0].startswith(f"version {version} is not supported: GitLab supports secret detection report ")
    assert "15.0.0" in problems[0]
    assert "15.2.3" in problems[0]


@pytest.mark.parametrize("version", ["15.0.0", "15.1.4", "15.2.1", "15.2.3"])
def test_a_supported_schema_version_is_accepted_without_a_warning(project, developer, sample_report, version):
    sample_report["version"] = version
    result = services.report_import(project=project, user=developer, report=sample_report)
    assert (result.created, result.warnings) == (8, [])


def test_another_patch_of_a_supported_version_is_imported_with_a_warning(project, developer, sample_report):
    sample_report["version"] = "15.1.9"
    result = services.report_import(project=project, user=developer, report=sample_report)
    assert result.created == 8
    assert result.warnings == [
        "version 15.1.9 is not one of the schema versions GitLab supports; it was checked as 15.1.4 "
        "(the same MAJOR.MINOR)"
    ]


@pytest.mark.parametrize("version", ["latest", "15.2.0-rc1", "15.2", "1" * 40])
def test_a_version_that_is_not_major_minor_patch_is_refused(sample_report, version):
    sample_report["version"] = version
    problems = services.report_validate(report=sample_report)
    assert problems
    assert all(version not in problem for problem in problems)


def test_end_line_before_start_line_is_refused(project, developer, sample_report):
    """It was accepted."""
    sample_report["vulnerabilities"][3]["location"].update(start_line=21, end_line=20)
    with pytest.raises(services.InvalidReport) as caught:
        services.report_import(project=project, user=developer, report=sample_report)
    assert caught.value.problems == ["vulnerabilities[3].location.end_line must not be before start_line"]
    assert Finding.objects.count() == 0


def test_a_second_secret_with_the_same_identity_is_reported_as_a_warning(project, developer, sample_report):
    """It was dropped without a word."""
    sample_report["version"] = "15.2.0"
    twin = copy.deepcopy(sample_report["vulnerabilities"][2])
    twin["id"] = "another-id"
    twin["raw_source_code_extract"] = "PMAK-another-value-0123456789"
    sample_report["vulnerabilities"].insert(5, twin)

    result = services.report_import(project=project, user=developer, report=sample_report)

    assert (result.findings, result.created, result.duplicates) == (8, 8, 1)
    assert result.warnings == [
        "vulnerabilities[5] has the same rule, file and lines as an earlier vulnerability: only the first was imported"
    ]
    # The first one wins; no value of either appears in the warning.
    finding = Finding.objects.get(project=project, token_type="Postman API token")
    assert finding.raw_value == sample_report["vulnerabilities"][2]["raw_source_code_extract"]
    assert "PMAK" not in " ".join(result.warnings)


def test_many_duplicates_list_the_first_fifty_and_count_the_rest(sample_report):
    sample_report["version"] = "15.2.0"
    sample_report["vulnerabilities"] += [copy.deepcopy(sample_report["vulnerabilities"][0]) for _ in range(60)]
    check = services.report_check(handle=io.BytesIO(json.dumps(sample_report).encode()))
    assert (check.findings, check.duplicates) == (8, 60)
    assert len(check.warnings) == 51
    assert check.warnings[-1] == "and 10 more duplicate vulnerabilities"


def test_problems_name_paths_and_rules_never_values(sample_report):
    secret = "AKIAZQ3EXAMPLE7Q4VNB"
    sample_report["scan"]["type"] = secret * 3
    sample_report["scan"]["start_time"] = secret
    sample_report["vulnerabilities"][0]["severity"] = secret
    sample_report["vulnerabilities"][1]["identifiers"][0]["url"] = secret
    sample_report["vulnerabilities"][2][secret] = {"nested": "a\x00b"}
    sample_report["vulnerabilities"][3]["name"] = secret * 20
    problems = services.report_validate(report=sample_report)
    assert problems == [
        "scan.start_time must be a UTC time yyyy-mm-ddThh:mm:ss",
        'scan.type must be "secret_detection"',
        "vulnerabilities[0].severity must be one of Critical, High, Info, Low, Medium, Unknown",
        "vulnerabilities[1].identifiers[0].url must be an http(s) or ftp URL",
        # A key the schema does not name could be the secret itself: shown as *.
        "vulnerabilities[2].*.* contains a NUL character or an unpaired UTF-16 surrogate",
        "vulnerabilities[3].name must be at most 255 characters long",
    ]
    assert "AKIA" not in " ".join(problems)


def test_more_than_fifty_problems_are_counted(project, developer, sample_report):
    sample_report["vulnerabilities"] = [{"id": str(n)} for n in range(80)]
    with pytest.raises(services.InvalidReport) as caught:
        services.report_import(project=project, user=developer, report=sample_report)
    assert len(caught.value.problems) == 50
    assert caught.value.total == 160
    assert str(caught.value).endswith("(and 110 more)")


# --- issue 3: hostile input is a 400, not a 500 ----------------------------------------------


def _hostile(text: str, old: str, new: str) -> bytes:
    assert old in text
    return text.replace(old, new, 1).encode()


HOSTILE = [
    pytest.param('"AWS access token"', '"AWS \\u0000 token"', "vulnerabilities[0].name contains a NUL", id="nul"),
    pytest.param('"AWS access token"', '"AWS \\ud800 token"', "vulnerabilities[0].name contains a NUL", id="lone-high"),
    pytest.param('"AWS access token"', '"AWS \\udfff token"', "vulnerabilities[0].name contains a NUL", id="lone-low"),
    pytest.param('"id": "secrets"', '"id": "sec\\u0000rets"', "scan.analyzer.id contains a NUL", id="nul-in-scan"),
    pytest.param('"15.2.1"', '"15.2.1\\u0000"', "version contains a NUL", id="nul-in-version"),
    pytest.param(
        '"start_line": 12',
        '"start_line": 2147483648',
        "vulnerabilities[0].location.start_line must be at most",
        id="2^31",
    ),
    pytest.param(
        '"end_line": 12',
        '"end_line": 99999999999999999999999',
        "vulnerabilities[0].location.end_line must be at most",
        id="huge-int",
    ),
    pytest.param('"start_line": 12', '"start_line": 12.5', "start_line must be an integer (got a number)", id="float"),
    pytest.param('"start_line": 12', '"start_line": 1e400', "start_line must be an integer (got a number)", id="1e400"),
    pytest.param(
        '"category"',
        '"details": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + ', "category"',
        "is nested more than 64 levels deep",
        id="1000-deep",
    ),
    pytest.param(
        '"remediations": []', '"remediations": ' + "[" * 100 + "]" * 100, "is nested more than", id="deep-rest"
    ),
    pytest.param('"version"', '"x": "\\ud800", "version"', "* contains a NUL character", id="unknown-key"),
]


@pytest.mark.parametrize(("old", "new", "problem"), HOSTILE)
def test_hostile_text_numbers_and_nesting_are_invalid_reports_with_a_path(project, developer, old, new, problem):
    """Issue 3: a NUL byte, a lone surrogate, start_line >= 2**31 or JSON nested about 1,000
    levels deep answered 500 with a traceback. Each is now an InvalidReport (a 400) naming
    where, and nothing is stored."""
    raw = _hostile(SAMPLE.read_text(), old, new)
    with pytest.raises(services.InvalidReport) as caught:
        services.report_import_file(project=project, user=developer, handle=io.BytesIO(raw))
    assert caught.value.http_status == 400
    assert any(problem in found for found in caught.value.problems), caught.value.problems
    assert Finding.objects.count() == 0


def test_a_valid_surrogate_pair_and_an_escaped_backslash_are_text_like_any_other(project, developer):
    raw = _hostile(SAMPLE.read_text(), '"AWS access token"', '"AWS \\ud83d\\ude00 \\\\ud800 token"')
    result = services.report_import_file(project=project, user=developer, handle=io.BytesIO(raw))
    assert result.created == 8
    assert Finding.objects.get(file_path="deploy/terraform.tfvars").name == "AWS \U0001f600 \\ud800 token"


def test_a_report_given_as_python_data_goes_through_the_same_checks(project, developer, sample_report):
    sample_report["vulnerabilities"][0]["name"] = "lone \ud800 surrogate"
    sample_report["vulnerabilities"][1]["location"]["start_line"] = 2**40
    deep: list = []
    for _ in range(2000):
        deep = [deep]
    sample_report["vulnerabilities"][2]["details"] = deep
    with pytest.raises(services.InvalidReport) as caught:
        services.report_import(project=project, user=developer, report=sample_report)
    assert caught.value.problems


# --- issue 4: streaming with bounded memory -----------------------------------------------------


def _big_report(base: dict, count: int) -> bytes:
    template = base["vulnerabilities"][0]
    vulnerabilities = []
    for n in range(count):
        vuln = copy.deepcopy(template)
        vuln["id"] = f"bulk-{n}"
        vuln["raw_source_code_extract"] = f"AKIA{n:016d}"
        vuln["location"]["file"] = f"bulk/file-{n}.tf"
        vulnerabilities.append(vuln)
    return json.dumps({**base, "vulnerabilities": vulnerabilities}).encode()


def test_the_report_is_read_in_small_chunks_never_whole(sample_report):
    raw = _big_report(sample_report, 2000)
    reads: list[int] = []

    class Recording(io.BytesIO):
        def read(self, size=-1):
            chunk = super().read(size)
            reads.append(len(chunk))
            return chunk

    check = services.report_check(handle=Recording(raw))
    assert check.findings == 2000
    assert len(raw) > 1_000_000
    assert max(reads) <= 64 * 1024


def test_memory_does_not_grow_with_the_report(project, developer, sample_report, settings):
    """The import holds one batch and the identities seen, not the report: 8 times the
    findings take about the same memory (json.load of the same report would take 8 times)."""
    settings.REPORT_IMPORT_BATCH_SIZE = 100

    def peak(count: int, prefix: str) -> int:
        handle = io.BytesIO(_big_report(sample_report, count).replace(b"bulk/", prefix.encode()))
        tracemalloc.start()
        try:
            result = services.report_import_file(project=project, user=developer, handle=handle)
            assert result.created == count
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small = peak(200, "small/")
    large = peak(1600, "large/")
    assert large < 1.5 * small, (small, large)


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
    assert '  - scan.type must be "secret_detection"' in message
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


def test_command_reads_standard_input_through_the_same_stream(project, monkeypatch, sample_report):
    sample_report["vulnerabilities"].append(copy.deepcopy(sample_report["vulnerabilities"][0]))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps(sample_report).encode())))
    out = StringIO()
    call_command("import_secret_detection_report", str(project.pk), "-", stdout=out)
    assert "8 finding(s) in the report, 8 new, 0 updated, 0 unchanged, 1 duplicate(s) skipped" in out.getvalue()
    assert "  warning: vulnerabilities[8] has the same rule, file and lines" in out.getvalue()


def test_command_refuses_hostile_input_as_an_invalid_report(project, tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(_hostile(SAMPLE.read_text(), '"start_line": 12', '"start_line": 4294967296'))
    with pytest.raises(CommandError, match="start_line must be at most 2147483647"):
        call_command("import_secret_detection_report", str(project.pk), str(path))
    assert Finding.objects.count() == 0


def test_command_rejects_a_file_that_is_not_json(project, tmp_path):
    path = tmp_path / "report.json"
    path.write_text("{not json")
    with pytest.raises(CommandError, match="the report is not valid JSON"):
        call_command("import_secret_detection_report", str(project.pk), str(path))


# --- what the API shows of imported findings ---------------------------------------


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
