"""End to end: a real django-q2 cluster runs the routing and verification jobs against the
local SDRS server over HTTP, and SDRS calls back into a live web server (pytest-django's
``live_server``, a thread of this process).

The cluster's retry delays are SDRS_RETRY_DELAYS scaled by 1/10 (0.4, 1.6, 6.4 s), so a
two-minute outage is twelve seconds of the scaled clock; the exact 4/16/64 s are proven on
the toolkit's recorded due times in test_verification_job.py. No wait has a fixed deadline:
each fails only when nothing has moved (runs, requests, callbacks, statuses) for its
``stall``, so a loaded machine waits longer and a stuck cluster fails fast.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings as django_settings
from django.utils import timezone
from django_q.models import Schedule

from project.jobs import JobRun
from secret_detection import services
from secret_detection.models import Finding, FindingTokenStatus, SdrsHealth
from tests.secret_detection.conftest import CALLBACK_SECRET, report_with
from tests.support.cluster import ClusterProcess, running_cluster, wait_until
from tests.support.sdrs import SdrsServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

SCALED_DELAYS = (0.4, 1.6, 6.4)
VERIFY = "secret_detection.verify_partner_token"
VERIFY_RETRY = "secret_detection.verify_partner_token_retry"
TICK = "secret_detection.refresh_token_statuses"


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
    env = {
        "EXTERNAL_URL": live_server.url,
        "SDRS_RETRY_DELAYS": ",".join(map(str, SCALED_DELAYS)),
        "SDRS_PROBE_INTERVAL": "1",
    }
    with running_cluster(broker=django_settings.JOBS_BROKER, workers=4, env=env) as cluster:
        yield cluster


def _all_runs_finished(name: str, count: int) -> bool:
    finished = JobRun.objects.filter(name=name, status__in=["succeeded", "failed"]).count()
    return finished == count and not JobRun.objects.filter(name=name, status__in=["queued", "running"]).exists()


def _statuses() -> Counter[tuple[str, str]]:
    return Counter(FindingTokenStatus.objects.values_list("status", "last_error_code"))


def _progress(sdrs: SdrsServer):
    """What keeps changing while the work goes on: runs, requests, callbacks, statuses.
    The waits fail when none of it has moved for their ``stall``, not after a fixed time."""

    def snapshot():
        runs = sorted(map(str, JobRun.objects.values_list("name", "status", "attempt", "heartbeat_at")))
        return runs, len(sdrs.verifies), len(sdrs.callbacks), sorted(_statuses().items())

    return snapshot


def test_sample_report_is_verified_end_to_end(sd_cluster, sdrs, api, project, developer, sample_report):
    response = api(developer).post(
        f"/api/v4/projects/{project.pk}/secret_detection/reports", sample_report, format="json"
    )
    assert response.status_code == 202  # stored; a job imports it

    def partners_done() -> bool:
        return FindingTokenStatus.objects.filter(verifier="partner", status__in=["active", "inactive"]).count() == 5

    progress = _progress(sdrs)
    wait_until(partners_done, progress=progress, message=lambda: f"verification did not finish:\n{sd_cluster.output()}")
    wait_until(sdrs.callbacks_idle, progress=progress)

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
    """SDRS refuses connections for two (scaled) minutes, longer than the retry window.
    The circuit breaker opens after SDRS_BREAKER_THRESHOLD attempts: the findings are
    parked (``sdrs_down``) instead of each spending its retries; the half-open probe runs
    every SDRS_PROBE_INTERVAL (1 s here) while SDRS is down. Once SDRS is back, the first
    probe closes the circuit and a refresher tick verifies every finding, each token sent
    once: no finding waits for the refresher's 600 s retry. A callback SDRS loses still
    times out."""
    values = [
        f"AKIA-revoked-{n}" if n % 4 == 0 else f"AKIA-lost-{n}" if n % 10 == 5 else f"AKIA-live-{n}" for n in range(200)
    ]
    sdrs.stop()  # down: connections are refused
    services.report_import(
        project=project, user=developer, report=report_with([("AWS", v) for v in values], base=sample_report)
    )
    progress = _progress(sdrs)
    # 200 fresh findings go to the refresher's pool: the first refused requests pause
    # every partner for the tick (the rest are backed off, not sent) and are retried by
    # jobs of their own, which the open circuit parks.
    wait_until(
        lambda: (
            _all_runs_finished(TICK, JobRun.objects.filter(name=TICK).count())
            and JobRun.objects.filter(name=TICK).exists()
            and _all_runs_finished(VERIFY_RETRY, JobRun.objects.filter(name=VERIFY_RETRY).count())
            and SdrsHealth.objects.filter(pk=1, circuit="open").exists()
        ),
        progress=progress,
        message=lambda: f"runs still going:\n{sd_cluster.output()}",
    )
    assert {status for status, _code in _statuses()} == {"unknown"}
    assert {code for _status, code in _statuses()} <= {"sdrs_down", "sdrs_unavailable"}
    # Paused and parked, not retried for 84 s each: most findings never sent a request.
    assert len(sdrs.verifies) == 0
    assert JobRun.objects.filter(name=VERIFY_RETRY).count() <= django_settings.TOKEN_REFRESH_CONCURRENCY

    # Still down when the half-open probe tries it: the circuit stays open.
    wait_until(
        lambda: SdrsHealth.objects.filter(pk=1, probe_result="sdrs_unavailable").exists(),
        progress=progress,
        message=lambda: f"no probe while SDRS was down:\n{sd_cluster.output()}",
    )
    sdrs.start()  # back
    lost = sum("lost" in v for v in values)

    def verified() -> bool:
        done = FindingTokenStatus.objects.filter(status__in=["active", "inactive"]).count()
        # And the tick ended: its pool claims (pending) and sends each row in turn, so a lost
        # token may not be sent yet when every other callback has landed.
        ticked = _all_runs_finished(TICK, JobRun.objects.filter(name=TICK).count())
        return done == 200 - lost and sdrs.callbacks_idle() and ticked

    wait_until(
        verified, progress=progress, message=lambda: f"not verified after SDRS came back:\n{sd_cluster.output()}"
    )
    assert SdrsHealth.objects.get(pk=1).circuit == "closed"
    assert FindingTokenStatus.objects.filter(status="pending").count() == lost
    with time_machine.travel(timezone.now() + timedelta(minutes=16)):  # past SDRS_PENDING_TIMEOUT
        assert services.pending_expire() == lost

    revoked = sum("revoked" in v for v in values)
    assert _statuses() == {
        ("inactive", ""): revoked,
        ("active", ""): 200 - revoked - lost,
        ("unknown", "callback_timeout"): lost,
    }
    sends = Counter(record.finding_id for record in sdrs.accepted() if record.finding_id)
    assert set(sends.values()) == {1}  # each token sent once after the outage
    assert len(sends) == 200


def test_requests_that_fail_once_are_retried_and_none_is_lost(sd_cluster, sdrs, project, developer, sample_report):
    sdrs.failures.fail_once_percent = 30
    services.report_import(
        project=project,
        user=developer,
        report=report_with([("GitHub Personal Access Token", f"ghp_{n}") for n in range(40)], base=sample_report),
    )

    progress = _progress(sdrs)
    wait_until(
        lambda: (
            FindingTokenStatus.objects.filter(status="active").count() == 40
            and _all_runs_finished(VERIFY_RETRY, JobRun.objects.filter(name=VERIFY_RETRY).count())
        ),
        progress=progress,
        message=lambda: f"runs still going:\n{sd_cluster.output()}",
    )
    wait_until(sdrs.callbacks_idle, progress=progress)

    assert _statuses() == {("active", ""): 40}
    failed_first = {r.finding_id for r in sdrs.verifies if r.answered == 500}
    assert failed_first  # about 30% of the findings
    # Sent first by the refresher's pool; each that failed was retried once by a job of its own.
    retries = JobRun.objects.filter(name=VERIFY_RETRY)
    assert {run.kwargs["finding_id"] for run in retries} == failed_first
    assert {(run.status, run.attempt) for run in retries} == {("succeeded", 1)}
    assert not JobRun.objects.filter(name=VERIFY).exists()
    assert Finding.objects.count() == 40
