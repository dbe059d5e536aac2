"""CPU of one log line through the site's logging, and of the redaction it goes through.

Every run a worker executes writes one INFO line (``job attempt succeeded``, with the run's
context), and every line passes ``project.logs.RedactFilter``, which masks secrets in its
message, its context and its extras (``project.redact``). This script times, in this
process's CPU (``time.process_time``) per line, that line as the production settings
write it (``LOG_FORMAT=json``; the handler's stream is ``os.devnull``) inside a run's
context, against two baselines in alternating rounds of the same run:

* ``site``: the handler as configured (context and redaction filters, ``JsonFormatter``);
* ``site_without_redaction``: the same handler without its redaction filter, so the
  difference is what redaction costs a line;
* ``stdlib`` (the baseline): a plain ``logging.StreamHandler`` with ``%(message)s`` and no
  filter, what the line costs Python's logging alone.

Then ``redact()`` of each of a few typical texts (a worker's message, a run's context as
the filter joins it, an export's message, one that must be masked), against
``rules_search``: one search of every rule at once, what ``redact()`` would cost each text
without its shortcut (``_matches``' literal and run checks).

Usage:
    .venv/bin/python bench/log_line.py [--lines 20000] [--rounds 5]
    CI smoke run: --lines 200 --rounds 1

Needs no database or Redis. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The context a worker binds for a run (project.jobs.runner), as django-q2 names its tasks.
RUN_CONTEXT = {
    "job": "exports.run",
    "run_id": 123456,
    "task_id": "mango-speaker-bakerloo-fourteen",
    "attempt": 1,
    "project_id": 42,
}
TEXTS = {
    "message": "job attempt succeeded",
    "run_context": "exports.run\nmango-speaker-bakerloo-fourteen",
    "export_message": "export 991 of project 42 finished: 12,000 issues, 36,000 notes in 3.2 s",
    "to_mask": "PUT https://objects.example/bucket/a.tar.gz?X-Amz-Signature=0123abcd failed: 403",
}


def _setup() -> None:
    from bench._support import production_settings

    production_settings(database=False)
    os.environ["LOG_FORMAT"] = "json"
    os.environ["LOG_LEVEL"] = "info"
    import django

    django.setup()


def _handlers(sink) -> dict[str, logging.Handler]:
    from project.logs import RedactFilter

    site = logging.getLogger().handlers[0]
    site.setStream(sink)
    unredacted = logging.StreamHandler(sink)
    unredacted.setFormatter(site.formatter)
    for each in site.filters:
        if not isinstance(each, RedactFilter):
            unredacted.addFilter(each)
    stdlib = logging.StreamHandler(sink)
    stdlib.setFormatter(logging.Formatter("%(message)s"))
    return {"site": site, "site_without_redaction": unredacted, "stdlib": stdlib}


def _lines_us(logger: logging.Logger, handler: logging.Handler, lines: int) -> float:
    from project import context

    logger.handlers = [handler]
    with context.bind(**RUN_CONTEXT):
        started = time.process_time()
        for _ in range(lines):
            logger.info("job attempt succeeded", extra={"lateness_s": 0.012, "duration_s": 0.004})
        return 1e6 * (time.process_time() - started) / lines


def _per_call_us(func, text: str, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        func(text)
    return 1e6 * (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=20000, help="lines (and redact() calls) per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    args = parser.parse_args()
    _setup()
    from project import redact

    logger = logging.getLogger("project.jobs.runner")
    logger.propagate = False
    sink = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    handlers = _handlers(sink)
    rules_search = redact._ANY.search
    lines: dict[str, list[float]] = {name: [] for name in handlers}
    texts: dict[str, dict[str, list[float]]] = {name: {"redact": [], "rules_search": []} for name in TEXTS}
    for _ in range(args.rounds):
        for name, handler in handlers.items():
            lines[name].append(_lines_us(logger, handler, args.lines))
        for name, text in TEXTS.items():
            texts[name]["redact"].append(_per_call_us(redact.redact, text, args.lines))
            texts[name]["rules_search"].append(_per_call_us(rules_search, text, args.lines))
    line_us = {name: round(statistics.median(values), 2) for name, values in lines.items()}
    redact_us = {
        name: {kind: round(statistics.median(values), 2) for kind, values in kinds.items()}
        for name, kinds in texts.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "log_line",
                "lines": args.lines,
                "rounds": args.rounds,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "line_us": line_us,
                "line_us_all_rounds": {name: [round(v, 2) for v in values] for name, values in lines.items()},
                "redaction_share_of_line": round(
                    (line_us["site"] - line_us["site_without_redaction"]) / line_us["site"], 3
                ),
                "site_over_stdlib": round(line_us["site"] / line_us["stdlib"], 2),
                "redact_us": redact_us,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
