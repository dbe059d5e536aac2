"""Direct partner verification against the local stand-ins (real HTTP servers): the
routing default, each partner's verdict, malformed values, garbage answers, rate limits
rescheduled at most five times, network errors retried, and where each value goes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.utils import timezone

from project.jobs import JobRun
from project.jobs.testing import run_inline
from secret_detection import services
from secret_detection.models import DirectPartner, Finding, FindingTokenStatus, PartnerTokenType
from secret_detection.services import pacing
from tests.support.partners import (
    AWS_ACTIVE,
    AWS_INACTIVE,
    GCP_ACTIVE,
    GCP_INACTIVE,
    GITHUB_ACTIVE,
    GITHUB_INACTIVE,
    POSTMAN_ACTIVE,
    POSTMAN_INACTIVE,
    PartnerStandIn,
    partner_stand_ins,
    partner_urls,
)

pytestmark = pytest.mark.django_db

DIRECT = "secret_detection.verify_direct_token"
SDRS_VERIFY = "secret_detection.verify_partner_token"


@pytest.fixture
def stand_ins(settings) -> Iterator[dict[str, PartnerStandIn]]:
    with partner_stand_ins() as servers:
        for name, url in partner_urls(servers).items():
            setattr(settings, name, url)
        settings.PARTNER_TIMEOUT = 2.0
        yield servers


def _status(finding: Finding) -> FindingTokenStatus:
    return FindingTokenStatus.objects.get(pk=finding.pk)


def _verify(finding: Finding, **kwargs) -> tuple[str, JobRun]:
    return run_inline(DIRECT, finding_id=finding.pk, **kwargs)


def test_with_sdrs_off_partner_types_with_a_client_are_routed_directly(project, developer, import_findings):
    findings = import_findings(
        project,
        [("AWS", AWS_ACTIVE), ("Postman API token", POSTMAN_ACTIVE), ("GitHub Refresh Token", "ghr_x")],
    )
    counts = services.token_statuses_route(project_id=project.pk)

    assert counts == {"direct_enqueued": 2, "verification_disabled": 1}
    direct = JobRun.objects.filter(name=DIRECT)
    assert {run.kwargs["finding_id"] for run in direct} == {findings[0].pk, findings[1].pk}
    # Ids, never a value; each run holds a slot of its partner's limit already.
    assert all(set(run.kwargs) == {"finding_id", "user_id", "paced"} for run in direct)
    assert [_status(f).verifier for f in findings] == ["direct", "direct", "partner"]


def test_with_sdrs_on_partner_types_go_to_sdrs_unless_the_admin_routes_them(
    project, developer, import_findings, sdrs_settings
):
    sdrs_settings()
    PartnerTokenType.objects.filter(token_type="Postman API token").update(verifier="direct")
    PartnerTokenType.objects.filter(token_type="GCP API key").update(verifier="none")
    import_findings(project, [("AWS", AWS_ACTIVE), ("Postman API token", POSTMAN_ACTIVE), ("GCP API key", GCP_ACTIVE)])

    counts = services.token_statuses_route(project_id=project.pk)

    assert counts == {"partner_enqueued": 1, "direct_enqueued": 1, "verification_off_for_type": 1}
    assert JobRun.objects.filter(name=SDRS_VERIFY).count() == 1
    assert JobRun.objects.filter(name=DIRECT).count() == 1


def test_a_partner_switched_off_waits(project, developer, import_findings):
    DirectPartner.objects.create(partner="aws", enabled=False)
    (finding,) = import_findings(project, [("AWS", AWS_ACTIVE)])
    assert services.token_statuses_route(project_id=project.pk) == {"partner_disabled": 1}
    assert _status(finding).last_error_code == "partner_disabled"
    assert _status(finding).next_refresh_at is not None


@pytest.mark.parametrize(
    ("token_type", "value", "partner", "expected"),
    [
        ("AWS", AWS_ACTIVE, "aws", "active"),
        ("AWS", AWS_INACTIVE, "aws", "inactive"),
        ("GCP API key", GCP_ACTIVE, "gcp", "active"),
        ("Google (GCP) Service-account", GCP_INACTIVE, "gcp", "inactive"),
        ("Postman API token", POSTMAN_ACTIVE, "postman", "active"),
        ("Postman API token", POSTMAN_INACTIVE, "postman", "inactive"),
        ("GitHub Personal Access Token", GITHUB_ACTIVE, "github", "active"),
        ("GitHub OAuth Access Token", GITHUB_INACTIVE, "github", "inactive"),
    ],
)
def test_each_partner_answers_synchronously_with_the_verdict(
    project, import_findings, stand_ins, token_type, value, partner, expected
):
    (finding,) = import_findings(project, [(token_type, value)])

    outcome, _run = _verify(finding)

    assert outcome == "succeeded"
    status = _status(finding)
    assert (status.status, status.partner, status.verifier, status.last_error_code) == (
        expected,
        partner,
        "direct",
        "",
    )
    assert status.last_verified_at is not None
    assert status.pending_since is None
    assert stand_ins[partner].values() == [value]


def test_aws_receives_a_sigv4_request_for_sts_with_the_found_key_id(project, import_findings, stand_ins):
    (finding,) = import_findings(project, [("AWS", AWS_ACTIVE)])
    _verify(finding)
    (received,) = stand_ins["aws"].received
    assert (received.method, received.value, received.service, received.region) == (
        "POST",
        AWS_ACTIVE,
        "sts",
        "us-east-1",
    )
    assert received.body == b"Action=GetCallerIdentity&Version=2011-06-15"
    assert "x-amz-date" in received.headers


@pytest.mark.parametrize(("mode", "expected"), [("signature_mismatch", "active"), ("invalid_client_token", "inactive")])
def test_aws_403s_decide_the_verdict(project, import_findings, stand_ins, mode, expected):
    stand_ins["aws"].mode = mode
    (finding,) = import_findings(project, [("AWS", AWS_INACTIVE if expected == "active" else AWS_ACTIVE)])
    _verify(finding)
    assert _status(finding).status == expected


def test_a_malformed_token_is_unknown_without_any_call(project, import_findings, stand_ins):
    (finding,) = import_findings(project, [("AWS", "AKIA-not-a-key")])
    outcome, _ = _verify(finding)
    assert outcome == "succeeded"
    status = _status(finding)
    assert (status.status, status.last_error_code, status.partner) == ("unknown", "format_mismatch", "aws")
    assert stand_ins["aws"].received == []


def test_a_garbage_answer_is_unknown_at_once_not_retried(project, import_findings, stand_ins):
    stand_ins["postman"].mode = "garbage"
    (finding,) = import_findings(project, [("Postman API token", POSTMAN_ACTIVE)])
    outcome, run = _verify(finding)
    assert (outcome, run.attempt) == ("succeeded", 1)
    status = _status(finding)
    assert (status.status, status.last_error_code) == ("unknown", "partner_response_invalid")
    assert status.pending_since is None


def test_a_partner_429_reschedules_after_10_s_and_pauses_the_partner(project, import_findings, stand_ins):
    stand_ins["postman"].mode = "429"
    (finding,) = import_findings(project, [("Postman API token", POSTMAN_ACTIVE)])

    outcome, run = _verify(finding)

    assert outcome == "succeeded"
    assert run.result["rescheduled"] == 1
    (again,) = JobRun.objects.filter(name=DIRECT).exclude(pk=run.pk)
    assert again.kwargs == {"finding_id": finding.pk, "user_id": None, "force": False, "reschedules": 1}
    assert (again.due_at - run.finished_at).total_seconds() >= 9
    status = _status(finding)
    assert (status.status, status.last_error_code) == ("unknown", "partner_rate_limited")
    partner = DirectPartner.objects.get(partner="postman")
    assert partner.paused_until is not None
    assert partner.rate_limit_hits == 1


def test_after_five_reschedules_the_token_stays_unverified_with_a_reason(project, import_findings, stand_ins):
    stand_ins["aws"].mode = "503"
    (finding,) = import_findings(project, [("AWS", AWS_ACTIVE)])

    _outcome, run = _verify(finding, reschedules=5)

    assert run.result == {"gave_up": "rate_limited", "reschedules": 5}
    assert not JobRun.objects.filter(name=DIRECT).exclude(pk=run.pk).exists()
    status = _status(finding)
    assert (status.status, status.last_error_code) == ("unknown", "rate_limited_gave_up")
    assert status.next_refresh_at is not None  # the refresher tries again later


def test_a_paused_partner_reschedules_without_calling(project, import_findings, stand_ins):
    (first, second) = import_findings(project, [("GCP API key", GCP_ACTIVE), ("GCP API key", GCP_INACTIVE)])
    stand_ins["gcp"].then("429")
    _verify(first)
    _outcome, run = _verify(second)
    assert run.result["rescheduled"] == 1
    assert len(stand_ins["gcp"].received) == 1


@pytest.mark.parametrize("mode", ["500", "502", "504"])
def test_a_server_error_is_retried_then_settles_unknown(project, import_findings, stand_ins, mode):
    stand_ins["aws"].mode = mode
    (finding,) = import_findings(project, [("AWS", AWS_ACTIVE)])

    outcome, _run = _verify(finding)
    assert outcome == "retried"
    assert _status(finding).status == "pending"

    outcome, _run = _verify(finding, attempt=4)
    assert outcome == "failed"
    status = _status(finding)
    assert (status.status, status.last_error_code) == ("unknown", "partner_server_error")
    assert status.pending_since is None


def test_a_hanging_partner_is_cut_by_the_timeout_and_retried(project, import_findings, stand_ins, settings):
    settings.PARTNER_TIMEOUT = 0.2
    stand_ins["gcp"].latency = 1.0
    (finding,) = import_findings(project, [("GCP API key", GCP_ACTIVE)])
    outcome, _run = _verify(finding)
    assert outcome == "retried"
    assert _status(finding).last_error_code == "partner_timeout"
    stand_ins["gcp"].latency = 0
    outcome, _run = _verify(finding, attempt=2)
    assert (outcome, _status(finding).status) == ("succeeded", "active")


def test_the_retry_policy_is_4_16_64_s(settings):
    from secret_detection.services import jobs

    settings.PARTNER_RETRY_DELAYS = (4, 16, 64)
    policy = jobs.job_get(DIRECT).retry
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [4, 16, 64, None]


def test_our_per_project_limit_paces_instead_of_refusing(project, import_findings, stand_ins, settings):
    settings.PARTNER_POSTMAN_RATE = 0.01  # one request per 100 s
    first, second = import_findings(project, [("Postman API token", POSTMAN_ACTIVE)] * 1, prefix="a") + import_findings(
        project, [("Postman API token", POSTMAN_INACTIVE)], prefix="b"
    )
    _verify(first)
    _outcome, run = _verify(second)
    assert run.result["paced"] > 90
    (later,) = JobRun.objects.filter(name=DIRECT, kwargs__paced=True)
    assert later.kwargs["finding_id"] == second.pk
    assert later.kwargs["reschedules"] == 0
    assert len(stand_ins["postman"].received) == 1
    settings.PARTNER_POSTMAN_RATE = 0  # (the slot's time has come)
    _outcome, run = run_inline(DIRECT, **later.kwargs)
    assert _status(second).status == "inactive"


def test_runs_that_start_late_together_are_held_to_the_limit_where_they_send(
    project, import_findings, stand_ins, settings
):
    settings.PARTNER_POSTMAN_RATE = 1
    first, second = import_findings(project, [("Postman API token", POSTMAN_ACTIVE)], prefix="a") + import_findings(
        project, [("Postman API token", POSTMAN_INACTIVE)], prefix="b"
    )
    # Both hold a reserved slot already, but a backlog made them start at the same moment.
    assert run_inline(DIRECT, finding_id=first.pk, paced=True)[0] == "succeeded"
    outcome, run = run_inline(DIRECT, finding_id=second.pk, paced=True)
    assert outcome == "deferred"
    assert run.status == "queued"
    assert run.due_at > timezone.now()
    assert len(stand_ins["postman"].received) == 1
    assert _status(second).status == "unknown"


def test_workers_that_send_at_the_same_moment_under_a_high_limit_all_send_at_once(db):
    # Ten workers finishing together, under AWS's 400/s (a slot every 2.5 ms): none of them
    # is sent to the back of the queue for being a few milliseconds early.
    waits = [pacing.rate_send_take(key="partner_aws_api:1", per_second=400) for _ in range(10)]

    assert waits == [0.0] * 10


def test_the_limit_where_runs_send_still_holds_over_a_second(db):
    started = time.monotonic()
    waits = [pacing.rate_send_take(key="partner_aws_api:1", per_second=400) for _ in range(500)]
    elapsed = time.monotonic() - started

    sent_at_once = sum(1 for wait in waits if wait == 0)
    # At most the limit over the time the sends took, plus the burst it tolerates; the
    # others each wait for a slot of their own.
    assert sent_at_once <= 400 * (elapsed + pacing.SEND_BURST_SECONDS) + 1
    late = sorted(wait for wait in waits if wait > 0)
    assert len(late) == len(set(late)) == 500 - sent_at_once


def test_no_value_is_ever_sent_to_another_host(project, import_findings, stand_ins):
    values = {
        "AWS": AWS_ACTIVE,
        "GCP API key": GCP_ACTIVE,
        "GCP OAuth client secret": "GOCSPX-" + "a1B2c3D4e5F6g7H8i9J0k1L2",
        "Google (GCP) Service-account": "b" * 40,
        "Postman API token": POSTMAN_ACTIVE,
        "GitHub Personal Access Token": GITHUB_ACTIVE,
    }
    findings = import_findings(project, list(values.items()))
    for finding in findings:
        _verify(finding)
    issued_by = {"AWS": "aws", "Postman API token": "postman", "GitHub Personal Access Token": "github"}
    for token_type, value in values.items():
        owner = issued_by.get(token_type, "gcp")
        for name, server in stand_ins.items():
            seen = any(value in r.value or value.encode() in r.body for r in server.received)
            assert seen == (name == owner), (token_type, name)


@pytest.mark.parametrize(
    ("token_type", "value", "partner"),
    [
        ("AWS", AWS_ACTIVE, "aws"),
        ("GCP API key", GCP_ACTIVE, "gcp"),
        ("Postman API token", POSTMAN_ACTIVE, "postman"),
        ("GitHub Personal Access Token", GITHUB_ACTIVE, "github"),
    ],
)
def test_a_partner_redirect_is_not_followed_and_the_token_is_unknown(
    project, import_findings, stand_ins, token_type, value, partner
):
    elsewhere = PartnerStandIn().start()  # serves every partner's path, on another port
    try:
        stand_ins[partner].mode = f"redirect:{elsewhere.url(partner)}"
        (finding,) = import_findings(project, [(token_type, value)])

        outcome, run = _verify(finding)

        assert outcome == "succeeded"
        assert run.attempt == 1
        status = _status(finding)
        assert (status.status, status.last_error_code) == ("unknown", "partner_http_307")
        assert stand_ins[partner].values() == [value]
        assert elsewhere.received == []
    finally:
        elsewhere.close()


def test_what_a_run_reads_of_its_finding_never_shows_the_value(project, import_findings):
    from secret_detection.services import direct

    (finding,) = import_findings(project, [("AWS", AWS_ACTIVE)])

    target = direct._target(finding.pk)

    assert target is not None
    assert (target.raw_value, target.token_type, target.previous) == (AWS_ACTIVE, "AWS", "unknown")
    assert AWS_ACTIVE not in repr(target)
    assert direct._target(finding.pk + 1000) is None


def test_verify_now_goes_through_the_direct_verifier(project, import_findings, admin_user):
    (finding,) = import_findings(project, [("AWS", AWS_ACTIVE)])
    counts = services.token_statuses_verify_now(finding_ids=[finding.pk], user_id=admin_user.pk)
    assert counts == {"enqueued": 1}
    (run,) = JobRun.objects.filter(name=DIRECT)
    assert run.kwargs == {"finding_id": finding.pk, "user_id": admin_user.pk, "force": True, "paced": True}


def test_the_refresher_starts_direct_verifications_and_respects_a_partner_pause(project, import_findings):
    aws, postman = import_findings(project, [("AWS", AWS_ACTIVE), ("Postman API token", POSTMAN_ACTIVE)])
    FindingTokenStatus.objects.update(next_refresh_at=timezone.now())
    DirectPartner.objects.create(partner="postman", paused_until=timezone.now() + timezone.timedelta(seconds=30))

    result = services.token_statuses_refresh()

    assert (result["direct_enqueued"], result["skipped_paused"]) == (1, 1)
    assert [run.kwargs["finding_id"] for run in JobRun.objects.filter(name=DIRECT)] == [aws.pk]
    assert _status(postman).last_error_code == "partner_paused"
    # The job holds the row now: a dead tick's take-over would not make it due again.
    assert _status(aws).claimed_by_run is None


def test_routing_reserves_each_runs_slot_of_the_partners_limit(project, import_findings):
    findings = import_findings(project, [("Postman API token", POSTMAN_ACTIVE)] * 1, prefix="a")
    findings += import_findings(project, [("Postman API token", POSTMAN_INACTIVE)], prefix="b")
    findings += import_findings(project, [("AWS", AWS_ACTIVE)], prefix="c")
    services.token_statuses_route(project_id=project.pk)

    runs = {run.kwargs["finding_id"]: run for run in JobRun.objects.filter(name=DIRECT)}
    assert all(run.kwargs["paced"] for run in runs.values())
    postman = sorted(runs[f.pk].due_at for f in findings[:2])
    # 4/s: the second Postman run is due a quarter of a second after the first.
    assert (postman[1] - postman[0]).total_seconds() >= 0.2
    assert DirectPartner.objects.get(partner="postman").rate_limit_hits == 1
