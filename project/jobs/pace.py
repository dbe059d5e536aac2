"""How long each job's runs take in this cluster: written by its workers, read by its pusher.

A pull packs runs of one job into shared messages while workers are idle only when that
job's runs are known to be short (``djangoq._backlog_merged``, ``JOBS_BATCH_WAIT``): for
empty and near-empty runs django-q2's cost per message is most of the cost of a run, while
runs of a job that waits on the network are worth a worker each. The figure is a moving
average of the seconds each run of the job took in a worker, from its claim to its recorded
outcome.

A run's time leaves out what its thread spent runnable but waiting for a processor (Linux's
``/proc/thread-self/schedstat``): on a busy machine a millisecond run took 9-13 ms of wall
time in one of ten workers sharing two cores, nearly all of it in the run queue, where it
would have waited in any worker. What is left (its own processor time and what it waited
on: the database, the network) is what a run packed behind it waits for. Elsewhere the
time is wall time.

The figures live in an anonymous shared mapping created when this module is imported. The
qcluster process imports it (the toolkit's app does) before django-q2 forks the sentinel,
which forks the pusher, the workers and their replacements, so every process of a cluster
reads and writes one table; another cluster, or a web process, has its own. A process
started another way (a "spawn" start method) has a table of its own: its pusher knows no
figures and packs nothing, as before. Slots are found by a CRC of the job's name. Writes
take no lock: two workers writing a job's figure at once lose one sample, and two jobs
taking one free slot at the same instant may mix one sample; a figure is advice, and a
message whose runs overrun is handed on anyway (``JOBS_BATCH_BUDGET``).
"""

from __future__ import annotations

import mmap
import os
import threading
import time
import zlib

_SLOTS = 512
_PROBES = 8
_WEIGHT = 0.2  # of the newest sample in the average: a job that slows down is seen within a few runs

# Per slot, two doubles: the job's key (its CRC + 1, exact in a double; 0 while free) and
# its average run in seconds.
_table = memoryview(mmap.mmap(-1, _SLOTS * 2 * 8)).cast("d")
_slots: dict[str, int] = {}


def _slot(name: str, *, take: bool) -> int | None:
    slot = _slots.get(name)
    if slot is not None:
        return slot
    key = float(zlib.crc32(name.encode()) + 1)
    start = int(key) % _SLOTS
    for probe in range(_PROBES):
        slot = (start + probe) % _SLOTS
        held = _table[2 * slot]
        if held == 0.0 and take:
            _table[2 * slot] = key
            held = key
        if held == key:
            _slots[name] = slot
            return slot
        if held == 0.0:
            return None
    return None


class _Schedstat:
    """This thread's ``/proc/thread-self/schedstat``, open; closed with the thread's state
    when the thread ends (or when a forked child, whose threads are others, replaces it)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        try:
            self.fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = -1

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)

    def queued_seconds(self) -> float:
        if self.fd < 0:
            return 0.0
        try:
            return int(os.pread(self.fd, 64, 0).split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0


_threads = threading.local()


def _queued_seconds() -> float:
    """Seconds this thread has spent runnable but waiting for a processor; 0 where the
    kernel does not say."""
    state: _Schedstat | None = getattr(_threads, "schedstat", None)
    if state is None or state.pid != os.getpid():
        state = _threads.schedstat = _Schedstat()
    return state.queued_seconds()


def stopwatch() -> float:
    """A clock in seconds that stands still while this thread waits for a processor: the
    difference of two readings is a run's time (see the module)."""
    return time.perf_counter() - _queued_seconds()


def run_record(*, job: str, started: float) -> None:
    """A worker ran one run of ``job`` since ``started`` (``stopwatch()`` at its claim)."""
    run_seconds_record(job=job, seconds=max(0.0, stopwatch() - started))


def run_seconds_record(*, job: str, seconds: float) -> None:
    """A worker ran one run of ``job`` in ``seconds`` (claim to recorded outcome)."""
    slot = _slot(job, take=True)
    if slot is None:
        return
    index = 2 * slot + 1
    average = _table[index]
    _table[index] = seconds if average <= 0.0 else average + (seconds - average) * _WEIGHT


def run_seconds(job: str) -> float | None:
    """The average seconds a run of ``job`` took in this cluster, or None before any."""
    slot = _slot(job, take=False)
    if slot is None:
        return None
    average = _table[2 * slot + 1]
    return average if average > 0.0 else None


def runs_within(job: str, seconds: float) -> int:
    """How many runs of ``job`` fit in ``seconds`` of a worker's time, by its average (at
    least 1; 1 while its runs are unknown)."""
    average = run_seconds(job)
    if average is None or seconds <= 0:
        return 1
    return max(1, int(seconds / average))


def forget() -> None:
    """Drop every figure (tests: each starts with no job known)."""
    _table[:] = memoryview(bytes(len(_table) * 8)).cast("d")
    _slots.clear()
