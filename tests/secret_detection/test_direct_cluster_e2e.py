"""End to end: a real django-q2 cluster routes imported findings and verifies them
directly against the partner stand-ins over HTTP (SDRS off, the default).

Delays are scaled: retries 0.4/1.6/6.4 s for 4/16/64, a partner's 429 reschedules after
0.3 s for 10. Every wait fails only when nothing moves (runs, requests, statuses)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from django.conf import settings as django_settings
from django_q.models import Schedule

from project.jobs import JobRun
from secret_detection import services
from secret_detection.models import DirectPartner, FindingTokenStatus
from tests.secret_detection.conftest import report_with
from tests.support.cluster import ClusterProcess, running_cluster, wait_until
from tests.support.partners import (
    AWS_ACTIVE,
    AWS_INACTIVE,
    GCP_ACTIVE,
    GCP_INACTIVE,
    POSTMAN_ACTIVE,
    POSTMAN_INACTIVE,
    PartnerStandIn,
    partner_stand_ins,
    partner_urls,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

DIRECT = "secret_detection.verify_direct_token"


@pytest.fixture
def stand_ins() -> Iterator[dict[str, PartnerStandIn]]:
    with partner_stand_ins(retry_after="") as servers:
        yield servers


@pytest.fixture
def direct_cluster(stand_ins) -> Iterator[ClusterProcess]:
    Schedule.objects.all().delete()  # no refresher tick racing the test
    env = {
        **partner_urls(stand_ins),
        "PARTNER_ALLOW_HTTP": "1",
        "PARTNER_TIMEOUT": "2",
        "PARTNER_RETRY_DELAYS": "0.4,1.6,6.4",
        "PARTNER_RATE_LIMIT_DELAY": "0.3",
    }
    with running_cluster(broker=django_settings.JOBS_BROKER, workers=4, env=env) as cluster:
        yield cluster


def _statuses() -> dict[str, tuple[str, str]]:
    return {
        s.finding.raw_value: (s.status, s.last_error_code) for s in FindingTokenStatus.objects.select_related("finding")
    }


def _progress(stand_ins: dict[str, PartnerStandIn]):
    def snapshot():
        runs = sorted(map(str, JobRun.objects.values_list("id", "status", "attempt")))
        return runs, [len(s.received) for s in stand_ins.values()], sorted(_statuses().values())

    return snapshot


def _settled() -> bool:
    busy = JobRun.objects.filter(name__startswith="secret_detection.", status__in=["queued", "running"]).exists()
    return not busy and not FindingTokenStatus.objects.filter(status="pending").exists()


def _import(project, developer, sample_report, findings) -> None:
    services.report_import(project=project, user=developer, report=report_with(findings, base=sample_report))


def test_a_report_with_one_token_of_each_type_reaches_its_statuses(
    direct_cluster, stand_ins, project, developer, sample_report
):
    findings = [
        ("AWS", AWS_ACTIVE),
        ("AWS", AWS_INACTIVE),
        ("GCP API key", GCP_ACTIVE),
        ("GCP OAuth client secret", GCP_INACTIVE),
        ("Google (GCP) Service-account", "c" * 40),
        ("Postman API token", POSTMAN_ACTIVE),
        ("Postman API token", POSTMAN_INACTIVE),
        ("Postman API token", "PMAK-malformed"),
    ]
    _import(project, developer, sample_report, findings)

    wait_until(
        lambda: JobRun.objects.filter(name=DIRECT).count() >= len(findings) and _settled(),
        progress=_progress(stand_ins),
        message=lambda: f"direct verification did not settle:\n{direct_cluster.output()}",
    )

    assert _statuses() == {
        AWS_ACTIVE: ("active", ""),
        AWS_INACTIVE: ("inactive", ""),
        GCP_ACTIVE: ("active", ""),
        GCP_INACTIVE: ("inactive", ""),
        "c" * 40: ("active", ""),
        POSTMAN_ACTIVE: ("active", ""),
        POSTMAN_INACTIVE: ("inactive", ""),
        "PMAK-malformed": ("unknown", "format_mismatch"),
    }
    # One call per well-formed value, each to the partner that issued it.
    assert sorted(stand_ins["aws"].values()) == sorted([AWS_ACTIVE, AWS_INACTIVE])
    assert sorted(stand_ins["gcp"].values()) == sorted([GCP_ACTIVE, GCP_INACTIVE, "c" * 40])
    assert sorted(stand_ins["postman"].values()) == sorted([POSTMAN_ACTIVE, POSTMAN_INACTIVE])
    assert {s.partner for s in FindingTokenStatus.objects.all()} == {"aws", "gcp", "postman"}


def test_a_429_storm_reschedules_without_losing_any_token(direct_cluster, stand_ins, project, developer, sample_report):
    values = [f"PMAK-{n:02x}1a2b3c4d5e6f7a8b9c0d1e-{'ab' * 17}" for n in range(6)]
    stand_ins["postman"].then("429", "429", "429")
    _import(project, developer, sample_report, [("Postman API token", v) for v in values])

    wait_until(
        lambda: len(stand_ins["postman"].received) >= 3 and _settled(),
        progress=_progress(stand_ins),
        message=lambda: f"the storm did not settle:\n{direct_cluster.output()}",
    )

    assert Counter(status for status, _ in _statuses().values()) == {"active": 6}
    answered = Counter(r.answered for r in stand_ins["postman"].received)
    assert answered == {429: 3, 200: 6}
    assert DirectPartner.objects.get(partner="postman").rate_limit_hits >= 3
    assert JobRun.objects.filter(name=DIRECT, kwargs__reschedules__gte=1).exists()
    assert not JobRun.objects.filter(name=DIRECT, status="failed").exists()


def test_a_partner_that_is_down_retries_then_settles(direct_cluster, stand_ins, project, developer, sample_report):
    stand_ins["postman"].mode = "502"  # down for good
    stand_ins["gcp"].mode = "500"  # down, then back
    _import(project, developer, sample_report, [("Postman API token", POSTMAN_ACTIVE), ("GCP API key", GCP_ACTIVE)])

    wait_until(
        lambda: len(stand_ins["gcp"].received) >= 2,
        progress=_progress(stand_ins),
        message=lambda: f"no retry reached GCP:\n{direct_cluster.output()}",
    )
    stand_ins["gcp"].mode = "normal"
    wait_until(
        lambda: len(stand_ins["postman"].received) >= 4 and _settled(),
        progress=_progress(stand_ins),
        message=lambda: f"the retries did not settle:\n{direct_cluster.output()}",
    )

    assert _statuses() == {
        GCP_ACTIVE: ("active", ""),
        POSTMAN_ACTIVE: ("unknown", "partner_server_error"),
    }
    assert len(stand_ins["postman"].received) == 4  # the first attempt and three retries
    postman = FindingTokenStatus.objects.get(finding__token_type="Postman API token")
    (postman_run,) = JobRun.objects.filter(name=DIRECT, kwargs__finding_id=postman.pk)
    assert (postman_run.status, postman_run.attempt) == ("failed", 4)
