"""Export throughput and worker memory, measured through the real job on a real cluster.

    DATABASE_URL=postgres://… .venv/bin/python bench/export.py [--sizes 10000,100000] [--repeat 3]

For each size it seeds (once, with set-based SQL) a project with that many issues, three
notes per issue and two labels per issue, starts a fresh one-worker django-q2 cluster,
exports the project through ``exports.run`` ``--repeat`` times, and polls the worker's RSS
with psutil every 20 ms. The baseline, in the same run and on the same data, is the time
PostgreSQL takes to produce the same NDJSON with ``COPY (SELECT json_build_object(…)) TO
STDOUT``, gzipped at the same level in this process (and, for reference, the same with the
exporter's own ``row_to_json`` statement). Prints one JSON document.

Goals (issue 3): throughput at least half of the baseline; worker peak RSS under 200 MB;
peak RSS within 20 % between the smallest and the largest size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOTES_PER_ISSUE = 3


def _environment(media: Path) -> dict[str, str]:
    from cryptography.fernet import Fernet

    return {
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(40),
        "ENCRYPTION_KEY": os.environ.get("ENCRYPTION_KEY") or Fernet.generate_key().decode(),
        "MEDIA_ROOT": str(media),
        "Q_NAME": f"bench-export-{os.getpid()}",
        "Q_WORKERS": "1",
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "text",
        "JOBS_BROKER": os.environ.get("JOBS_BROKER", "orm"),
    }


def _setup(media: Path) -> None:
    if not os.environ.get("DATABASE_URL"):
        sys.exit("set DATABASE_URL (the benchmark seeds up to 100k issues there)")
    for key, value in _environment(media).items():
        os.environ.setdefault(key, value)
    os.environ["MEDIA_ROOT"] = str(media)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _seed(size: int):
    """A project with ``size`` issues (idempotent: an existing complete one is reused)."""
    from django.db import connection, transaction

    from project.models import Issue, Label, User
    from project.services import project_create

    user, _ = User.objects.get_or_create(username="bench-export", defaults={"email": "bench@example.com"})
    from project.models import Project

    project = Project.objects.filter(namespace_path="bench", path=f"export-{size}").first()
    if project is not None and Issue.objects.filter(project=project).count() == size:
        return project, user
    started = time.perf_counter()
    with transaction.atomic():
        if project is not None:
            project.delete()
        project = project_create(
            namespace_path="bench", path=f"export-{size}", name=f"Export bench {size}", owner=user,
            description="Benchmark project: issues, notes and labels to export.",
        )  # fmt: skip
        Label.objects.bulk_create(
            [Label(project=project, title=t, color="#428bca") for t in ("bug", "feature", "docs", "security", "ux")]
        )
        with connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO issues (project_id, iid, title, description, state, author_id, created_at, updated_at)
                SELECT %(p)s, g, 'Issue ' || g || ': ' || (ARRAY['crash','typo','slow page','login'])[1 + g %% 4],
                       'Steps to reproduce issue ' || g || E'.\\n\\n' || repeat('Lorem ipsum dolor sit amet. ', 4),
                       CASE WHEN g %% 5 = 0 THEN 'closed' ELSE 'opened' END, %(u)s,
                       now() - make_interval(mins => %(n)s - g), now() - make_interval(mins => %(n)s - g)
                FROM generate_series(1, %(n)s) g
                """,
                {"p": project.pk, "u": user.pk, "n": size},
            )
            cursor.execute(
                """
                INSERT INTO notes (issue_id, author_id, note, system, created_at, updated_at)
                SELECT i.id, %(u)s, 'Comment ' || n || ' on #' || i.iid || ': looks reproducible.', false,
                       i.created_at + make_interval(hours => n), i.created_at + make_interval(hours => n)
                FROM issues i CROSS JOIN generate_series(1, %(k)s) n
                WHERE i.project_id = %(p)s ORDER BY i.id, n
                """,
                {"p": project.pk, "u": user.pk, "k": NOTES_PER_ISSUE},
            )
            cursor.execute(
                """
                INSERT INTO issue_labels (issue_id, label_id)
                SELECT i.id, l.id FROM issues i
                JOIN LATERAL (
                    SELECT id FROM labels WHERE project_id = %(p)s ORDER BY id OFFSET i.iid %% 4 LIMIT 2
                ) l ON true
                WHERE i.project_id = %(p)s
                """,
                {"p": project.pk},
            )
    # Fresh rows carry no hint bits and no visibility map: the first reader would pay for
    # setting them. Vacuum so every run (and the baseline) reads the same settled data.
    with connection.cursor() as cursor:
        for table in ("issues", "notes", "issue_labels", "labels", "project_members"):
            cursor.execute(f"VACUUM (ANALYZE) {table}")
    print(f"seeded {size} issues in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return project, user


def _rss(self) -> int:
    import psutil

    peak = 0
    for worker in self.worker_processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            peak = max(peak, worker.memory_info().rss)
    return peak


def _high_water_mark(self) -> int:
    """The kernel's own peak RSS of the worker since it started (VmHWM), in bytes."""
    peak = 0
    for worker in self.worker_processes:
        for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


def _cluster(media: Path):
    """``manage.py qcluster`` with one worker on the production settings."""
    from tests.support.cluster import ClusterProcess

    class Cluster(ClusterProcess):
        def __enter__(self) -> Cluster:
            self.start(timeout=60)
            while not self.workers():
                time.sleep(0.1)
            # One worker (Q_WORKERS=1) that is never recycled during the run: poll it
            # directly rather than walking the process tree, which costs CPU the export needs.
            self.worker_processes = self.workers()
            return self

        def __exit__(self, *exc: object) -> None:
            self.stop()

        rss = _rss
        high_water_mark = _high_water_mark

    return Cluster(broker=os.environ["JOBS_BROKER"], workers=1, env=_environment(media))


def _export_once(cluster, project, user) -> dict:
    from exports import services
    from exports.models import ProjectExportArchive, ProjectExportJob

    job = services.export_request(project=project, user=user)
    peak = cluster.rss()
    polls = 0
    while True:
        peak = max(peak, cluster.rss())  # every 20 ms
        polls += 1
        if polls % 5 == 0:  # the job's state every 100 ms
            status = ProjectExportJob.objects.filter(pk=job.pk).values_list("status", flat=True).get()
            if status in ("finished", "failed"):
                break
        time.sleep(0.02)
    job.refresh_from_db()
    if job.status != "finished":
        raise RuntimeError(f"export failed: {job.error_code}: {job.error}")
    archive = ProjectExportArchive.objects.get(project=project, user=user)
    return {
        "seconds": (job.finished_at - job.started_at).total_seconds(),
        "json_lines": job.rows_written,
        "archive_bytes": archive.size,
        "peak_rss": peak,
    }


BASELINE_ISSUES = """
    SELECT json_build_object(
        'id', i.id, 'title', i.title, 'author_id', i.author_id, 'project_id', i.project_id,
        'created_at', i.created_at, 'updated_at', i.updated_at, 'description', i.description,
        'iid', i.iid, 'state', i.state, 'closed_at', i.closed_at,
        'notes', COALESCE((
            SELECT json_agg(json_build_object(
                'id', n.id, 'note', n.note, 'noteable_type', 'Issue', 'author_id', n.author_id,
                'created_at', n.created_at, 'updated_at', n.updated_at, 'project_id', i.project_id,
                'system', n.system,
                'author', json_build_object('name', COALESCE(NULLIF(btrim(u.first_name || ' ' || u.last_name), ''),
                                                             u.username))
            ) ORDER BY n.id)
            FROM notes n LEFT JOIN users u ON u.id = n.author_id WHERE n.issue_id = i.id), '[]'::json),
        'label_links', COALESCE((
            SELECT json_agg(json_build_object(
                'id', il.id, 'target_type', 'Issue',
                'label', json_build_object('title', l.title, 'color', l.color, 'description', l.description,
                                           'type', 'ProjectLabel')
            ) ORDER BY il.id)
            FROM issue_labels il JOIN labels l ON l.id = il.label_id WHERE il.issue_id = i.id), '[]'::json)
    )
    FROM issues i WHERE i.project_id = %(project_id)s ORDER BY i.id
"""


def _baseline_once(project, select: str = BASELINE_ISSUES) -> dict:
    """PostgreSQL alone: COPY the issues NDJSON (the bulk of the archive) and gzip it."""
    from django.db import connection

    from exports.archive import COMPRESS_LEVEL

    started = time.perf_counter()
    compressor = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 31)
    size = lines = 0
    statement = f"COPY ({select}) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
    with connection.cursor() as cursor, cursor.cursor.copy(statement, {"project_id": project.pk}) as copy:
        for block in copy:
            size += len(compressor.compress(block))
            lines += 1
    size += len(compressor.flush())
    return {"seconds": time.perf_counter() - started, "json_lines": lines, "gzip_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="issue counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="exports per size (median time, max RSS)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    media = Path(tempfile.mkdtemp(prefix="bench-export-media-"))
    try:
        _setup(media)
        results = [_measure(size, args.repeat, media) for size in sizes]
    finally:
        shutil.rmtree(media, ignore_errors=True)
    print(json.dumps(_report(results), indent=2))


def _measure(size: int, repeat: int, media: Path) -> dict:
    import psutil

    project, user = _seed(size)
    records = size * (1 + NOTES_PER_ISSUE)
    from exports.relations import ISSUES

    baselines = [_baseline_once(project) for _ in range(repeat)]
    # The exporter's own statement (row_to_json), for the cost of everything around it.
    same_query = [_baseline_once(project, ISSUES.sql) for _ in range(repeat)]
    with _cluster(media) as cluster:
        idle_rss = cluster.rss()
        runs = [_export_once(cluster, project, user) for _ in range(repeat)]
        high_water = cluster.high_water_mark()
    seconds = statistics.median(r["seconds"] for r in runs)
    baseline_seconds = statistics.median(b["seconds"] for b in baselines)
    mb = 1024 * 1024
    return {
        "issues": size,
        "notes": size * NOTES_PER_ISSUE,
        "export": {
            "seconds_median": round(seconds, 3),
            "seconds_all": [round(r["seconds"], 3) for r in runs],
            "rows_per_second": round(records / seconds),
            "json_lines": runs[0]["json_lines"],
            "archive_mb": round(runs[0]["archive_bytes"] / mb, 2),
            "worker_idle_rss_mb": round(idle_rss / mb, 1),
            "worker_peak_rss_mb": round(max(r["peak_rss"] for r in runs) / mb, 1),
            "worker_vmhwm_mb": round(high_water / mb, 1),
        },
        "baseline_copy_gzip": {
            "seconds_median": round(baseline_seconds, 3),
            "seconds_all": [round(b["seconds"], 3) for b in baselines],
            "rows_per_second": round(records / baseline_seconds),
            "gzip_mb": round(baselines[0]["gzip_bytes"] / mb, 2),
        },
        "copy_gzip_of_the_exporters_own_query": {
            "seconds_median": round(statistics.median(b["seconds"] for b in same_query), 3),
            "rows_per_second": round(records / statistics.median(b["seconds"] for b in same_query)),
        },
        "throughput_vs_baseline": round(baseline_seconds / seconds, 3),
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
    }


def _report(results: list[dict]) -> dict:
    smallest, largest = results[0], results[-1]
    small_rss = smallest["export"]["worker_peak_rss_mb"]
    large_rss = largest["export"]["worker_peak_rss_mb"]
    growth = (large_rss - small_rss) / small_rss
    return {
        "runs": results,
        "goals": {
            "throughput_at_least_half_of_baseline": all(r["throughput_vs_baseline"] >= 0.5 for r in results),
            "peak_rss_under_200_mb": all(r["export"]["worker_peak_rss_mb"] < 200 for r in results),
            "peak_rss_growth_smallest_to_largest": round(growth, 3),
            "peak_rss_within_20_percent": abs(growth) <= 0.2,
        },
    }


if __name__ == "__main__":
    main()
