#!/usr/bin/env python
"""Django's command-line utility."""

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Commands that run as services: their log lines are their output, so they keep LOG_LEVEL.
SERVICES = frozenset({"qcluster", "catalog_listen", "runserver"})
_ENV_FILE = Path(__file__).resolve().parent / ".env"


def _env_file_sets(path: Path, name: str) -> bool:
    """Whether the operator's ``.env`` (read by the settings, see ``project.env``) sets ``name``."""
    try:
        text = path.read_text()
    except OSError:
        return False
    return re.search(rf"^\s*(?:export\s+)?{name}\s*=\s*['\"]?[^\s'\"#]", text, re.MULTILINE) is not None


def quiet_logs(
    argv: Sequence[str], environ: Mapping[str, str], stderr_is_tty: bool, *, env_file: Path = _ENV_FILE
) -> bool:
    """Whether this command should log warnings and errors only.

    A command typed in a terminal prints its result on stdout; the INFO lines of the
    services it calls would be mixed into it on screen. So: quiet for a one-off command
    whose stderr is a terminal, unless LOG_LEVEL is set (environment or ``.env``). Services,
    cron jobs and pipes (stderr not a terminal) keep the configured level.
    """
    command = argv[1] if len(argv) > 1 else ""
    if command in SERVICES or not stderr_is_tty:
        return False
    return not environ.get("LOG_LEVEL") and not _env_file_sets(env_file, "LOG_LEVEL")


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    if quiet_logs(sys.argv, os.environ, sys.stderr is not None and sys.stderr.isatty()):
        # Read by the settings; processes this command starts inherit it.
        os.environ["LOG_LEVEL"] = "warning"
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    from project import embedded_db

    try:
        # Without DATABASE_URL, the embedded PostgreSQL: started (or attached to) here, before
        # the settings are read; importing the settings starts nothing.
        embedded_db.ensure_database_url()
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A bad environment value: one clear line, no traceback.
        sys.stderr.write(f"configuration error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
