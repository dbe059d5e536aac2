"""Reading GitLab's ``gl-secret-detection-report.json``: validate the whole report, then
store its findings once each."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from project import crypto, locks
from project.errors import ValidationFailed
from project.models import Project, User
from secret_detection import metrics
from secret_detection.models import Finding, Severity
from secret_detection.services import jobs, statuses

logger = logging.getLogger(__name__)

GITLEAKS_RULE_ID = "gitleaks_rule_id"
MAX_PROBLEMS_LISTED = 50
_SEVERITIES = {choice.value for choice in Severity}


class InvalidReport(ValidationFailed):
    code = "invalid_report"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS_LISTED]
        more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        super().__init__(f"The secret detection report is invalid: {'; '.join(shown)}{more}")


def _kind(value: Any) -> str:
    # Name the JSON type only: a value could be the secret itself.
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path} {message}")

    def typed(self, obj: dict, key: str, path: str, kind: type | tuple, *, required: bool, label: str) -> Any:
        if key not in obj:
            if required:
                self.problem(f"{path}.{key}".lstrip("."), "is required")
            return None
        value = obj[key]
        if value is None and not required:
            return None
        # bool is an int in Python; JSON keeps them apart.
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            self.problem(f"{path}.{key}".lstrip("."), f"must be {label} (got {_kind(value)})")
            return None
        return value


def _tuple(kind: type | tuple) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def report_validate(*, report: Any) -> list[str]:
    """Every problem of the report (empty when valid). Checks what this product reads,
    following the report schema 15.x: scan type, the vulnerabilities and their fields."""
    check = _Checker()
    if not isinstance(report, dict):
        return [f"the report must be a JSON object (got {_kind(report)})"]
    check.typed(report, "version", "", str, required=True, label="a string")
    scan = check.typed(report, "scan", "", dict, required=True, label="an object")
    if scan is not None:
        scan_type = check.typed(scan, "type", "scan", str, required=True, label="a string")
        if scan_type is not None and scan_type != "secret_detection":
            check.problem("scan.type", f'must be "secret_detection" (got {json.dumps(scan_type[:40])})')
        scanner = check.typed(scan, "scanner", "scan", dict, required=False, label="an object")
        if scanner is not None:
            check.typed(scanner, "id", "scan.scanner", str, required=True, label="a string")
    vulnerabilities = check.typed(report, "vulnerabilities", "", list, required=True, label="a list")
    for index, vulnerability in enumerate(vulnerabilities or []):
        _validate_vulnerability(check, vulnerability, f"vulnerabilities[{index}]")
    return check.problems


def _validate_vulnerability(check: _Checker, vuln: Any, path: str) -> None:
    if not isinstance(vuln, dict):
        check.problem(path, f"must be an object (got {_kind(vuln)})")
        return
    check.typed(vuln, "id", path, str, required=True, label="a string")
    for key in ("name", "description", "cve", "confidence", "raw_source_code_extract", "category"):
        check.typed(vuln, key, path, str, required=False, label="a string")
    severity = check.typed(vuln, "severity", path, str, required=False, label="a string")
    if severity is not None and severity not in _SEVERITIES:
        check.problem(f"{path}.severity", f"must be one of {', '.join(sorted(_SEVERITIES))}")
    location = check.typed(vuln, "location", path, dict, required=True, label="an object")
    if location is not None:
        check.typed(location, "file", f"{path}.location", str, required=True, label="a string")
        for key in ("start_line", "end_line"):
            line = check.typed(location, key, f"{path}.location", int, required=False, label="an integer")
            if line is not None and line < 0:
                check.problem(f"{path}.location.{key}", "must not be negative")
        commit = check.typed(location, "commit", f"{path}.location", dict, required=False, label="an object")
        if commit is not None:
            check.typed(commit, "sha", f"{path}.location.commit", str, required=False, label="a string")
    identifiers = check.typed(vuln, "identifiers", path, list, required=True, label="a list")
    if identifiers is not None:
        if not identifiers:
            check.problem(f"{path}.identifiers", "must not be empty")
        for position, identifier in enumerate(identifiers):
            where = f"{path}.identifiers[{position}]"
            if not isinstance(identifier, dict):
                check.problem(where, f"must be an object (got {_kind(identifier)})")
                continue
            for key in ("type", "name", "value"):
                check.typed(identifier, key, where, str, required=True, label="a string")


def _token_type(identifiers: list[dict]) -> str:
    for identifier in identifiers:
        if identifier.get("type") == GITLEAKS_RULE_ID:
            return identifier.get("value", "")[:255]
    return ""


def finding_identity(*, token_type: str, file_path: str, start_line: int | None, end_line: int | None) -> str:
    """Stable identity of a finding within its project: the rule and where it was found
    (GitLab's finding UUID is built from the primary identifier and the location). The
    value is left out so that no digest of a secret is stored; a changed value at the
    same place updates the finding instead."""
    key = json.dumps(["secret_detection", token_type, file_path, start_line, end_line])
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class ParsedFinding:
    identity: str
    fields: dict[str, Any]
    raw_value: str


def _parse(vuln: dict, scanner_id: str) -> ParsedFinding:
    location = vuln["location"]
    identifiers = vuln["identifiers"]
    token_type = _token_type(identifiers)
    raw_value = vuln.get("raw_source_code_extract") or ""
    start_line, end_line = location.get("start_line"), location.get("end_line")
    return ParsedFinding(
        identity=finding_identity(
            token_type=token_type, file_path=location["file"], start_line=start_line, end_line=end_line
        ),
        raw_value=raw_value,
        fields={
            "report_finding_id": vuln["id"][:255],
            "name": (vuln.get("name") or "")[:255],
            "description": vuln.get("description") or "",
            "severity": vuln.get("severity") or Severity.UNKNOWN,
            "confidence": (vuln.get("confidence") or "")[:16],
            "token_type": token_type,
            "file_path": location["file"][:1024],
            "start_line": start_line,
            "end_line": end_line,
            "commit_sha": ((location.get("commit") or {}).get("sha") or "")[:64],
            "identifiers": identifiers,
            "scanner_id": scanner_id[:64],
            "value_fingerprint": crypto.fingerprint(raw_value) if raw_value else "",
        },
    )


@dataclass
class ImportResult:
    findings: int
    created: int
    updated: int
    unchanged: int
    routing_run_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "findings": self.findings,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "routing_run_id": self.routing_run_id,
        }


def report_parse(*, content: bytes | str) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidReport([f"the report is not valid JSON ({exc.__class__.__name__})"]) from None


def report_import(*, project: Project, user: User | None, report: Any) -> ImportResult:
    """Validate the whole report, then store its new findings (each with an unknown token
    status) and start the routing job for them. An invalid report stores nothing.

    A finding already stored (same identity) is left alone unless its token value
    changed, in which case it is updated and routed again. Importing the same report twice
    therefore changes nothing and starts no job.
    """
    problems = report_validate(report=report)
    if problems:
        raise InvalidReport(problems)
    scanner_id = ((report["scan"].get("scanner") or {}).get("id")) or ""
    parsed: dict[str, ParsedFinding] = {}
    for vuln in report["vulnerabilities"]:
        item = _parse(vuln, scanner_id)
        parsed.setdefault(item.identity, item)  # the same secret twice in one report: one finding

    with transaction.atomic():
        # Imports of one project run one at a time, so two concurrent imports of the same
        # report cannot both create (or both route) the same finding.
        locks.xact_lock(f"secret_detection.import:{project.pk}")
        existing = {f.identity: f for f in Finding.objects.filter(project=project, identity__in=list(parsed))}
        new = [
            Finding(project=project, identity=identity, raw_value=item.raw_value, imported_by=user, **item.fields)
            for identity, item in parsed.items()
            if identity not in existing
        ]
        Finding.objects.bulk_create(new, batch_size=500)
        changed = [finding for identity, finding in existing.items() if finding.raw_value != parsed[identity].raw_value]
        for finding in changed:
            item = parsed[finding.identity]
            for name, value in item.fields.items():
                setattr(finding, name, value)
            finding.raw_value = item.raw_value
        if changed:
            Finding.objects.bulk_update(changed, [*parsed[changed[0].identity].fields, "raw_value"], batch_size=500)
            # A new secret at the same place: what we knew about the old one no longer holds.
            statuses.status_reset(finding_ids=[finding.pk for finding in changed])
        statuses.status_create(project=project, findings=new)
        run = None
        if new or changed:
            run = jobs.job_get(jobs.ROUTE).enqueue(project_id=project.pk, _dedupe_key=f"project:{project.pk}")
    result = ImportResult(
        findings=len(parsed),
        created=len(new),
        updated=len(changed),
        unchanged=len(existing) - len(changed),
        routing_run_id=run.pk if run else None,
    )
    metrics.FINDINGS_IMPORTED.inc(len(new))
    logger.info(
        "secret detection report imported",
        extra={
            "project_id": project.pk,
            "findings": result.findings,
            "findings_created": result.created,
            "findings_updated": result.updated,
            "findings_unchanged": result.unchanged,
        },
    )
    return result
