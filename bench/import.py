"""Import throughput and worker memory, measured through the real job on a real cluster.

    DATABASE_URL=postgres://… .venv/bin/python bench/import.py [--sizes 100000] [--repeat 1]

For each size it seeds the project ``bench/export.py`` seeds (that many issues, three notes
and two labels per issue), has a one-worker django-q2 cluster export it (as an
administrator, so the archive carries members' emails and the import maps them back), then
imports the archive through ``exports.import`` ``--repeat`` times, polling the worker's RSS
every 20 ms. The baseline, in the same run and on the same rows, is PostgreSQL alone:
``COPY … FROM STDIN`` of the archive's issues, notes and label links (prepared in memory
beforehand, so only the database's work is timed) into a scratch project, rolled back.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import export as export_bench  # noqa: E402  (after the path is set)

MB = 1024 * 1024


def _admin():
    from project.models import User

    user, _ = User.objects.get_or_create(
        username="bench-import-admin",
        defaults={"email": "bench-admin@example.com", "is_superuser": True, "is_staff": True},
    )
    return user


def _archive(cluster, project, admin) -> bytes:
    from exports.models import ProjectExportArchive
    from project.models import ProjectMember

    ProjectMember.objects.get_or_create(project=project, user=admin, defaults={"access_level": 50})
    export_bench._export_once(cluster, project, admin)
    with ProjectExportArchive.objects.get(project=project, user=admin).file.open("rb") as handle:
        return handle.read()


def _import_once(cluster, data: bytes, admin, n: int) -> dict:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from exports.importer import services
    from exports.models import ProjectImportJob

    job = services.import_request(
        user=admin, file=SimpleUploadedFile("bench.tar.gz", data), path=f"imported-{n}", namespace="bench-imports"
    )
    peak = cluster.rss()
    polls = 0
    while True:
        peak = max(peak, cluster.rss())  # every 20 ms
        polls += 1
        if polls % 5 == 0:
            status = ProjectImportJob.objects.filter(pk=job.pk).values_list("status", flat=True).get()
            if status in ("finished", "failed"):
                break
        time.sleep(0.02)
    job.refresh_from_db()
    if job.status != "finished":
        raise RuntimeError(f"import failed: {job.error_code}: {job.error}")
    job.project.delete()  # the next repeat (and the next run) starts from the same database
    return {"seconds": (job.finished_at - job.started_at).total_seconds(), "counts": job.counts, "peak_rss": peak}


def _copy_rows(data: bytes) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """The archive's issues, notes and label links as rows, issue ids local (0…n-1)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("tree/project/issues.ndjson")
        assert member is not None
        lines = member.read().splitlines()
    issues, notes, links = [], [], []
    for index, line in enumerate(lines):
        item = json.loads(line)
        issues.append((index, item["iid"], item["title"], item["description"], item["state"], item["created_at"]))
        notes += [(index, note["note"], note["system"], note["created_at"]) for note in item["notes"]]
        links += [(index, link["label"]["title"]) for link in item["label_links"]]
    return issues, notes, links


def _baseline_once(rows: tuple[list[tuple], list[tuple], list[tuple]], admin) -> dict:
    """PostgreSQL alone: COPY FROM the same rows into a scratch project, timed, rolled back."""
    from django.db import connection, transaction

    from project.models import Label, Project

    issues, notes, links = rows
    with transaction.atomic():
        project = Project.objects.create(namespace_path="bench-baseline", path="copy", name="copy")
        labels = {
            title: Label.objects.create(project=project, title=title).pk for title in {title for _, title in links}
        }
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval('issues_id_seq')")
            first = cursor.fetchone()[0]
            cursor.execute("SELECT setval('issues_id_seq', %s)", [first + len(issues)])
            started = time.perf_counter()
            raw = cursor.cursor
            with raw.copy(
                "COPY issues (id, project_id, iid, title, description, state, author_id, created_at, updated_at) "
                "FROM STDIN"
            ) as copy:
                for index, iid, title, description, state, created in issues:
                    copy.write_row(
                        (first + index, project.pk, iid, title, description, state, admin.pk, created, created)
                    )
            with raw.copy("COPY notes (issue_id, author_id, note, system, created_at, updated_at) FROM STDIN") as copy:
                for index, text, system, created in notes:
                    copy.write_row((first + index, admin.pk, text, system, created, created))
            with raw.copy("COPY issue_labels (issue_id, label_id) FROM STDIN") as copy:
                for index, title in links:
                    copy.write_row((first + index, labels[title]))
            seconds = time.perf_counter() - started
        transaction.set_rollback(True)
    return {"seconds": seconds, "rows": len(issues) + len(notes) + len(links)}


def _measure(size: int, repeat: int, media: Path) -> dict:
    import platform

    import psutil

    project, _ = export_bench._seed(size)
    admin = _admin()
    with export_bench._cluster(media) as cluster:
        data = _archive(cluster, project, admin)
        rows = _copy_rows(data)
        baselines = [_baseline_once(rows, admin) for _ in range(repeat)]
        idle_rss = cluster.rss()
        runs = [_import_once(cluster, data, admin, n) for n in range(repeat)]
        high_water = cluster.high_water_mark()
    counts = runs[0]["counts"]
    imported_rows = counts["issues"] + counts["notes"] + counts["label_links"]
    seconds = statistics.median(r["seconds"] for r in runs)
    baseline_seconds = statistics.median(b["seconds"] for b in baselines)
    return {
        "issues": size,
        "archive_mb": round(len(data) / MB, 2),
        "import": {
            "seconds_median": round(seconds, 3),
            "seconds_all": [round(r["seconds"], 3) for r in runs],
            "rows": imported_rows,
            "rows_per_second": round(imported_rows / seconds),
            "counts": counts,
            "worker_idle_rss_mb": round(idle_rss / MB, 1),
            "worker_peak_rss_mb": round(max(r["peak_rss"] for r in runs) / MB, 1),
            "worker_vmhwm_mb": round(high_water / MB, 1),
        },
        "baseline_copy_from": {
            "seconds_median": round(baseline_seconds, 3),
            "seconds_all": [round(b["seconds"], 3) for b in baselines],
            "rows": baselines[0]["rows"],
            "rows_per_second": round(baselines[0]["rows"] / baseline_seconds),
        },
        "throughput_vs_baseline": round(baseline_seconds / seconds, 3),
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000", help="issue counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="imports per size (median time, max RSS)")
    args = parser.parse_args()
    media = Path(tempfile.mkdtemp(prefix="bench-import-media-"))
    try:
        export_bench._setup(media)
        results = [_measure(int(size), args.repeat, media) for size in args.sizes.split(",")]
    finally:
        shutil.rmtree(media, ignore_errors=True)
    print(json.dumps({"runs": results}, indent=2))


if __name__ == "__main__":
    main()
