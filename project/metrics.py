"""``/metrics``: what every process recorded, plus gauges read from the database at scrape.

Counters and histograms from web and worker processes come through prometheus_client's
multiprocess files. Queue depths and ages are read from PostgreSQL when scraped, so they
are right however many processes there are; apps add theirs with ``register_db_collector``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

DbCollector = Callable[[], Iterable[Metric]]
_db_collectors: list[DbCollector] = []


def register_db_collector(collector: DbCollector) -> None:
    if collector not in _db_collectors:
        _db_collectors.append(collector)


class _DatabaseGauges:
    def collect(self) -> Iterable[Metric]:
        for collector in _db_collectors:
            try:
                yield from collector()
            except Exception:
                logger.warning("metrics collector %s failed", collector.__name__, exc_info=True)


class _Merged:
    """What ``generate_latest`` needs (a ``collect()``): this process's registry, or every
    process's files in multiprocess mode, then the gauges read from the database."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        yield from self.source.collect()
        yield from _DatabaseGauges().collect()


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source = CollectorRegistry()
        MultiProcessCollector(source)
    else:
        source = REGISTRY
    return generate_latest(_Merged(source)), CONTENT_TYPE_LATEST
