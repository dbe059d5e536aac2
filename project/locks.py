"""PostgreSQL advisory locks: every lock the product takes, named in one place, with one
way to turn a name into a key.

A key is the first 8 bytes of BLAKE2b of the lock's name, as a signed 64-bit integer. A
lock per object names the object: ``"secret_detection.import:42"``. Nothing else makes
keys, so two features cannot collide by choosing the same small number.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

from django.db import DatabaseError, connection

#: Every lock, by name, and what it serialises.
LOCKS = {
    "exports.concurrency_gate": "transaction: one export at a time decides whether it may start (the slot count)",
    "catalog.processor": "session: one sync-event processor runs at a time, cluster-wide",
    "catalog.resource_writes": "transaction: multi-row writers of catalog_resources never deadlock each other",
    "secret_detection.refresh": "session: one token-status refresher tick at a time",
    "secret_detection.import": "transaction, per project: one report import per project at a time",
}


def lock_key(name: str) -> int:
    """The 64-bit key of a declared lock (``name``, or ``name:<object id>``)."""
    if name.split(":", 1)[0] not in LOCKS:
        raise KeyError(f"undeclared advisory lock {name!r}: add it to project.locks.LOCKS")
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def xact_lock(name: str) -> None:
    """Wait for the lock; it is released when the current transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(name)])


@contextlib.contextmanager
def session_lock(name: str) -> Iterator[bool]:
    """Try to take the lock for the block, without waiting: yields whether it was taken.
    Released at the end of the block (or with the session, if the process dies)."""
    key = lock_key(name)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        (taken,) = cursor.fetchone()
    try:
        yield taken
    finally:
        if taken:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
            except DatabaseError:
                # A broken session has lost the lock with it; start afresh next time.
                connection.close()


def lock_held(name: str) -> bool:
    """Whether any session of this database holds the lock now (pg_locks splits a
    64-bit key into two 32-bit halves)."""
    key = lock_key(name) & 0xFFFF_FFFF_FFFF_FFFF
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT EXISTS (
                SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND objsubid = 1
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND classid = %s AND objid = %s
            )
            """,
            [key >> 32, key & 0xFFFF_FFFF],
        )
        return cursor.fetchone()[0]
