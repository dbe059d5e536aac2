"""The token status transitions: each is one conditional UPDATE, and from the wrong state
it changes nothing. No other module of secret_detection writes the row."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine

from secret_detection.models import FindingTokenStatus
from secret_detection.services import statuses

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
APP = Path(__file__).resolve().parents[2] / "secret_detection"


@pytest.fixture(autouse=True)
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def row(project, import_findings):
    """``row(**fields)``: a status with those fields, as stored."""
    made = iter(range(100))

    def make(**fields) -> FindingTokenStatus:
        (finding,) = import_findings(project, [("AWS", "AKIA1")], prefix=f"s{next(made)}")
        if fields:
            FindingTokenStatus.objects.filter(pk=finding.pk).update(**fields)
        return FindingTokenStatus.objects.get(pk=finding.pk)

    return make


def _get(status: FindingTokenStatus) -> FindingTokenStatus:
    return FindingTokenStatus.objects.get(pk=status.pk)


def test_claim_makes_the_status_pending_for_one_request(row):
    status = row(status="active")
    claim = statuses.status_claim(finding_id=status.pk, request_id="r1", attempt=2, lease=30)
    assert claim.outcome == "claimed"
    status = _get(status)
    assert (status.status, status.verifier, status.last_request_id, status.attempts) == ("pending", "partner", "r1", 2)
    assert (status.pending_since, status.sending_until, status.accepted_at) == (NOW, NOW + timedelta(seconds=30), None)


def test_claim_refuses_while_another_attempt_is_sending(row):
    status = row(status="pending", sending_until=NOW + timedelta(seconds=7))
    claim = statuses.status_claim(finding_id=status.pk, request_id="r2", attempt=1, lease=30, force=True)
    assert (claim.outcome, claim.wait_seconds) == ("in_flight", 7)
    assert _get(status).last_request_id == ""


def test_claim_refuses_a_status_awaiting_its_callback_unless_forced(row):
    status = row(status="pending", accepted_at=NOW - timedelta(minutes=1), last_request_id="r1")
    assert statuses.status_claim(finding_id=status.pk, request_id="r2", attempt=1, lease=30).outcome == (
        "already_accepted"
    )
    assert _get(status).last_request_id == "r1"
    forced = statuses.status_claim(finding_id=status.pk, request_id="r2", attempt=1, lease=30, force=True)
    assert forced.outcome == "claimed"
    assert _get(status).last_request_id == "r2"


def test_claim_of_a_missing_status():
    assert statuses.status_claim(finding_id=987654, request_id="r", attempt=1, lease=30).outcome == "missing"


def test_what_happens_to_a_request_applies_only_to_the_request_that_holds_the_status(row):
    status = row()
    statuses.status_claim(finding_id=status.pk, request_id="r1", attempt=1, lease=30)
    for transition in (
        lambda request_id: statuses.status_accepted(finding_id=status.pk, request_id=request_id),
        lambda request_id: statuses.status_send_failed(finding_id=status.pk, request_id=request_id, code="x"),
        lambda request_id: statuses.status_refresh_failed(
            finding_id=status.pk, request_id=request_id, code="x", status="active", retry_in=60
        ),
    ):
        assert transition("another") is False
    assert _get(status).sending_until is not None  # untouched

    assert statuses.status_send_failed(finding_id=status.pk, request_id="r1", code="sdrs_timeout") is True
    stored = _get(status)
    assert (stored.status, stored.last_error_code, stored.sending_until) == ("pending", "sdrs_timeout", None)

    assert statuses.status_accepted(finding_id=status.pk, request_id="r1") is True
    stored = _get(status)
    assert (stored.status, stored.accepted_at, stored.last_error_code) == ("pending", NOW, "")


def test_a_failed_refresh_returns_to_the_verdict_it_had(row):
    status = row(status="active")
    statuses.status_claim(finding_id=status.pk, request_id="r1", attempt=1, lease=30)
    assert statuses.status_refresh_failed(
        finding_id=status.pk, request_id="r1", code="sdrs_server_error", status="active", retry_in=600
    )
    stored = _get(status)
    assert (stored.status, stored.pending_since, stored.sending_until) == ("active", None, None)
    assert (stored.last_error_code, stored.next_refresh_at) == ("sdrs_server_error", NOW + timedelta(seconds=600))
    # Once it is no longer pending for that request, a second report changes nothing.
    assert not statuses.status_refresh_failed(
        finding_id=status.pk, request_id="r1", code="other", status="inactive", retry_in=1
    )


def test_a_result_applies_only_to_the_pending_request_it_answers(row):
    status = row(status="pending", last_request_id="a")
    earlier = NOW - timedelta(minutes=5)
    # An answer to another request (an older one, or one never sent) changes nothing.
    assert statuses.status_result(finding_id=status.pk, status="inactive", verified_at=earlier, request_id="b") == (
        "stale"
    )
    assert _get(status).status == "pending"
    assert statuses.status_result(finding_id=status.pk, status="active", verified_at=earlier, request_id="a") == (
        "applied"
    )
    # A replay of the applied result is harmless, whatever it says.
    assert statuses.status_result(finding_id=status.pk, status="active", verified_at=earlier, request_id="a") == (
        "duplicate"
    )
    stored = _get(status)
    assert (stored.status, stored.last_request_id) == ("active", "a")
    assert stored.last_verified_at == earlier
    assert statuses.status_result(finding_id=987654, status="active", verified_at=NOW, request_id="d") == "missing"


def test_failed_moves_only_a_pending_status_back_to_unknown(row):
    # Pending for a request that was never written (send_failed released its lease).
    pending = row(status="pending", pending_since=NOW, last_request_id="r1")
    active = row(status="active")
    assert statuses.status_failed(finding_id=pending.pk, code="sdrs_auth_rejected") is True
    assert statuses.status_failed(finding_id=active.pk, code="sdrs_auth_rejected") is False
    stored = _get(pending)
    assert (stored.status, stored.last_error_code) == ("unknown", "sdrs_auth_rejected")
    assert (stored.pending_since, stored.accepted_at, stored.sending_until) == (None, None, None)
    assert stored.next_refresh_at == NOW + timedelta(minutes=10)
    assert _get(active).status == "active"


def test_a_failed_run_leaves_a_request_sdrs_may_hold_awaiting_its_callback(row, clock):
    """The run failed (its worker died on the last attempt, its time budget ran out or it
    was cancelled while sending) after its request was written: the status stays pending
    for that request, so the callback still applies and nothing sends the token again."""
    accepted = row(status="pending", pending_since=NOW, accepted_at=NOW, last_request_id="a")
    sending = row(status="pending", pending_since=NOW, sending_until=NOW + timedelta(seconds=20), last_request_id="s")
    for held in (accepted, sending):
        assert statuses.status_failed(finding_id=held.pk, code="worker_lost") is False
        assert (_get(held).status, _get(held).last_error_code) == ("pending", "")
    clock.move_to(NOW + timedelta(seconds=60))  # the lease ran out: possibly accepted
    again = statuses.status_claim(finding_id=sending.pk, request_id="again", attempt=1, lease=9)
    assert again.outcome == "unconfirmed"
    assert statuses.status_result(finding_id=accepted.pk, status="active", verified_at=NOW, request_id="a") == (
        "applied"
    )


def test_callbacks_lost_in_an_outage_make_the_requests_held_before_it_due_again(row):
    """A request accepted (or possibly accepted) before the outage whose callback did not
    come: unknown, callback_lost, due now; its late callback still applies. Requests made
    after the outage, rows sending now and requests never written are left alone."""
    outage = NOW - timedelta(seconds=10)
    before = NOW - timedelta(seconds=30)
    lost = row(status="pending", pending_since=before, accepted_at=before, last_request_id="lost")
    unconfirmed = row(status="pending", pending_since=before, sending_until=before, last_request_id="u")
    after = row(status="pending", pending_since=NOW, accepted_at=NOW, last_request_id="after")
    sending = row(status="pending", pending_since=before, sending_until=NOW + timedelta(seconds=5))
    unwritten = row(status="pending", pending_since=before, last_request_id="x")
    assert sorted(statuses.status_callbacks_lost(before=outage, limit=10)) == sorted([lost.pk, unconfirmed.pk])
    stored = _get(lost)
    assert (stored.status, stored.last_error_code, stored.next_refresh_at) == ("unknown", "callback_lost", NOW)
    assert stored.last_request_id == "lost"
    for untouched in (after, sending, unwritten):
        assert _get(untouched).status == "pending"
    assert statuses.status_result(finding_id=lost.pk, status="inactive", verified_at=NOW, request_id="lost") == (
        "applied"
    )
    assert statuses.status_callbacks_lost(before=outage, limit=10) == []


def test_requeue_unavailable_makes_due_what_failed_as_unavailable(row):
    later = NOW + timedelta(minutes=10)
    parked = [
        row(status="unknown", last_error_code=code, next_refresh_at=later) for code in ("sdrs_unavailable", "sdrs_down")
    ]
    rejected = row(status="unknown", last_error_code="sdrs_auth_rejected", next_refresh_at=later)
    pending = row(status="pending", last_error_code="sdrs_unavailable", next_refresh_at=later)
    assert statuses.status_requeue_unavailable(codes=["sdrs_unavailable", "sdrs_down"]) == 2
    assert [_get(each).next_refresh_at for each in parked] == [NOW, NOW]
    assert _get(rejected).next_refresh_at == later
    assert _get(pending).next_refresh_at == later


def test_back_off_make_due_and_local_checks_leave_pending_statuses_alone(row):
    pending, active = row(status="pending"), row(status="active")
    ids = [pending.pk, active.pk]
    assert statuses.status_back_off(finding_ids=ids, code="no_verifier", seconds=600) == 1
    assert _get(active).next_refresh_at == NOW + timedelta(seconds=600)
    assert statuses.status_make_due(finding_ids=ids) == 1
    assert _get(active).next_refresh_at == NOW
    assert statuses.status_checked_locally(finding_id=pending.pk, status="inactive") is False
    assert statuses.status_checked_locally(finding_id=active.pk, status="active") is True
    stored, untouched = _get(active), _get(pending)
    assert (stored.verifier, stored.last_verified_at, stored.next_refresh_at) == (
        "local",
        NOW,
        NOW + timedelta(hours=24),
    )
    assert (untouched.status, untouched.last_error_code, untouched.next_refresh_at) == ("pending", "", None)


def test_routed_only_once(row):
    status = row()
    assert statuses.status_routed(finding_ids=[status.pk], verifier="partner") == 1
    assert statuses.status_routed(finding_ids=[status.pk], verifier="none") == 0
    assert (_get(status).verifier, _get(status).routed_at) == ("partner", NOW)


def test_reset_forgets_the_verdict_about_the_old_value(row):
    status = row(status="active", verifier="partner", routed_at=NOW, last_verified_at=NOW, attempts=3)
    assert statuses.status_reset(finding_ids=[status.pk]) == 1
    stored = _get(status)
    assert (stored.status, stored.verifier, stored.routed_at, stored.last_verified_at, stored.attempts) == (
        "unknown",
        "",
        None,
        None,
        0,
    )


def _writes_of_the_status_row(path: Path) -> list[int]:
    """Lines where ``FindingTokenStatus…`` is written (a manager or queryset write call)."""
    writes = {"update", "bulk_create", "bulk_update", "create", "get_or_create", "update_or_create", "delete"}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in writes:
            receiver = node.func.value
            names = {n.id for n in ast.walk(receiver) if isinstance(n, ast.Name)}
            if "FindingTokenStatus" in names:
                found.append(node.lineno)
    return found


def test_no_other_module_writes_the_status_row():
    writers = {
        str(path.relative_to(APP.parent)): lines
        for path in sorted(APP.rglob("*.py"))
        if "migrations" not in path.parts and path.name != "statuses.py"
        for lines in [_writes_of_the_status_row(path)]
        if lines
    }
    assert writers == {}
