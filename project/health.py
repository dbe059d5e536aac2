"""Readiness: the database answers and at least one job cluster is pulling work."""

from __future__ import annotations

import time
from typing import Any

from django.db import DatabaseError, connection


def _check(fn) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = fn() or {}
        status = detail.pop("status", "ok")
    except DatabaseError as exc:
        status, detail = "failed", {"message": exc.__class__.__name__}
    return {"status": status, "duration_ms": round((time.perf_counter() - started) * 1000, 1), **detail}


def _db() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {}


def _cluster() -> dict[str, Any]:
    from django.conf import settings

    from project.jobs import clusters_alive

    serving = clusters_alive(broker=settings.JOBS_BROKER)
    if serving:
        return {"clusters": serving}
    if clusters_alive():
        # The work this server sends goes through its broker, which no live cluster reads.
        message = f"no live job cluster uses this server's broker ({settings.JOBS_BROKER})"
    else:
        message = "no job cluster has pulled work recently"
    return {"status": "failed", "message": message, "clusters": 0}


def readiness_report() -> dict[str, Any]:
    db = _check(_db)
    cluster = _check(_cluster) if db["status"] == "ok" else {"status": "failed", "message": "database down"}
    status = "ok" if db["status"] == cluster["status"] == "ok" else "failed"
    return {"status": status, "db_check": [db], "cluster_check": [cluster]}
