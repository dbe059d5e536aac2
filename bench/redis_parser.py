"""CPU of the Redis broker's commands with hiredis against redis-py's own parser.

redis-py parses replies in Python unless ``hiredis`` is installed, which it then uses
without being asked (requirements.txt pins it). This script times the commands a message
costs the toolkit's ``RedisBroker`` (``project/jobs/djangoq.py``): the producer's single
enqueue (one ``RPUSH``), the pusher's pull (the ``_PULL`` script, a batch of up to
``pull_size()`` messages leased at once) and the monitor's acknowledgement (``ZREM``), on
one connection whose parser is either redis-py's pure-Python one (the baseline: what
runs without hiredis) or hiredis, in alternating rounds of the same run. CPU is this
process's (``time.process_time``) per message; the Redis server's is not counted.

Usage:
    REDIS_URL=redis://… .venv/bin/python bench/redis_parser.py [--messages 5000] [--rounds 3]
    CI smoke run: --messages 50 --rounds 1

Works on scratch keys ``bench-redis-parser-<pid>*``, deleted afterwards. Without
``REDIS_URL`` it prints ``{"skipped": …}``. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _setup() -> None:
    from bench._support import production_settings

    production_settings(database=False)
    os.environ["JOBS_BROKER"] = "redis"
    os.environ["Q_NAME"] = f"bench-redis-parser-{os.getpid()}"
    import django

    django.setup()


def _round(broker, messages: int) -> dict[str, float]:
    """Per message, in µs of CPU: enqueue each, then pull and acknowledge them all."""
    from django.utils import timezone

    from project.jobs import djangoq

    payload = "jobs.run:1:1:probe.noop"
    now = timezone.now()
    started = time.process_time()
    for _ in range(messages):
        broker.enqueue_many_at([(payload, now)])
    enqueued = time.process_time()
    pulled: list[bytes] = []
    while len(pulled) < messages:
        batch = broker.pull()
        if not batch:
            raise SystemExit(f"only {len(pulled)} of {messages} messages came back")
        pulled.extend(batch)
    fetched = time.process_time()
    for message in pulled:
        broker.acknowledge(message)
    done = time.process_time()
    assert broker.depth() == {"ready": 0, "held": 0}, broker.depth()
    return {
        "enqueue_us": 1e6 * (enqueued - started) / messages,
        "pull_us": 1e6 * (fetched - enqueued) / messages,
        "acknowledge_us": 1e6 * (done - fetched) / messages,
        "total_us": 1e6 * (done - started) / messages,
        "pull_size": djangoq.pull_size(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each parser, alternating")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL")
    if not url:
        print(json.dumps({"benchmark": "redis_parser", "skipped": "REDIS_URL is not set"}))
        return 0
    _setup()
    import redis
    from redis._parsers import _RESP3Parser
    from redis.utils import HIREDIS_AVAILABLE

    from project.jobs import djangoq

    parsers = {"python": _RESP3Parser}
    if HIREDIS_AVAILABLE:
        from redis._parsers import _HiredisParser

        parsers["hiredis"] = _HiredisParser
    broker = djangoq.RedisBroker(list_key=f"bench-redis-parser-{os.getpid()}")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in parsers}
    try:
        for _ in range(args.rounds):
            for name, parser_class in parsers.items():
                pool = redis.ConnectionPool.from_url(url, parser_class=parser_class, protocol=3)
                broker.connection = redis.Redis(connection_pool=pool)
                _round(broker, min(args.messages, 100))  # warm-up: the connection and the script
                runs[name].append(_round(broker, args.messages))
                pool.disconnect()
    finally:
        broker.connection = redis.Redis.from_url(url)
        broker.connection.delete(broker.list_key, broker.delayed_key, broker.pulled_key)
    medians = {
        name: {key: round(statistics.median(run[key] for run in results), 1) for key in results[0]}
        for name, results in runs.items()
    }
    result: dict[str, object] = {
        "benchmark": "redis_parser",
        "messages": args.messages,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "hiredis": HIREDIS_AVAILABLE,
        "cpu_us_per_message_median": medians,
        "baseline": "python",
    }
    if "hiredis" in medians:
        result["hiredis_over_python"] = {
            key: round(medians["hiredis"][key] / medians["python"][key], 2)
            for key in ("enqueue_us", "pull_us", "acknowledge_us", "total_us")
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
