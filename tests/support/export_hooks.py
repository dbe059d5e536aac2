"""A pause point inside the export job, for end-to-end tests on a real cluster.

Loaded by the clusters the export tests start (``JOBS_EXTRA_MODULES``), never by the site.
While ``$EXPORT_TEST_PAUSE_DIR/<project id>`` exists, the first attempt of an export of
that project stops right after writing its issues to the scratch directory (a half-written
archive on disk) and writes ``<project id>.paused`` so the test knows. The test then
releases it (deletes the file) or kills the worker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from exports import archive
from project.jobs import current_run

PAUSE_DIR = os.environ.get("EXPORT_TEST_PAUSE_DIR")
_original = archive.copy_relation


def _pausing_copy_relation(relation, params, path, progress):
    rows = _original(relation, params, path, progress)
    run = current_run()
    if PAUSE_DIR and relation.name == "issues" and (run is None or run.attempt == 1):
        flag = Path(PAUSE_DIR) / str(params["project_id"])
        if flag.exists():
            # Written then renamed, so the test never reads a half-written pid.
            Path(f"{flag}.tmp").write_text(str(os.getpid()))
            Path(f"{flag}.tmp").rename(f"{flag}.paused")
            while flag.exists():
                progress.report()  # a cancelled job stops here, as it would mid-COPY
                time.sleep(0.05)
    return rows


if PAUSE_DIR:
    archive.copy_relation = _pausing_copy_relation
