"""End to end: a real django-q2 cluster runs the routing and verification jobs against the
local SDRS server over HTTP, and SDRS calls back into a live web server (pytest-django's
``live_server``, a thread of this process).

The cluster's retry delays are SDRS_RETRY_DELAYS scaled by 1/10 (0.4, 1.6, 6.4 s), so a
two-minute outage is twelve seconds of the scaled clock; the exact 4/16/64 s are proven on
the toolkit's recorded due times in test_verification_job.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import time_machine
from django.conf import settings as django_settings
from django.utils import timezone
from django_q.models import Schedule

from project.jobs import JobRun
from secret_detection import services
from secret_detection.models import Finding, FindingTokenStatus
from tests.secret_detection.conftest import CALLBACK_SECRET, report_with
from tests.support.cluster import ClusterProcess, running_cluster, wait_for
from tests.support.sdrs import SdrsServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

SCALED_DELAYS = (0.4, 1.6, 6.4)
VERIFY = "secret_detection.verify_partner_token"


@pytest.fixture
def sdrs(rsa_keys) -> Iterator[SdrsServer]:
    server = SdrsServer(public_key=rsa_keys[1], callback_secret=CALLBACK_SECRET).start()
    yield server
    server.close()


@pytest.fixture
def sd_cluster(live_server, settings, sdrs_settings, sdrs) -> Iterator[ClusterProcess]:
    """A cluster whose callback URL is the live server, with retry delays scaled 1/10."""
    # Only this test's jobs: no scheduled tick may race the steps the test takes by hand.
    Schedule.objects.all().delete()
    settings.EXTERNAL_URL = live_server.url
    sdrs_settings(url=sdrs.url)
    env = {"EXTERNAL_URL": live_server.url, "SDRS_RETRY_DELAYS": ",".join(map(str, SCALED_DELAYS))}
    with running_cluster(broker=django_settings.JOBS_BROKER, workers=4, env=env) as cluster:
        yield cluster


def _all_runs_finished(name: str, count: int) -> bool:
    finished = JobRun.objects.filter(name=name, status__in=["succeeded", "failed"]).count()
    return finished == count and not JobRun.objects.filter(name=name, status__in=["queued", "running"]).exists()


def _statuses() -> Counter[tuple[str, str]]:
    return Counter(FindingTokenStatus.objects.values_list("status", "last_error_code"))


def test_sample_report_is_verified_end_to_end(sd_cluster, sdrs, api, project, developer, sample_report):
    response = api(developer).post(
        f"/api/v4/projects/{project.pk}/secret_detection/reports", sample_report, format="json"
    )
    assert response.status_code == 202  # stored; a job imports it

    def partners_done() -> bool:
        return FindingTokenStatus.objects.filter(verifier="partner", status__in=["active", "inactive"]).count() == 5

    wait_for(partners_done, timeout=40, message=f"verification did not finish:\n{sd_cluster.output()}")
    wait_for(sdrs.callbacks_idle, timeout=10)

    by_type = {
        s.finding.token_type + ":" + s.finding.file_path: s
        for s in FindingTokenStatus.objects.select_related("finding")
    }
    assert {key.split(":")[0]: s.status for key, s in by_type.items()} == {
        "AWS": "active",
        "GCP API key": "active",
        "Postman API token": "active",
        "GitHub Personal Access Token": "active",
        "gitlab_personal_access_token": "inactive",  # checked locally: not one of our live tokens
        "Password in URL": "unknown",
        "SSH private key": "unknown",
    }
    # One request per partner finding, each from the importer, each called back once.
    assert len(sdrs.verifies) == 5
    assert {r.subject for r in sdrs.verifies} == {f"user:{developer.pk}"}
    assert [c.http_status for c in sdrs.callbacks] == [200] * 5
    for record in sdrs.verifies:
        status = FindingTokenStatus.objects.get(pk=record.finding_id)
        assert status.last_request_id == record.request_id
        assert status.last_verified_at is not None
        assert status.next_refresh_at > timezone.now() + timedelta(hours=23)


def test_sdrs_down_for_two_minutes_while_200_findings_are_verified(sd_cluster, sdrs, project, developer, sample_report):
    """Every finding ends active, inactive or unknown with a clear last error code; none
    stays pending: retries are spent while SDRS is down (unknown, sdrs_unavailable); the
    refresher verifies them once it is back; a callback SDRS loses times out."""
    values = [
        f"AKIA-revoked-{n}" if n % 4 == 0 else f"AKIA-lost-{n}" if n % 10 == 5 else f"AKIA-live-{n}" for n in range(200)
    ]
    sdrs.stop()  # down: connections are refused
    services.report_import(
        project=project, user=developer, report=report_with([("AWS", v) for v in values], base=sample_report)
    )

    wait_for(lambda: _all_runs_finished(VERIFY, 200), timeout=90, message=f"runs still going:\n{sd_cluster.output()}")

    assert _statuses() == {("unknown", "sdrs_unavailable"): 200}
    assert set(FindingTokenStatus.objects.values_list("attempts", flat=True)) == {4}
    run = JobRun.objects.filter(name=VERIFY).first()
    assert [entry["outcome"] for entry in run.history] == ["retried", "retried", "retried", "failed"]
    gaps = [
        (datetime.fromisoformat(later["due_at"]) - datetime.fromisoformat(earlier["finished_at"])).total_seconds()
        for earlier, later in zip(run.history, run.history[1:], strict=False)
    ]
    assert gaps == pytest.approx(SCALED_DELAYS, abs=0.01)
    # Each finding spent its whole retry budget (84 s unscaled) before SDRS came back.
    for each in JobRun.objects.filter(name=VERIFY):
        first, last = each.history[0], each.history[-1]
        span = datetime.fromisoformat(last["finished_at"]) - datetime.fromisoformat(first["started_at"])
        assert span.total_seconds() >= sum(SCALED_DELAYS)

    sdrs.start()  # back after two (scaled) minutes
    with time_machine.travel(timezone.now() + timedelta(minutes=11)) as clock:
        tick = services.token_statuses_refresh()
        assert (tick["claimed"], tick["accepted"]) == (200, 200)
        wait_for(sdrs.callbacks_idle, timeout=30)
        lost = sum("lost" in v for v in values)
        assert FindingTokenStatus.objects.filter(status="pending").count() == lost

        clock.shift(timedelta(minutes=16))  # past SDRS_PENDING_TIMEOUT (15 min) with no callback
        assert services.pending_expire() == lost

    revoked = sum("revoked" in v for v in values)
    assert _statuses() == {
        ("inactive", ""): revoked,
        ("active", ""): 200 - revoked - lost,
        ("unknown", "callback_timeout"): lost,
    }
    assert len(sdrs.accepted()) == 200  # each token sent once after the outage


def test_requests_that_fail_once_are_retried_and_none_is_lost(sd_cluster, sdrs, project, developer, sample_report):
    sdrs.failures.fail_once_percent = 30
    services.report_import(
        project=project,
        user=developer,
        report=report_with([("GitHub Personal Access Token", f"ghp_{n}") for n in range(40)], base=sample_report),
    )

    wait_for(lambda: _all_runs_finished(VERIFY, 40), timeout=60, message=f"runs still going:\n{sd_cluster.output()}")
    wait_for(sdrs.callbacks_idle, timeout=10)

    assert _statuses() == {("active", ""): 40}
    failed_first = {r.finding_id for r in sdrs.verifies if r.answered == 500}
    assert failed_first  # about 30% of the findings
    for run in JobRun.objects.filter(name=VERIFY):
        if run.kwargs["finding_id"] in failed_first:
            assert (run.status, run.attempt, run.history[0]["error_code"]) == ("succeeded", 2, "sdrs_server_error")
        else:
            assert (run.status, run.attempt) == ("succeeded", 1)
    assert Finding.objects.count() == 40
