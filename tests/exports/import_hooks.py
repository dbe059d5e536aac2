"""A pause point inside the import job, for end-to-end tests on a real cluster.

Loaded by the cluster the import tests start (``JOBS_EXTRA_MODULES``), never by the site.
While ``$IMPORT_TEST_PAUSE_DIR/<project id>`` exists, the first attempt of an import into
that project stops after writing every relation, inside its transaction and before the
finish, and writes ``<project id>.paused`` (its pid) so the test can look or kill it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from exports.importer import writer
from project.jobs import current_run

PAUSE_DIR = os.environ.get("IMPORT_TEST_PAUSE_DIR")
_original = writer.ProjectWriter.unmodelled_files


def _pausing(self: writer.ProjectWriter) -> None:
    run = current_run()
    flag = Path(PAUSE_DIR or "") / str(self.project.pk)
    if PAUSE_DIR and (run is None or run.attempt == 1) and flag.exists():
        Path(f"{flag}.tmp").write_text(str(os.getpid()))
        Path(f"{flag}.tmp").rename(f"{flag}.paused")
        while flag.exists():
            self.on_progress("issues", 0, "paused by the test")  # a cancelled import stops here
            time.sleep(0.05)
    _original(self)


if PAUSE_DIR:
    writer.ProjectWriter.unmodelled_files = _pausing  # type: ignore[method-assign]
