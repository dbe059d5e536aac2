"""Health probes under load: the probe port against the probes served by ordinary workers.

The production web server (``gunicorn project.wsgi`` with ``project/gunicorn_conf.py``:
``--workers`` processes of ``WEB_THREADS`` threads, access log on) on a scratch database
seeded with ``--users`` maintainers, each with a token and a project of their own.

``--pollers`` clients (in a process of their own, asyncio, one keep-alive connection
each) poll the export status ``GET /api/v4/projects/:id/export`` once a second each, as
GitLab clients do (open loop: an answer later than a second is followed by the next request
at once). Meanwhile four probers, one thread each, send a probe every ``--interval``
seconds on a fresh connection (as kubelet does) and time the answer:

* ``web_liveness`` / ``web_readiness``: ``/-/liveness`` and ``/-/readiness`` on the web
  port, served by an ordinary worker thread behind the queued requests: the baseline;
* ``probe_liveness`` / ``probe_readiness``: the same paths on ``WEB_PROBE_PORT``, answered
  by a thread of the gunicorn master from the readiness its workers publish every second
  (``project/probes.py``).

First ``--idle-seconds`` without the pollers, then ``--seconds`` with them. p50 / p99 / max
per probe, probes that failed or timed out (``--probe-timeout``), and the pollers' own
figures. The goal: the probe port's p99 under 100 ms with 200 pollers.

Usage:
    DATABASE_URL=postgres://… .venv/bin/python bench/health_under_load.py \\
        [--pollers 200] [--users 50] [--seconds 20] [--workers 2] [--threads 4]
    CI smoke run: --pollers 4 --users 2 --seconds 1 --idle-seconds 0.5 --workers 1

Uses a scratch database ``bench_health_<pid>`` on the server of DATABASE_URL, dropped
afterwards (no job cluster runs: readiness answers 503, which is timed like a 200). Prints
one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._support import scratch_database  # noqa: E402

PROBES = ("web_liveness", "web_readiness", "probe_liveness", "probe_readiness")


def _environment(args: argparse.Namespace) -> None:
    if not os.environ.get("DATABASE_URL"):
        sys.exit("set DATABASE_URL (the benchmark creates and drops a scratch database on that server)")
    from bench._support import production_settings

    production_settings()
    os.environ["Q_NAME"] = f"bench-health-{os.getpid()}"
    os.environ["LOG_LEVEL"] = args.log_level
    os.environ["EXTERNAL_URL"] = "http://127.0.0.1"
    os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")


def _seed(users: int) -> list[tuple[int, str]]:
    """A maintainer with a token and a project of their own per user; (project id, token)."""
    from project import services
    from project.models import AccessLevel, ProjectMember, User

    owner = User.objects.create_user(username="bench-owner", password=None)
    seeded = []
    for index in range(users):
        user = User.objects.create_user(username=f"bench-{index}", password=None)
        project = services.project_create(
            namespace_path="bench", path=f"p{index}", name=f"Project {index}", owner=owner, description="bench"
        )
        ProjectMember.objects.create(project=project, user=user, access_level=AccessLevel.MAINTAINER)
        _, token = services.access_token_create(user=user, name="bench", scopes=["api"])
        seeded.append((project.pk, token))
    return seeded


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebServer:
    """gunicorn with the production config, its probe port on a free port."""

    def __init__(self, *, workers: int, threads: int) -> None:
        self.port, self.probe_port = _free_port(), _free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="bench-health-web-", suffix=".log", delete=False)  # noqa: SIM115
        env = {
            **os.environ,
            "WEB_THREADS": str(threads),
            "WEB_PROBE_PORT": str(self.probe_port),
            "PYTHONUNBUFFERED": "1",
        }
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "project.wsgi:application",
                "--config",
                str(ROOT / "project" / "gunicorn_conf.py"),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-5000:]

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{self.output()}")
            if _get(self.port, "/-/liveness", 2)[0] == 200 and _get(self.probe_port, "/-/liveness", 2)[0] == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready within {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


def _get(port: int, path: str, timeout: float) -> tuple[int, float]:
    """One probe on a fresh connection: (status or 0 on failure, seconds)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        connection.close()
    return status, time.perf_counter() - started


# --- the pollers (a process of their own, so that they do not slow the probers) -------------


async def _poll(port: int, targets: list[tuple[int, str]], pollers: int, stop_at: float, results) -> None:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0

    async def client(project_id: int, token: str) -> None:
        nonlocal errors
        raw = (
            f"GET /api/v4/projects/{project_id}/export HTTP/1.1\r\nHost: 127.0.0.1\r\nPRIVATE-TOKEN: {token}\r\n\r\n"
        ).encode()
        await asyncio.sleep(random.random())
        reader = writer = None
        next_at = loop.time()
        while loop.time() < stop_at:
            sent = loop.time()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                status = int((await reader.readline()).split(b" ", 2)[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
            except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
                status = 0
                if writer is not None:
                    writer.close()
                reader = writer = None
            if status == 200:
                latencies.append(loop.time() - sent)
            else:
                errors += 1
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(*targets[index % len(targets)]) for index in range(pollers)))
    results.put({"latencies": latencies, "errors": errors})


def _pollers_main(port: int, targets: list[tuple[int, str]], pollers: int, seconds: float, results) -> None:
    stop_at = time.monotonic() + seconds
    asyncio.run(_poll(port, targets, pollers, stop_at, results))


# --- the probers --------------------------------------------------------------------------


class Probers:
    """One thread per probe, each probing every ``interval`` seconds on a fresh connection."""

    def __init__(self, server: WebServer, *, interval: float, timeout: float) -> None:
        self.interval, self.timeout = interval, timeout
        self.targets = {
            "web_liveness": (server.port, "/-/liveness"),
            "web_readiness": (server.port, "/-/readiness"),
            "probe_liveness": (server.probe_port, "/-/liveness"),
            "probe_readiness": (server.probe_port, "/-/readiness"),
        }
        self.samples: dict[str, list[tuple[int, float]]] = {name: [] for name in self.targets}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name,), daemon=True) for name in self.targets]

    def _run(self, name: str) -> None:
        port, path = self.targets[name]
        time.sleep(random.random() * self.interval)
        while not self._stop.is_set():
            self.samples[name].append(_get(port, path, self.timeout))
            self._stop.wait(self.interval)

    def measure(self, seconds: float) -> dict:
        self.samples = {name: [] for name in self.targets}
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, args=(name,), daemon=True) for name in self.targets]
        for thread in self._threads:
            thread.start()
        time.sleep(seconds)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        return {name: _summary(samples) for name, samples in self.samples.items()}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def _ms(seconds: float) -> float | None:
    return None if seconds != seconds else round(1000 * seconds, 1)  # NaN: no sample


def _summary(samples: list[tuple[int, float]]) -> dict:
    answered = [seconds for status, seconds in samples if status]
    return {
        "probes": len(samples),
        "failed": len(samples) - len(answered),
        "statuses": sorted({status for status, _ in samples}),
        "p50_ms": _ms(_percentile(answered, 0.50)),
        "p99_ms": _ms(_percentile(answered, 0.99)),
        "max_ms": _ms(max(answered, default=float("nan"))),
        "over_1s": sum(1 for seconds in answered if seconds > 1.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pollers", type=int, default=200, help="clients polling the export status once a second")
    parser.add_argument("--users", type=int, default=50, help="maintainers (token + project); pollers share them")
    parser.add_argument("--seconds", type=float, default=20, help="measured time under load")
    parser.add_argument("--idle-seconds", type=float, default=3, help="measured time before the load")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (make run's default)")
    parser.add_argument("--threads", type=int, default=4, help="WEB_THREADS (the default)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between two probes of one kind")
    parser.add_argument("--probe-timeout", type=float, default=30, help="a probe unanswered this long failed")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    _environment(args)

    with scratch_database("bench_health"):
        targets = _seed(args.users)
        server = WebServer(workers=args.workers, threads=args.threads)
        try:
            server.wait_ready()
            probers = Probers(server, interval=args.interval, timeout=args.probe_timeout)
            idle = probers.measure(args.idle_seconds)

            results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
            warmup = 1.5  # every poller has sent its first request
            pollers = multiprocessing.get_context("spawn").Process(
                target=_pollers_main, args=(server.port, targets, args.pollers, warmup + args.seconds + 1, results)
            )
            pollers.start()
            time.sleep(warmup)
            loaded = probers.measure(args.seconds)
            polled = results.get(timeout=args.seconds + 120)
            pollers.join(timeout=30)
        finally:
            server.stop()

    latencies = polled["latencies"]
    status_figures = {
        "requests": len(latencies),
        "errors": polled["errors"],
        "requests_per_s": round(len(latencies) / (warmup + args.seconds + 1), 1),
        "p50_ms": _ms(_percentile(latencies, 0.50)),
        "p99_ms": _ms(_percentile(latencies, 0.99)),
    }
    probe_p99 = max(loaded[name]["p99_ms"] or float("inf") for name in ("probe_liveness", "probe_readiness"))
    print(
        json.dumps(
            {
                "benchmark": "health_under_load",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
                "settings": {
                    "pollers": args.pollers,
                    "users": args.users,
                    "workers": args.workers,
                    "threads": args.threads,
                    "interval_s": args.interval,
                    "seconds": args.seconds,
                },
                "idle": idle,
                "under_load": loaded,
                "export_status_pollers": status_figures,
                "baseline": {name: loaded[name] for name in ("web_liveness", "web_readiness")},
                "goal": {
                    "probe_port_p99_under_ms": 100,
                    "met": bool(probe_p99 < 100)
                    and not (loaded["probe_liveness"]["failed"] or loaded["probe_readiness"]["failed"]),
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
