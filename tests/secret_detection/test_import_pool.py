"""Fresh SDRS findings of an import, by the score, go to the refresher's pool (one job, a
bounded set of threads) instead of one job each (direct partners' keep one job each): they
reach the statuses the job path reaches, a failed one is retried on its own after 4, 16
and 64 s, no run carries a token, and a worker killed mid-batch leaves none stuck."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from django_q.models import Schedule

from project.jobs import JobRun
from project.jobs.testing import recovery_sweep, run_inline
from secret_detection import services, tasks
from secret_detection.models import Finding, FindingTokenStatus
from secret_detection.services import jobs
from secret_detection.services.verifiers import POOL_MIN_FINDINGS
from tests.secret_detection.conftest import report_with
from tests.support.cluster import ClusterProcess, running_cluster, wait_until
from tests.support.sdrs import SdrsServer, default_decision

pytestmark = pytest.mark.django_db(transaction=True)  # the pool's threads see committed rows only

COUNT = POOL_MIN_FINDINGS + 5
TICK = "secret_detection.refresh_token_statuses"


def _aws(count: int) -> list[tuple[str, str]]:
    return [("AWS", f"AKIAQ3EXAMPLE{n:07d}") for n in range(count)]


def _no_token_in_runs(values: list[str]) -> None:
    for run in JobRun.objects.all():
        text = repr(run.kwargs)
        assert not any(value in text for value in values), run.kwargs


def test_an_import_of_many_sdrs_findings_is_sent_by_one_tick(
    project, developer, import_findings, sdrs_server, sdrs_settings, no_broker
):
    sdrs_settings(url=sdrs_server.url)
    findings = import_findings(project, _aws(COUNT), user=developer)

    counts = services.token_statuses_route(project_id=project.pk)
    assert counts == {"partner_pooled": COUNT}
    (tick,) = JobRun.objects.filter(name=TICK)
    outcome, run = run_inline(TICK, **tick.kwargs)

    assert outcome == "succeeded", run.error
    assert run.result["accepted"] == COUNT
    # What the per-finding job leaves: pending for the request SDRS accepted, awaiting its callback.
    for status in FindingTokenStatus.objects.filter(pk__in=[f.pk for f in findings]):
        assert (status.status, status.verifier, status.attempts) == ("pending", "partner", 1)
        assert status.accepted_at is not None
        assert status.last_request_id
    assert sorted(r.finding_id for r in sdrs_server.accepted()) == sorted(f.pk for f in findings)
    assert not JobRun.objects.filter(name=jobs.VERIFY).exists()
    _no_token_in_runs([value for _, value in _aws(COUNT)])


def test_a_fresh_finding_failing_in_the_pool_is_retried_after_4_then_16_and_64_s(
    project, developer, import_findings, sdrs_server, sdrs_settings, no_broker, settings
):
    settings.SDRS_RETRY_DELAYS = (4, 16, 64)
    sdrs_settings(url=sdrs_server.url)
    sdrs_server.failures.next_statuses = [500]  # the first request only
    import_findings(project, _aws(COUNT), user=developer)
    services.token_statuses_route(project_id=project.pk)
    (tick,) = JobRun.objects.filter(name=TICK)

    before = timezone.now()
    outcome, run = run_inline(TICK, **tick.kwargs)

    assert (outcome, run.result["accepted"], run.result["retry_enqueued"]) == ("succeeded", COUNT - 1, 1)
    (retry,) = JobRun.objects.filter(name=jobs.VERIFY_RETRY)
    assert set(retry.kwargs) == {"finding_id", "user_id"}  # ids only
    assert 4 <= (retry.due_at - before).total_seconds() < 6
    failed = FindingTokenStatus.objects.get(pk=retry.kwargs["finding_id"])
    assert (failed.status, failed.last_error_code, failed.attempts) == ("pending", "sdrs_server_error", 1)
    assert tasks.verify_partner_token_retry.retry.resolved() == (16, 64)

    # The retry job's attempts are the finding's 2nd, 3rd and 4th, 16 and 64 s apart.
    sdrs_server.failures.next_statuses = [500, 500, 500]
    for attempt, next_delay in ((1, 16), (2, 64)):
        at = timezone.now()
        outcome, run = run_inline(jobs.VERIFY_RETRY, attempt=attempt, **retry.kwargs)
        assert outcome == "retried"
        assert next_delay <= (run.due_at - at).total_seconds() < next_delay + 2
        assert FindingTokenStatus.objects.get(pk=failed.pk).attempts == attempt + 1
    outcome, run = run_inline(jobs.VERIFY_RETRY, attempt=3, **retry.kwargs)
    assert outcome == "failed"
    final = FindingTokenStatus.objects.get(pk=failed.pk)
    assert (final.status, final.last_error_code, final.attempts) == ("unknown", "sdrs_server_error", 4)


def test_an_import_of_many_direct_findings_keeps_one_job_each(project, developer, import_findings, no_broker):
    # A direct verification's CPU is spent in the caller's process: one tick's threads share
    # one GIL (2.2x the ideal), where runs spread over the workers (1.4x). A paced partner
    # (Postman, 4/s) gets runs due at its slots.
    from tests.support.partners import POSTMAN_ACTIVE

    import_findings(project, [*_aws(COUNT), *[("Postman API token", POSTMAN_ACTIVE)] * COUNT], user=developer)

    counts = services.token_statuses_route(project_id=project.pk)

    assert counts == {"direct_enqueued": 2 * COUNT}
    assert JobRun.objects.filter(name=jobs.DIRECT_VERIFY).count() == 2 * COUNT
    assert not JobRun.objects.filter(name=TICK).exists()


def _left() -> object:
    statuses = FindingTokenStatus.objects.exclude(status="active")
    fields = ("pk", "status", "next_refresh_at", "sending_until", "accepted_at", "last_error_code")
    runs = JobRun.objects.values_list("name", "status", "attempt", "error_code", "result")
    return list(statuses.values_list(*fields)), list(runs)


# --- a worker killed mid-batch on a real cluster --------------------------------------------


@pytest.fixture
def sdrs(rsa_keys) -> Iterator[SdrsServer]:
    from tests.secret_detection.conftest import CALLBACK_SECRET

    server = SdrsServer(public_key=rsa_keys[1], callback_secret=CALLBACK_SECRET).start()
    yield server
    server.close()


@pytest.mark.cluster
def test_a_worker_killed_mid_batch_leaves_no_finding_stuck(
    live_server, settings, sdrs_settings, sdrs, project, developer, sample_report
):
    """The tick's worker is SIGKILLed when SDRS receives its 5th request. Every finding
    still ends verified, without waiting for the claims' lease (the tick's budget, 600 s
    here, far beyond the stall limit): the tick's run is retried at once, and its next
    attempt takes over the rows the dead one claimed (``claimed_by_run``). Those sent are
    called back; one claimed for a request that may not have been written waits for the
    pending sweep, then for a later tick. The schedule's tick (every minute in production)
    is stood for by a tick enqueued every few seconds; the toolkit's recovery sweep and the
    pending sweep run in this process, with their timers scaled down."""
    Schedule.objects.all().delete()
    settings.EXTERNAL_URL = live_server.url
    settings.JOBS_LOST_AFTER = 1
    settings.SDRS_PENDING_TIMEOUT = 3
    settings.TOKEN_REFRESH_RETRY_AFTER = 1
    sdrs_settings(url=sdrs.url, sdrs_timeout=1.0)
    sdrs.failures.latency = 0.1
    env = {
        "EXTERNAL_URL": live_server.url,
        # The lease of a tick's claim: only a take-over can recover its rows within the stall.
        "TOKEN_REFRESH_TICK_TIMEOUT": "600",
        "TOKEN_REFRESH_RETRY_AFTER": "1",
        "SDRS_PENDING_TIMEOUT": "3",
    }
    holder: dict = {}
    killed = threading.Event()
    received = iter(range(10**6))
    lock = threading.Lock()

    def decide(token_type: str, token_value: str) -> str | None:
        with lock:
            number = next(received)
        if number == 4:
            cluster: ClusterProcess = holder["cluster"]
            for worker in cluster.workers():
                os.kill(worker.pid, signal.SIGKILL)
            killed.set()
        return default_decision(token_type, token_value)

    sdrs.decide = decide
    ticked = [time.monotonic()]
    with running_cluster(broker=django_settings.JOBS_BROKER, workers=2, env=env) as cluster:
        holder["cluster"] = cluster
        services.report_import(project=project, user=developer, report=report_with(_aws(COUNT), base=sample_report))

        def done() -> bool:
            recovery_sweep()
            services.pending_expire()
            if time.monotonic() - ticked[0] > 5:
                ticked[0] = time.monotonic()
                tasks.refresh_token_statuses.enqueue()  # as the schedule would
            return FindingTokenStatus.objects.filter(status="active").count() == COUNT

        def progress():
            return (
                sorted(map(str, FindingTokenStatus.objects.values_list("status", "next_refresh_at", "sending_until"))),
                len(sdrs.verifies),
                len(sdrs.callbacks),
            )

        try:
            wait_until(done, progress=progress, stall=45)
        except AssertionError:
            raise AssertionError(f"findings left behind: {_left()}\n{cluster.output()}") from None
        assert killed.is_set()  # a worker was killed mid-batch
        # The killed tick's run was tried again (not failed): its next attempt took over.
        assert JobRun.objects.filter(name=TICK, history__0__error_code="worker_lost", attempt__gte=2).exists()

    assert Finding.objects.count() == COUNT
    assert not FindingTokenStatus.objects.exclude(status="active").exists()
    # (Without records of no finding: a request the kill cut off, which SDRS could not
    # read, or the circuit breaker's probe.)
    sent = {record.finding_id for record in sdrs.verifies if record.finding_id is not None}
    assert sent == set(Finding.objects.values_list("pk", flat=True))


def test_a_dead_ticks_claims_are_given_back_at_once_and_its_requests_in_flight_are_not_resent(
    project, developer, import_findings, no_broker
):
    """What a tick's next attempt (or its failure hook) does with what the dead attempt
    claimed: rows not started are due now; a row in flight at SDRS stays pending for its
    request (SDRS may hold it: never resent); a row whose outcome was recorded, and another
    tick's rows, are left alone."""
    from secret_detection.services import statuses

    findings = import_findings(project, _aws(5), user=developer)
    ids = [f.pk for f in findings]
    past = timezone.now() - timezone.timedelta(minutes=1)
    FindingTokenStatus.objects.filter(pk__in=ids).update(routed_at=past, verifier="partner", next_refresh_at=past)
    dead, other = 10_001, 10_002
    assert sorted(statuses.status_claim_due(batch_size=4, lease=600, run_id=dead)) == sorted(ids[:4])
    assert statuses.status_claim_due(batch_size=5, lease=600, run_id=other) == [ids[4]]
    not_started, in_flight, done = ids[0], ids[1], ids[2]
    claim = statuses.status_claim(finding_id=in_flight, request_id="r1", attempt=1, lease=30)
    assert claim.outcome == "claimed"
    statuses.status_back_off(finding_ids=[done], code="no_verifier", seconds=3600)
    before = {s.pk: s for s in FindingTokenStatus.objects.filter(pk__in=ids)}
    assert before[in_flight].claimed_by_run == dead  # a claim to pending keeps the tick's hold
    assert before[done].claimed_by_run is None  # a recorded outcome ends it

    counts = services.token_statuses_claims_release(run_id=dead)

    assert counts == {"released": 2, "in_flight": 1}
    after = {s.pk: s for s in FindingTokenStatus.objects.filter(pk__in=ids)}
    now = timezone.now()
    for pk in (not_started, ids[3]):
        assert after[pk].next_refresh_at <= now
        assert after[pk].claimed_by_run is None
    assert (after[in_flight].status, after[in_flight].last_request_id) == ("pending", "r1")
    assert after[done].next_refresh_at == before[done].next_refresh_at
    assert after[ids[4]].claimed_by_run == other
    assert after[ids[4]].next_refresh_at > now
    assert not FindingTokenStatus.objects.filter(claimed_by_run=dead).exists()
    assert not JobRun.objects.filter(name__in=[jobs.VERIFY, jobs.VERIFY_RETRY, TICK]).exists()  # nothing resends it
    assert services.token_statuses_claims_release(run_id=dead) == {"released": 0, "in_flight": 0}


def test_a_tick_that_fails_for_good_gives_its_claims_back(project, developer, import_findings, no_broker):
    from secret_detection.services import statuses

    findings = import_findings(project, _aws(3), user=developer)
    ids = [f.pk for f in findings]
    past = timezone.now() - timezone.timedelta(minutes=1)
    FindingTokenStatus.objects.filter(pk__in=ids).update(routed_at=past, verifier="partner", next_refresh_at=past)
    run = JobRun.objects.create(name=TICK, kwargs={}, attempt=3, max_attempts=3)
    statuses.status_claim_due(batch_size=10, lease=600, run_id=run.pk)

    tasks.refresh_token_statuses.failed(run, "worker_lost", "worker stopped during attempt 3")

    assert not FindingTokenStatus.objects.filter(pk__in=ids, next_refresh_at__gt=timezone.now()).exists()
    assert tasks.refresh_token_statuses.retry.max_attempts == 3
