"""The report check asks jsonschema-rs first and jsonschema only for the findings it calls
invalid (for their messages). That is safe only if jsonschema-rs never calls valid what
jsonschema refuses: checked here on the sample's findings with any part replaced by any
JSON value (Hypothesis), including the values ijson yields (``Decimal``)."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secret_detection.services.reports import report_schema
from tests.secret_detection.conftest import SAMPLE

_FINDING = json.loads(SAMPLE.read_text())["vulnerabilities"][0]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(10**6), max_value=10**6).map(lambda whole: Decimal(f"{whole}.0"))
    | st.text(max_size=40)
    | st.sampled_from(["Critical", "High", "Unknown", "1.2.3", "1.2.3\n", "https://x", "2026-11-20T10:00:00", "١٢"])
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


_PATHS = _paths(_FINDING)[1:]


def _replaced(path: tuple[Any, ...], value: Any, *, drop: bool) -> dict[str, Any]:
    finding = copy.deepcopy(_FINDING)
    node = finding
    for part in path[:-1]:
        node = node[part]
    if drop and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return finding


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(_PATHS), value=_json, drop=st.booleans(), extra=st.none() | st.text(max_size=8))
def test_the_fast_check_never_calls_valid_a_finding_the_schema_refuses(path, value, drop, extra):
    schema = report_schema()
    finding = _replaced(path, value, drop=drop)
    if extra is not None:
        finding[extra] = value

    refused = any(True for _ in schema.vulnerability.iter_errors(finding))

    # Stricter would only cost time (jsonschema then decides); more lenient would let in
    # what the schema refuses.
    assert not (refused and schema.vulnerability_valid(finding))


def test_the_fast_check_takes_the_numbers_ijson_yields():
    schema = report_schema()
    finding = copy.deepcopy(_FINDING)
    for number in (Decimal("12.5"), Decimal("12.0")):
        finding["location"]["start_line"] = number

        assert schema.vulnerability_valid(finding) is False
        assert any(True for _ in schema.vulnerability.iter_errors(finding))
    assert schema.vulnerability_valid(_FINDING) is True
