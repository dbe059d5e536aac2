"""JSON shapes of findings. The token appears only as its fingerprint."""

from __future__ import annotations

from typing import Any

from project.serializers import _iso
from secret_detection.models import Finding, FindingTokenStatus


def token_status_detail(status: FindingTokenStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {
        "status": status.status,
        "verifier": status.verifier or None,
        "last_verified_at": _iso(status.last_verified_at),
        "attempts": status.attempts,
        "last_error_code": status.last_error_code or None,
        "last_request_id": status.last_request_id or None,
        "next_refresh_at": _iso(status.next_refresh_at),
    }


def finding_detail(finding: Finding) -> dict[str, Any]:
    return {
        "id": finding.pk,
        "project_id": finding.project_id,
        "report_id": finding.report_finding_id,
        "name": finding.name,
        "severity": finding.severity,
        "token_type": finding.token_type,
        "token": finding.value_fingerprint or None,
        "location": {
            "file": finding.file_path,
            "start_line": finding.start_line,
            "end_line": finding.end_line,
            "commit_sha": finding.commit_sha or None,
        },
        "created_at": _iso(finding.created_at),
        "token_status": token_status_detail(getattr(finding, "token_status", None)),
    }
