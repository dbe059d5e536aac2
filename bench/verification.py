"""Partner token verification throughput against the local SDRS server.

Verifies N findings (default 1,000) against ``tests.support.sdrs`` answering with 100 ms of
latency, at a concurrency of 10, then again with 10 % of the findings failing once with a
500. Two sources of concurrency are measured:

* ``jobs``: what an import does, as production runs it: a django-q2 cluster of 10 worker
  processes with the declared schedules and the default settings. The routing job hands
  fresh findings by the score to the refresher's pool (one tick, TOKEN_REFRESH_CONCURRENCY
  threads); a failed request is retried by a job of its own after SDRS_RETRY_DELAYS[0].
  (Until the pool took them, one PartnerTokenVerification job per finding, one request per
  worker at a time.)
* ``refresher``: one refresher tick, whose pool of TOKEN_REFRESH_CONCURRENCY (10) threads
  sends the due statuses. A failed row is retried by a later tick (TOKEN_REFRESH_RETRY_AFTER
  is set to 1 s here so that the run stays short).

The baseline is the same 1,000 signed requests sent by 10 bare threads with the same
client and no database work: the floor the product is measured against. "Verified" means
SDRS called back and the callback was applied (the status is active or inactive). SDRS
runs in its own process (``python -m tests.support.sdrs``, a fresh one per run) and the
callbacks are served by gunicorn, as in production.

    DATABASE_URL=postgres://... [REDIS_URL=redis://...] .venv/bin/python bench/verification.py

``--mode direct`` measures direct partner verification instead (``bench/_direct_partners.py``):
N AWS and N Postman findings against the partner stand-ins, Postman held to 4/s per project.

It creates and drops its own database (``<name>_bench``). Prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


#: TOKEN_REFRESH_RETRY_AFTER's default (project/settings.py), which the import path runs with.
_DEFAULT_RETRY_AFTER = 600


def _environment() -> None:
    if not os.environ.get("DATABASE_URL"):
        sys.exit("set DATABASE_URL (the benchmark creates and drops <name>_bench on that server)")
    from cryptography.fernet import Fernet

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("SECRET_KEY", "bench-" + uuid.uuid4().hex)
    os.environ.setdefault("ENCRYPTION_KEY", Fernet.generate_key().decode())
    os.environ.setdefault("LOG_LEVEL", "warning")
    os.environ.setdefault("ALLOW_LOCAL_REQUESTS", "1")
    os.environ["Q_NAME"] = f"bench{os.getpid()}"  # a queue of its own
    dbname = os.environ["DATABASE_URL"].rsplit("/", 1)[1].split("?")[0]
    os.environ["TEST_DATABASE_NAME"] = f"{dbname}_bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.perf_counter()
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Web:
    """gunicorn serving the callback endpoint (separate processes, as in production)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "project.wsgi:application",
                "--config",
                str(ROOT / "project" / "gunicorn_conf.py"),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "2",
                "--access-logfile",
                "/dev/null",
            ],
            cwd=ROOT,
            env={**os.environ, **env, "EXTERNAL_URL": self.url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        import requests

        def up() -> bool:
            try:
                return requests.get(f"{self.url}/-/liveness", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        _wait(up, 30, "gunicorn")

    def stop(self) -> None:
        _stop(self.process)


class Sdrs:
    """The local SDRS server in a process of its own, so that it does not share this
    process's interpreter lock with the threads being measured."""

    def __init__(self, *, keys_dir: Path, latency: float, fail_once_percent: float = 0.0, drop: bool = False) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "tests.support.sdrs",
            "--port",
            str(self.port),
            "--public-key",
            str(keys_dir / "public.pem"),
            "--callback-secret-file",
            str(keys_dir / "callback_secret"),
            "--callback-delay",
            "0",
            "--callback-workers",
            "8",
            "--latency",
            str(latency),
            "--fail-once-percent",
            str(fail_once_percent),
            "--log-level",
            "warning",
        ]
        if drop:
            command.append("--drop-callbacks")
        self.process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)

        def up() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        _wait(up, 30, "the SDRS server")

    def stop(self) -> None:
        _stop(self.process)


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (only its own for this
    process, whose children are the web server and SDRS, counted apart)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        family = [root] if pid == os.getpid() else [root, *root.children(recursive=True)]
        for process in family:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def _baseline(sdrs, count: int, concurrency: int, private_key: str) -> dict:
    """Bare threads, same client, same server: no jobs, no database."""
    from bench._support import bare_threads
    from secret_detection.clients import SdrsClient, SdrsConfig, VerifyRequest

    client = SdrsClient(SdrsConfig(url=sdrs.url, signing_key=private_key, timeout=10))

    def verify(n: int) -> None:
        client.verify(
            VerifyRequest(
                token_type="AWS",
                token_value=f"AKIA-baseline-{n}",
                finding_id=n + 1,
                project_id=1,
                user_id=1,
                callback_url="http://127.0.0.1:9/unused",
                request_id=uuid.uuid4().hex,
            )
        )

    return bare_threads(lambda: verify, count=count, concurrency=concurrency)


def _report(count: int, tag: str) -> dict:
    from tests.secret_detection.conftest import report_with

    base = json.loads((ROOT / "tests/secret_detection/data/gl-secret-detection-report.json").read_text())
    values = [f"AKIA-{tag}-revoked-{n}" if n % 5 == 0 else f"AKIA-{tag}-{n}" for n in range(count)]
    return report_with([("AWS", value) for value in values], base=base, prefix=tag)


def _final_counts(project) -> dict:
    from secret_detection.models import FindingTokenStatus

    return dict(Counter(FindingTokenStatus.objects.filter(project=project).values_list("status", flat=True)))


def _verified(project, count: int):
    from secret_detection.models import FindingTokenStatus

    def check() -> bool:
        done = FindingTokenStatus.objects.filter(project=project, status__in=["active", "inactive"]).count()
        return done == count

    return check


def _accepted(project, count: int):
    from django.db.models import Q

    from secret_detection.models import FindingTokenStatus

    def check() -> bool:
        taken = Q(accepted_at__isnull=False) | Q(status__in=["active", "inactive"])
        return FindingTokenStatus.objects.filter(taken, project=project).count() == count

    return check


def _run_jobs(project, user, count: int, tag: str, timeout: float) -> dict:
    from django.db.models import Sum
    from django.utils import timezone

    from project.jobs.models import JobRun
    from secret_detection import services

    since = timezone.now()
    started = time.perf_counter()
    services.report_import(project=project, user=user, report=_report(count, tag))
    accepted = _wait(_accepted(project, count), timeout, "SDRS to accept every request")
    verified = _wait(_verified(project, count), timeout, "every callback")
    runs = JobRun.objects.filter(name="secret_detection.verify_partner_token", created_at__gte=since)
    retries = JobRun.objects.filter(name="secret_detection.verify_partner_token_retry", created_at__gte=since)
    ticks = JobRun.objects.filter(name="secret_detection.refresh_token_statuses", created_at__gte=since)
    sent_in_pool = sum((tick.result or {}).get("accepted", 0) for tick in ticks)
    sent_in_pool += sum((tick.result or {}).get("retry_enqueued", 0) for tick in ticks)
    routes = JobRun.objects.filter(name="secret_detection.update_token_status", created_at__gte=since)
    wall_at = time.time() - (time.perf_counter() - started)  # the import's start, as a timestamp

    def _after_start(moment) -> float | None:
        return round(moment.timestamp() - wall_at, 2) if moment else None

    first_tick = ticks.order_by("started_at").first()
    return {
        # Where the time goes: routing (one job, batches of 100), then the tick's pool.
        "routing_done_s": _after_start(max((r.finished_at for r in routes if r.finished_at), default=None)),
        "first_tick_started_s": _after_start(first_tick.started_at if first_tick else None),
        "first_tick_duration_s": (first_tick.result or {}).get("duration_s") if first_tick else None,
        "wall_s": round(verified - started, 2),
        "all_accepted_s": round(accepted - started, 2),
        "requests": (runs.aggregate(n=Sum("attempt"))["n"] or 0)
        + (retries.aggregate(n=Sum("attempt"))["n"] or 0)
        + sent_in_pool,
        "failed_once": runs.filter(attempt__gte=2).count() + retries.count(),
        "verification_jobs": runs.count(),
        "retry_jobs": retries.count(),
        "refresher_ticks": ticks.count(),
        "final_statuses": _final_counts(project),
    }


def _run_refresher(project, user, count: int, tag: str, timeout: float) -> dict:
    from django.utils import timezone

    from secret_detection import services
    from secret_detection.models import FindingTokenStatus

    services.report_import(project=project, user=user, report=_report(count, tag))
    # Routed as due partner rows verified once before (re-verification: a failure waits for
    # TOKEN_REFRESH_RETRY_AFTER; a fresh finding's would be retried by a job of its own).
    FindingTokenStatus.objects.filter(project=project).update(
        verifier="partner", routed_at=timezone.now(), next_refresh_at=timezone.now(), attempts=1
    )
    started = time.perf_counter()
    ticks = []
    deadline = time.monotonic() + timeout
    while FindingTokenStatus.objects.filter(project=project, status="unknown").exists():
        if time.monotonic() > deadline:
            raise SystemExit("the refresher did not get through every finding")
        due = FindingTokenStatus.objects.filter(project=project, next_refresh_at__lte=timezone.now()).exists()
        if due:
            ticks.append(services.token_statuses_refresh())
        else:
            time.sleep(0.05)  # failed rows wait TOKEN_REFRESH_RETRY_AFTER before a tick takes them again
    accepted = time.perf_counter()
    verified = _wait(_verified(project, count), timeout, "every callback")
    return {
        "wall_s": round(verified - started, 2),
        "all_accepted_s": round(accepted - started, 2),
        "ticks": len(ticks),
        "first_tick_s": ticks[0]["duration_s"] if ticks else None,
        "requests": sum(tick.get("accepted", 0) + tick.get("failed", 0) for tick in ticks),
        "failed_once": sum(tick.get("failed", 0) for tick in ticks),
        "final_statuses": _final_counts(project),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--findings", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--fail-once-percent", type=float, default=10.0)
    parser.add_argument("--mode", choices=("jobs", "refresher", "both", "direct"), default="both")
    parser.add_argument(
        "--until",
        choices=("all", "aws"),
        default="all",
        help="direct mode: stop when every AWS finding is settled (skips Postman's 250 s)",
    )
    args = parser.parse_args()
    _environment()
    os.environ["TOKEN_REFRESH_CONCURRENCY"] = str(args.concurrency)
    os.environ["TOKEN_REFRESH_RETRY_AFTER"] = "1"

    import django

    django.setup()
    from django.conf import settings
    from django.test.utils import setup_databases, teardown_databases

    # Django's test-database set-up prints a cache-table notice on stdout, which carries the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        old_config = setup_databases(verbosity=0, interactive=False)
    from project import services as core
    from project.models import ApplicationSetting, User
    from tests.support.cluster import ClusterProcess
    from tests.support.sdrs import keypair

    private_key, public_key = keypair()
    secret = uuid.uuid4().hex
    keys_dir = Path(tempfile.mkdtemp(prefix="bench-sdrs-"))
    (keys_dir / "public.pem").write_text(public_key)
    (keys_dir / "callback_secret").write_text(secret)
    child_env = {"DATABASE_URL": _database_url(), "TEST_DATABASE_NAME": ""}
    if args.mode == "direct":
        # No web server: nothing calls back. Its workers' start (3 s of CPU) overlapped
        # the measured import when it was started here.
        return _direct(args, old_config, child_env)
    web = Web(child_env)
    settings.EXTERNAL_URL = web.url
    row = ApplicationSetting.current()
    row.sdrs_enabled, row.sdrs_timeout = True, 10.0
    row.sdrs_jwt_signing_key, row.sdrs_callback_secret = private_key, secret
    row.save()
    user = User.objects.create_user(username="bench")
    ideal = args.findings * args.latency / args.concurrency
    result: dict = {
        "findings": args.findings,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "ideal_s": round(ideal, 2),
        "goal_s": round(ideal * 1.4, 2),
        "broker": settings.JOBS_BROKER,
        "cpus": os.cpu_count(),
        # Other work on the machine skews the figures; recorded so they can be judged.
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    cluster = None
    try:
        sdrs = Sdrs(keys_dir=keys_dir, latency=args.latency, drop=True)
        try:
            result["baseline_bare_threads"] = _baseline(sdrs, args.findings, args.concurrency, private_key)
        finally:
            sdrs.stop()
        modes = ("jobs", "refresher") if args.mode == "both" else (args.mode,)
        for mode in modes:
            runs = {}
            if mode == "jobs":
                cluster = ClusterProcess(
                    broker=settings.JOBS_BROKER,
                    workers=args.concurrency,
                    env={
                        **child_env,
                        "DJANGO_SETTINGS_MODULE": "project.settings",
                        "EXTERNAL_URL": web.url,
                        # The import path runs with the default settings (this process
                        # shortens it for the refresher mode's later ticks).
                        "TOKEN_REFRESH_RETRY_AFTER": str(_DEFAULT_RETRY_AFTER),
                    },
                ).start(timeout=60)
            for label, percent in (("clean", 0.0), ("fail_once", args.fail_once_percent)):
                sdrs = Sdrs(keys_dir=keys_dir, latency=args.latency, fail_once_percent=percent)
                ApplicationSetting.objects.filter(pk=row.pk).update(sdrs_url=sdrs.url)
                workers = cluster.process.pid if cluster else os.getpid()
                pids = {"product": workers, "web": web.process.pid, "sdrs": sdrs.process.pid}
                cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
                try:
                    project = core.project_create(
                        namespace_path="bench", path=f"{mode}-{label}", name=f"{mode} {label}", owner=user
                    )
                    run = _run_jobs if mode == "jobs" else _run_refresher
                    outcome = run(project, user, args.findings, f"{mode}-{label}", timeout=600)
                    # CPU used, so that the figures can be judged on a busy machine too.
                    outcome["cpu_s"] = {
                        name: round(_cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()
                    }
                finally:
                    sdrs.stop()
                outcome["vs_ideal"] = round(outcome["wall_s"] / ideal, 2)
                outcome["lost"] = args.findings - sum(
                    outcome["final_statuses"].get(s, 0) for s in ("active", "inactive")
                )
                if percent:
                    outcome["fail_once_percent"] = percent
                runs[label] = outcome
            runs["concurrency_from"] = (
                f"the import path on {args.concurrency} django-q2 worker processes: routing hands fresh findings"
                " to one refresher tick's pool of TOKEN_REFRESH_CONCURRENCY threads"
                if mode == "jobs"
                else f"one refresher tick's pool of {args.concurrency} threads (TOKEN_REFRESH_CONCURRENCY)"
            )
            result[mode] = runs
            if cluster is not None:
                cluster.stop()
                cluster = None
    finally:
        if cluster is not None:
            cluster.stop()
        web.stop()
        shutil.rmtree(keys_dir, ignore_errors=True)
        from django.db import connections

        connections.close_all()
        teardown_databases(old_config, verbosity=0)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    return 0


def _direct(args: argparse.Namespace, old_config: Any, child_env: dict[str, str]) -> int:
    """Direct partner verification (bench/_direct_partners.py); no SDRS involved."""
    from django.db import connections
    from django.test.utils import teardown_databases

    from bench._direct_partners import run_direct

    try:
        result = run_direct(
            count=args.findings,
            latency=args.latency,
            concurrency=args.concurrency,
            child_env=child_env,
            timeout=1800,
            until=args.until,
        )
    finally:
        connections.close_all()
        teardown_databases(old_config, verbosity=0)
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=2))
    return 0


def _database_url() -> str:
    from tests.support.cluster import database_url

    return database_url()


if __name__ == "__main__":
    sys.exit(main())
