"""Property-based tests (Hypothesis) of the report parser with hostile input (issue
"Security and hostile input", part 3): arbitrary text, including NUL and lone surrogates,
in every text input of a report (values and keys), arbitrary numbers as line numbers,
arbitrary nesting and arbitrary bytes never end in a 5xx or an unexpected error: the
import either finishes or fails as an invalid report, and its messages never echo the
input."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from project.jobs import JobRun
from project.jobs.runner import execute
from secret_detection import services
from secret_detection.models import ReportImport
from tests.secret_detection.conftest import SAMPLE

pytestmark = pytest.mark.django_db

URL = "/api/v4/projects/{}/secret_detection/reports"
MARKER = "QX7Z-"  # prefixed to the injected text: it must never come back in a message

_V = ("vulnerabilities", 0)
#: Every text input of a report that the parser reads: (path, where a key is the last part
#: of the path, the text is a key of that object instead of a value).
TEXT_INPUTS: list[tuple[Any, ...]] = [
    ("version",),
    ("schema",),
    ("scan", "type"),
    ("scan", "status"),
    ("scan", "start_time"),
    ("scan", "end_time"),
    ("scan", "scanner", "id"),
    ("scan", "scanner", "name"),
    ("scan", "scanner", "version"),
    ("scan", "scanner", "url"),
    ("scan", "scanner", "vendor", "name"),
    ("scan", "analyzer", "id"),
    ("scan", "analyzer", "name"),
    ("scan", "analyzer", "version"),
    ("scan", "analyzer", "vendor", "name"),
    (*_V, "id"),
    (*_V, "name"),
    (*_V, "description"),
    (*_V, "severity"),
    (*_V, "solution"),
    (*_V, "confidence"),
    (*_V, "category"),
    (*_V, "cve"),
    (*_V, "raw_source_code_extract"),
    (*_V, "scanner", "id"),
    (*_V, "location", "file"),
    (*_V, "location", "class"),
    (*_V, "location", "method"),
    (*_V, "location", "commit", "sha"),
    (*_V, "location", "commit", "author"),
    (*_V, "location", "commit", "date"),
    (*_V, "location", "commit", "message"),
    (*_V, "identifiers", 0, "type"),
    (*_V, "identifiers", 0, "name"),
    (*_V, "identifiers", 0, "value"),
    (*_V, "identifiers", 0, "url"),
    (*_V, "links", 0, "url"),
    ("remediations", 0, "summary"),
    ("remediations", 0, "diff"),
    ("remediations", 0, "fixes", 0, "id"),
]
#: Objects that get an arbitrary key.
KEY_INPUTS: list[tuple[Any, ...]] = [(), ("scan",), _V, (*_V, "location"), (*_V, "identifiers", 0), (*_V, "details")]

# Any code point: NUL and the other controls, lone surrogates (excluded by default), astral.
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # The same examples on every run, and no example database written into the checkout.
    derandomize=True,
    database=None,
)


def _base() -> dict:
    report = json.loads(SAMPLE.read_text())
    report["vulnerabilities"][0]["links"] = [{"url": "https://example.com"}]
    report["vulnerabilities"][0]["details"] = {}
    report["remediations"] = [{"fixes": [{"id": "x"}], "summary": "s", "diff": "d"}]
    return report


BASE = _base()


def _at(report: dict, path: tuple) -> Any:
    node = report
    for part in path:
        node = node[part]
    return node


def _encode(report: Any) -> bytes:
    # ensure_ascii: lone surrogates travel as \udXXX escapes, as any JSON encoder writes them.
    return json.dumps(report).encode()


@st.composite
def hostile_reports(draw) -> tuple[bytes, str]:
    """A report with arbitrary text in one text input (a value, or a key), and the text."""
    report = copy.deepcopy(BASE)
    text = MARKER + draw(ANY_TEXT)
    if draw(st.booleans()):
        path = draw(st.sampled_from(TEXT_INPUTS))
        _at(report, path[:-1])[path[-1]] = text
    else:
        _at(report, draw(st.sampled_from(KEY_INPUTS)))[text] = draw(st.sampled_from(["v", 1, None, {"k": text}]))
    return _encode(report), text


def _outcome(raw: bytes, project, user) -> tuple[str, list[str]]:
    """Import ``raw`` through the service in a savepoint rolled back afterwards."""
    refused: services.InvalidReport | None = None
    with transaction.atomic():
        try:
            result = services.report_import_file(project=project, user=user, handle=io.BytesIO(raw))
        except services.InvalidReport as exc:
            refused = exc
        transaction.set_rollback(True)
    if refused is None:
        return "imported", result.warnings
    assert refused.http_status == 400
    return "invalid", [str(refused), *refused.problems]


@FUZZ
@given(case=hostile_reports())
def test_arbitrary_text_in_any_text_input_is_imported_or_refused_never_an_error(project, developer, case):
    raw, text = case
    outcome, messages = _outcome(raw, project, developer)
    assert outcome in ("imported", "invalid")
    assert all(MARKER not in message for message in messages), messages
    if "\x00" in text or any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        assert outcome == "invalid"


LINE = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([2**31 - 1, 2**31, 2**32, -1, 0]),
)


@FUZZ
@given(start=LINE, end=LINE, depth=st.integers(min_value=0, max_value=300))
def test_arbitrary_line_numbers_and_nesting_are_imported_or_refused(project, developer, start, end, depth):
    report = copy.deepcopy(BASE)
    report["vulnerabilities"][0]["location"].update(start_line=start, end_line=end)
    nested: Any = 1
    for _ in range(depth):
        nested = [nested]
    report["vulnerabilities"][1]["details"] = {"x": nested}
    outcome, _ = _outcome(_encode(report), project, developer)
    stored = isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < 2**31
    assert outcome == ("imported" if stored and depth + 6 <= 64 else "invalid")


@pytest.fixture
def fuzz_api(api, developer, settings, tmp_path, no_broker):
    settings.REPORT_IMPORT_RATE_LIMIT = 0
    settings.MEDIA_ROOT = tmp_path / "media"
    return api(developer)


def _through_the_api(client, project, raw: bytes, capture) -> dict:
    response = client.post(URL.format(project.pk), data=raw, content_type="application/json")
    assert response.status_code == 202, response.content
    record = ReportImport.objects.get(pk=response.json()["id"])
    with capture(execute=True):
        execute(record.job_run_id, 1)
    run = JobRun.objects.get(pk=record.job_run_id)
    assert run.status == "succeeded", (run.error_code, run.error)
    status = client.get(URL.format(project.pk) + f"/{record.pk}")
    assert status.status_code == 200
    return status.json()


@FUZZ
@given(case=hostile_reports())
def test_the_api_never_answers_5xx_to_arbitrary_text(fuzz_api, project, case, django_capture_on_commit_callbacks):
    raw, _text = case
    body = _through_the_api(fuzz_api, project, raw, django_capture_on_commit_callbacks)
    assert body["status"] in ("finished", "failed")
    if body["status"] == "failed":
        assert body["error"]["code"] == "invalid_report"
    assert MARKER not in json.dumps(body)


@settings(FUZZ, max_examples=50)
@given(raw=st.binary(min_size=1, max_size=300) | st.text(min_size=1, max_size=300).map(str.encode))
def test_the_api_never_answers_5xx_to_arbitrary_bytes(fuzz_api, project, raw, django_capture_on_commit_callbacks):
    body = _through_the_api(fuzz_api, project, raw, django_capture_on_commit_callbacks)
    assert (body["status"], body["error"]["code"]) == ("failed", "invalid_report")
