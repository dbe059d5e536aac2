"""Shared set-up for benchmarks: the production settings, scratch databases dropped afterwards, the smoke run."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent


def production_settings(*, database: bool = True) -> None:
    """Run on the production settings (``project.settings``), with a throwaway
    ``SECRET_KEY`` and ``ENCRYPTION_KEY`` unless the environment sets them. Before
    ``django.setup()``, and before any child process is started (they inherit them).
    ``database=False``: the script opens none, but the settings insist on a
    ``DATABASE_URL``, so one that is never used stands in unless it is set."""
    import secrets

    from cryptography.fernet import Fernet

    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(40))
    os.environ.setdefault("ENCRYPTION_KEY", Fernet.generate_key().decode())
    if not database:
        os.environ.setdefault("DATABASE_URL", "postgres://unused@127.0.0.1:1/unused")


def bare_threads(make_call: Callable[[], Callable[[int], object]], *, count: int, concurrency: int) -> dict:
    """The floor a benchmark compares its jobs with: ``count`` calls shared by
    ``concurrency`` bare threads (no job, queue or database). Each thread calls
    ``make_call()`` once for its own callable (a client of its own where clients are not
    thread-safe), then takes call numbers until there are none left."""
    numbers = iter(range(count))
    lock = threading.Lock()

    def worker() -> None:
        call = make_call()
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            call(n)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_s": round(time.perf_counter() - started, 2), "requests": count}


def _server_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from project import embedded_db

    return embedded_db.ensure_running(ROOT / "var" / "pgdata")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def scratch_server_database(prefix: str) -> Iterator[str]:
    """Create an empty ``<prefix>_<pid>`` on the configured server and drop it on exit
    (also after a failure). Yields its URL; Django is not involved."""
    import psycopg

    server = _server_url()
    name = f"{prefix}_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """Create ``<prefix>_<pid>`` on the configured server, migrate it, point Django at it,
    and drop it on exit (also after a failure)."""
    with scratch_server_database(prefix) as url:
        os.environ["DATABASE_URL"] = url
        try:
            import django

            django.setup()
            from django.core.management import call_command

            call_command("migrate", run_syncdb=True, verbosity=0)
            call_command("createcachetable", verbosity=0)  # the database cache, when it is the cache
            yield url
        finally:
            from django.db import connections

            connections.close_all()


# --- CI smoke run -----------------------------------------------------------------------------

#: Each benchmark script with tiny sizes: the CI runs them all (``make bench-smoke``) so
#: that none stops working unnoticed. A new script must add its own line here.
SMOKE_ARGS: dict[str, list[str]] = {
    "catalog.py": [
        "--projects", "2000", "--rounds", "1", "--drain-rounds", "1", "--events-per-resource", "2",
        "--single-rows", "10", "--rate", "50", "--seconds", "1", "--skip-cron-baseline",
    ],
    "console.py": ["--sizes", "1000", "--repeat", "2", "--warmup", "1"],
    "export.py": ["--sizes", "200", "--repeat", "1"],
    "faults.py": ["--cap", "90", "--no-baseline", "--fast"],
    "import.py": ["--sizes", "200", "--repeat", "1"],
    "log_line.py": ["--lines", "200", "--rounds", "1"],
    "health_under_load.py": [
        "--pollers", "4", "--users", "2", "--seconds", "1", "--idle-seconds", "0.5", "--workers", "1",
    ],
    "redis_parser.py": ["--messages", "50", "--rounds", "1"],
    "report_import.py": ["--findings", "200"],
    "sdrs_outage.py": ["--scenario", "sdrs_outage", "--findings", "4", "--workers", "2", "--outage", "2"],
    "retry_timing.py": ["--jobs", "4", "--tick-baseline"],
    "status_load.py": [
        "--users", "6", "--clients", "3", "--seconds", "0.5", "--warmup", "0.2", "--rounds", "1",
        "--pollers", "5", "--jobs", "20",
    ],
    "throughput.py": ["--jobs", "20", "--warmup", "0", "--workers", "1"],
    "worker_run.py": ["--runs", "40", "--rounds", "1", "--warmup", "20"],
    "verification.py": ["--findings", "10", "--latency", "0.01", "--concurrency", "2"],
    # A second run of a script (its own code path) is named script#what.
    "verification.py#direct": ["--mode", "direct", "--findings", "5", "--latency", "0.01", "--concurrency", "2"],
}  # fmt: skip
#: Scripts that work in the database DATABASE_URL names: they get a scratch one.
SMOKE_SCRATCH = {"export.py", "import.py"}


def _smoke_one(script: str, log_dir: Path) -> dict:
    import json
    import subprocess
    import sys
    import time

    started = time.monotonic()
    stdout, stderr = log_dir / f"{script}.json", log_dir / f"{script}.log"
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if script in SMOKE_SCRATCH:
            env["DATABASE_URL"] = stack.enter_context(scratch_server_database(f"bench_smoke_{Path(script).stem}"))
        with stdout.open("w") as out, stderr.open("w") as err:
            code = subprocess.call(
                [sys.executable, str(ROOT / "bench" / script.partition("#")[0]), *SMOKE_ARGS[script]],
                cwd=ROOT, env=env, stdout=out, stderr=err, timeout=300,
            )  # fmt: skip
    result = {"script": script, "seconds": round(time.monotonic() - started, 1), "exit": code}
    if code == 0:
        try:
            json.loads(stdout.read_text())
        except ValueError as exc:
            result["error"] = f"stdout is not one JSON document: {exc}"
    else:
        result["error"] = "\n".join(stderr.read_text(errors="replace").splitlines()[-25:])
    return result


def smoke(parallel: int = 3) -> int:
    """Run every ``bench/*.py`` with its tiny sizes, ``parallel`` at a time; each must exit 0
    and print one JSON document on stdout. Returns the number of failures."""
    import tempfile
    import time
    from concurrent.futures import ThreadPoolExecutor

    scripts = sorted(path.name for path in (ROOT / "bench").glob("*.py") if not path.name.startswith("_"))
    missing = [script for script in scripts if script not in SMOKE_ARGS]
    if missing:
        print(f"no smoke-run sizes for {', '.join(missing)}: add them to SMOKE_ARGS in bench/_support.py")
        return len(missing)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-smoke-") as logs, ThreadPoolExecutor(parallel) as pool:
        # The longest first, so that the others fill in beside them.
        runs = scripts + [name for name in SMOKE_ARGS if "#" in name]
        order = sorted(runs, key=lambda script: script not in {"verification.py", "retry_timing.py"})
        results = list(pool.map(lambda script: _smoke_one(script, Path(logs)), order))
    failures = [result for result in results if "error" in result]
    for result in sorted(results, key=lambda result: result["script"]):
        status = "ok" if "error" not in result else f"FAILED (exit {result['exit']})"
        print(f"bench/{result['script']:<18} {result['seconds']:>6.1f} s  {status}")
        if "error" in result:
            print("    " + result["error"].replace("\n", "\n    "))
    print(f"bench smoke run: {len(results) - len(failures)} of {len(results)} ok in {time.monotonic() - started:.1f} s")
    return len(failures)


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Benchmark support: `smoke` runs every benchmark with tiny sizes.")
    parser.add_argument("command", choices=["smoke"])
    parser.add_argument("--parallel", type=int, default=3, help="scripts run at the same time")
    args = parser.parse_args()
    return 1 if smoke(parallel=args.parallel) else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
