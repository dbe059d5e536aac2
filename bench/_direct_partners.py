"""The direct-partner run of ``bench/verification.py`` (``--mode direct``): 1,000 AWS and
1,000 Postman findings in one project, verified directly against the partner stand-ins
(``secret_detection.localpartners``, in a process of its own) answering after 100 ms, by a
cluster of ``--concurrency`` workers, with Postman held to our 4/s per project.

Goals: AWS within 1.4 times the ideal for the concurrency (findings * latency / concurrency);
Postman within 1.1 times 4/s (1,000 / 4 = 250 s); neither partner starving the other (AWS
finishes at its own pace while Postman is still being paced)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

AWS_LIVE = "AKIAQ3EXAMPLE{:07d}"
POSTMAN_LIVE = "PMAK-{:06x}1a2b3c4d5e6f7a8b9c-{}"


class StandIns:
    def __init__(self, *, latency: float) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        command = [sys.executable, "-m", "secret_detection.localpartners", "--port", str(self.port)]
        command += ["--latency", str(latency)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise SystemExit("the partner stand-ins did not start")

    def env(self) -> dict[str, str]:
        base = f"http://127.0.0.1:{self.port}"
        return {
            "PARTNER_AWS_URL": f"{base}/aws/",
            "PARTNER_GCP_URL": f"{base}/gcp/tokeninfo",
            "PARTNER_POSTMAN_URL": f"{base}/postman/me",
            "PARTNER_ALLOW_HTTP": "1",
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _baseline_aws(url: str, count: int, concurrency: int) -> dict[str, float]:
    """The floor measured in this run: the product's AWS client (SigV4 signature, keep-alive
    session, verdict) on ``concurrency`` bare threads against the same stand-in, with no job,
    queue or database. Its wall against the ideal is what the machine allows today."""
    from django.test.utils import override_settings

    from bench._support import bare_threads
    from secret_detection.partners.aws import AwsClient

    def client_call() -> Any:  # a client per thread: requests' sessions are not thread-safe
        client = AwsClient()
        return lambda n: client.verify(AWS_LIVE.format(9_000_000 + n))

    with override_settings(PARTNER_AWS_URL=url):
        return bare_threads(client_call, count=count, concurrency=concurrency)


def _report(count: int) -> dict:
    import json

    from tests.secret_detection.conftest import report_with

    base = json.loads((ROOT / "tests/secret_detection/data/gl-secret-detection-report.json").read_text())
    findings = []
    for n in range(count):  # interleaved, as a real report mixes them
        findings.append(("AWS", AWS_LIVE.format(n)))
        findings.append(("Postman API token", POSTMAN_LIVE.format(n + 1, "ab" * 17)))
    return report_with(findings, base=base, prefix="direct")


def _max_in_window(times: list, seconds: float) -> int:
    best, start = 0, 0
    for end, moment in enumerate(times):
        while (moment - times[start]).total_seconds() >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def _phases(since: Any) -> dict[str, float | None]:
    """When the import's steps happened, in seconds from ``since`` (the import's start):
    what comes before the first AWS run is a fixed cost of the measured wall."""
    from django.db.models import Min

    from project.jobs.models import JobRun
    from secret_detection.services import jobs

    def offset(moment: Any) -> float | None:
        return None if moment is None else round((moment - since).total_seconds(), 3)

    route = JobRun.objects.filter(name=jobs.ROUTE, created_at__gte=since).order_by("pk").first()
    direct = JobRun.objects.filter(name="secret_detection.verify_direct_token", created_at__gte=since)
    return {
        "routing_enqueued_s": offset(route.created_at) if route else None,
        "routing_started_s": offset(route.started_at) if route else None,
        "routing_finished_s": offset(route.finished_at) if route else None,
        "first_run_started_s": offset(direct.aggregate(first=Min("started_at"))["first"]),
    }


def _worker_time(runs: Any, finding_ids: set[int]) -> dict[str, float | None]:
    """Split an AWS run's wall into its time inside a worker (claim to outcome) and the
    gap between one run's end and the worker's next start (the queue's hand-over)."""
    rows = sorted(
        (worker, started, finished)
        for worker, started, finished, kwargs in runs.values_list("worker", "started_at", "finished_at", "kwargs")
        if started and finished and kwargs.get("finding_id") in finding_ids
    )
    inside = [(finished - started).total_seconds() for _, started, finished in rows]
    gaps = [
        gap for a, b in itertools.pairwise(rows) if a[0] == b[0] and 0 <= (gap := (b[1] - a[2]).total_seconds()) < 1
    ]
    mean = lambda values: round(1000 * sum(values) / len(values), 1) if values else None  # noqa: E731
    return {"runs": len(rows), "inside_ms": mean(inside), "gap_to_next_ms": mean(gaps)}


def _postman(done: dict[str, float], count: int, sent: list) -> dict[str, Any]:
    ideal_postman = count / 4
    return {
        "wall_s": round(done["postman"], 2),
        "rate_per_s": round(count / done["postman"], 3),
        "ideal_s": ideal_postman,
        "vs_ideal": round(done["postman"] / ideal_postman, 3),
        "goal": "<= 1.1",
        # The most answers in any one second (4 is the limit; the verdict is recorded
        # right after each answer, so this is the rate on the wire).
        "max_in_any_1s": _max_in_window(sent, 1.0),
    }


def run_direct(
    *, count: int, latency: float, concurrency: int, child_env: dict[str, str], timeout: float, until: str = "all"
) -> dict:
    from django.conf import settings
    from django.db.models import Count
    from django.utils import timezone

    from project import services as core
    from project.jobs.models import JobRun
    from project.models import ApplicationSetting, User
    from secret_detection import services
    from secret_detection.models import FindingTokenStatus
    from tests.support.cluster import ClusterProcess

    ApplicationSetting.objects.update(sdrs_enabled=False)  # the default: partner types go direct
    stand_ins = StandIns(latency=latency)
    baseline = _baseline_aws(stand_ins.env()["PARTNER_AWS_URL"], count, concurrency)
    env = {**child_env, **stand_ins.env(), "DJANGO_SETTINGS_MODULE": "project.settings", "PARTNER_POSTMAN_RATE": "4"}
    cluster = ClusterProcess(broker=settings.JOBS_BROKER, workers=concurrency, env=env).start(timeout=60)
    try:
        user = User.objects.create_user(username="bench-direct")
        project = core.project_create(namespace_path="bench", path="direct", name="direct", owner=user)
        report = _report(count)  # built before the clock starts (0.46 s): the input, not the work
        since = timezone.now()
        started = time.perf_counter()
        services.report_import(project=project, user=user, report=report)
        imported = time.perf_counter() - started
        wanted = ("aws",) if until == "aws" else ("aws", "postman")
        done: dict[str, float] = {}
        timeline: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(done) < len(wanted):
            if time.monotonic() > deadline:
                raise SystemExit(f"direct verification did not finish: {timeline[-1:]}")
            # Counted by PostgreSQL: fetching every settled row ten times a second cost this
            # process about a tenth of a core, taken from the cluster it measures.
            verdicts = dict(
                FindingTokenStatus.objects.filter(project=project, status__in=["active", "inactive"])
                .values("partner")
                .annotate(settled=Count("pk"))
                .values_list("partner", "settled")
            )
            now = time.perf_counter() - started
            if not timeline or now - timeline[-1]["t_s"] >= 10:
                timeline.append({"t_s": round(now, 1), **verdicts})
            for partner in wanted:
                if partner not in done and verdicts.get(partner, 0) >= count:
                    done[partner] = now
            time.sleep(0.1)
        runs = JobRun.objects.filter(name="secret_detection.verify_direct_token", created_at__gte=since)
        phases = {"import_s": round(imported, 3), **_phases(since)}
        per_run = _worker_time(
            runs,
            set(FindingTokenStatus.objects.filter(project=project, partner="aws").values_list("finding_id", flat=True)),
        )
        sent = sorted(
            FindingTokenStatus.objects.filter(project=project, partner="postman").values_list(
                "last_verified_at", flat=True
            )
        )
        statuses = Counter(FindingTokenStatus.objects.filter(project=project).values_list("partner", "status"))
    finally:
        cluster.stop()
        stand_ins.stop()
    ideal_aws = count * latency / concurrency
    return {
        "findings_per_partner": count,
        "latency_s": latency,
        "concurrency": concurrency,
        "aws": {
            "wall_s": round(done["aws"], 2),
            "ideal_s": round(ideal_aws, 2),
            "vs_ideal": round(done["aws"] / ideal_aws, 2),
            "goal": "<= 1.4",
            "baseline_bare_threads": {**baseline, "vs_ideal": round(baseline["wall_s"] / ideal_aws, 2)},
            "vs_baseline": round(done["aws"] / baseline["wall_s"], 2),
        },
        "postman": _postman(done, count, sent) if "postman" in done else "not waited for (--until aws)",
        "phases_s": phases,
        "aws_per_run": per_run,
        "runs": runs.count(),
        "paced_runs": runs.filter(kwargs__paced=True).count(),
        "deferrals": sum(runs.values_list("deferrals", flat=True)),
        "rescheduled_by_429": runs.filter(kwargs__reschedules__gte=1).count(),
        "final_statuses": {f"{partner}:{status}": n for (partner, status), n in statuses.items()},
        "timeline": timeline,
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
    }
