"""``/metrics``: what every process recorded, plus gauges read from the database at scrape.

Counters and histograms from web and worker processes come through prometheus_client's
multiprocess files. Queue depths and ages are read from PostgreSQL when scraped, so they
are right however many processes there are; apps add theirs with ``register_db_collector``.

A scrape reads every process's files, and processes come and go (gunicorn workers, job
workers recycled every ``Q_RECYCLE`` tasks, commands): left alone, the files of dead
processes pile up and every scrape reads them all. With ``METRICS_COMPACT`` on (the
default), a scrape first folds the counters and histograms of dead processes into one
archive file per type and drops their live gauges (``mark_process_dead``), so its cost
follows the processes alive, not all that ever ran. Only processes of this PID namespace
can be told alive: turn it off when processes of other containers share the directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import glob
import hmac
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from django.conf import settings
from django.http import HttpRequest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

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

    def __init__(self, source: Collector) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        yield from self.source.collect()
        yield from _DatabaseGauges().collect()


def render() -> tuple[bytes, str]:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(_Merged(REGISTRY)), CONTENT_TYPE_LATEST
    if getattr(settings, "METRICS_COMPACT", True):
        try:
            compact_dead_processes(directory)
        except OSError:
            logger.warning("metrics: folding the files of dead processes failed", exc_info=True)
    source = CollectorRegistry()
    MultiProcessCollector(source, path=directory)
    with _lock(directory, exclusive=False):
        # Read under the shared lock: a compaction never runs half-way under a reader.
        metrics = list(source.collect())
    registry = _Fixed(metrics)
    return generate_latest(_Merged(registry)), CONTENT_TYPE_LATEST


class _Fixed:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return iter(self.metrics)


# --- scrape authentication ---------------------------------------------------------------


def scrape_authorized(request: HttpRequest) -> bool:
    """True when no credential is configured, or the request presents one of them:
    ``Authorization: Bearer <METRICS_TOKEN>`` or HTTP basic ``<METRICS_BASIC_AUTH>``
    (``user:password``). Compared in constant time."""
    token = getattr(settings, "METRICS_TOKEN", None)
    basic = getattr(settings, "METRICS_BASIC_AUTH", None)
    if not token and not basic:
        return True
    scheme, _, credentials = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if token and scheme == "bearer":
        return hmac.compare_digest(credentials.encode(), token.encode())
    if basic and scheme == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded, basic.encode())
    return False


# --- folding the files of dead processes -------------------------------------------------

_TYPES = ("counter", "histogram", "summary")
_PROCESS_FILE = re.compile(r"^(counter|histogram|summary)_(\d+)\.db$")
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")
_ARCHIVE_FILE = re.compile(r"^(counter|histogram|summary)_archive-(\d+)\.db$")
_MERGING_FILE = re.compile(r"^(counter|histogram|summary)_\d+\.db\.merging-(\d+)$")
_LOCK_FILE = ".compact.lock"


@contextlib.contextmanager
def _lock(directory: str, *, exclusive: bool, wait: bool = True) -> Iterator[bool]:
    """flock on the directory's lock file: shared for readers, exclusive for compaction.
    Yields whether it was taken (always, when ``wait``)."""
    fd = os.open(os.path.join(directory, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, flags if wait else flags | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


def compact_dead_processes(directory: str) -> int:
    """Fold the counters and histograms of dead processes into ``<type>_archive-<n>.db``
    (values summed by series) and drop their live gauges. Returns how many process files
    were folded. Skips the work when another process is compacting.

    Crash-safe: dead files are first renamed ``….merging-<n+1>`` (out of the readers'
    ``*.db``), then archive ``n+1`` is written under a temporary name and renamed into place
    (the commit), then archive ``n`` and the merged files are deleted. A crash before the
    commit leaves merging files newer than the archive (folded next time); after it, an
    older archive and merging files not newer than the new one (deleted next time).
    """
    with _lock(directory, exclusive=True, wait=False) as taken:
        if not taken:
            return 0
        names = os.listdir(directory)
        for name in names:
            match = _LIVE_GAUGE_FILE.match(name)
            if match and not _alive(int(match.group(1))):
                prometheus_multiprocess.mark_process_dead(int(match.group(1)), directory)
        return sum(_compact_type(directory, kind, names) for kind in _TYPES)


def _compact_type(directory: str, kind: str, names: list[str]) -> int:
    archives = sorted(int(m.group(2)) for m in map(_ARCHIVE_FILE.match, names) if m and m.group(1) == kind)
    generation = archives[-1] if archives else 0
    for older in archives[:-1]:
        os.remove(os.path.join(directory, f"{kind}_archive-{older}.db"))
    pending = []
    for name in names:
        match = _MERGING_FILE.match(name)
        if match and match.group(1) == kind:
            if int(match.group(2)) <= generation:
                os.remove(os.path.join(directory, name))  # already in the archive
            else:
                pending.append(name)  # a compaction that crashed before its commit
    dead = [
        name
        for name in names
        if (match := _PROCESS_FILE.match(name)) and match.group(1) == kind and not _alive(int(match.group(2)))
    ]
    if not dead and not pending:
        return 0
    new = generation + 1
    merging = pending.copy()
    for name in dead:
        os.rename(os.path.join(directory, name), os.path.join(directory, f"{name}.merging-{new}"))
        merging.append(f"{name}.merging-{new}")
    sources = [f"{kind}_archive-{generation}.db"] if archives else []
    totals: dict[str, float] = defaultdict(float)
    for name in sources + merging:
        for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(os.path.join(directory, name)):
            totals[key] += value
    temporary = os.path.join(directory, f"{kind}_archive-{new}.db.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)  # left by a crash: MmapedDict would carry its values on
    archive = MmapedDict(temporary)
    try:
        for key, value in totals.items():
            archive.write_value(key, value, 0.0)
    finally:
        archive.close()
    os.replace(temporary, os.path.join(directory, f"{kind}_archive-{new}.db"))  # the commit
    for name in sources + merging:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, name))
    return len(dead)


def multiprocess_files(directory: str) -> list[str]:
    """The ``*.db`` files a scrape reads (for tests and benchmarks)."""
    return sorted(glob.glob(os.path.join(directory, "*.db")))
