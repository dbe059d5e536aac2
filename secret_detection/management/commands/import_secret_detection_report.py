import shutil
import sys
import tempfile
from contextlib import ExitStack
from typing import IO

from django.core.management.base import BaseCommand, CommandError, CommandParser

from project import services as core
from project.models import User
from secret_detection import services


class Command(BaseCommand):
    help = (
        "Import a secret detection report (gl-secret-detection-report.json) into PROJECT (id or "
        "namespace/path), here and now, through the same streaming check and import as the API's "
        "job. The whole report is checked first; an invalid one stores nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project", help="project id or namespace/path")
        parser.add_argument("file", help="path of the report, or - for standard input")
        parser.add_argument("--user", help="username recorded as the importer (default: the project's creator)")

    def handle(self, *args, **options) -> None:
        project = core.project_find(ref=options["project"])
        if project is None:
            raise CommandError(f"no project {options['project']!r}")
        user = project.creator
        if options["user"]:
            user = User.objects.filter(username=options["user"], is_active=True).first()
            if user is None:
                raise CommandError(f"no active user named {options['user']!r}")
        with ExitStack() as stack:
            handle: IO[bytes]
            try:
                if options["file"] == "-":
                    # The report is read twice (checked, then imported): spool the stream to disk.
                    handle = stack.enter_context(tempfile.TemporaryFile(prefix="report-"))
                    shutil.copyfileobj(sys.stdin.buffer, handle, 1024 * 1024)
                    handle.seek(0)
                else:
                    handle = stack.enter_context(open(options["file"], "rb"))
            except OSError as exc:
                raise CommandError(f"cannot read {options['file']}: {exc.strerror}") from None
            try:
                result = services.report_import_file(project=project, user=user, handle=handle)
            except services.InvalidReport as exc:
                problems = "\n".join(f"  - {problem}" for problem in exc.problems)
                more = f"\n  (and {exc.total - len(exc.problems)} more)" if exc.total > len(exc.problems) else ""
                raise CommandError(f"the report is invalid; nothing was imported:\n{problems}{more}") from None
        job = f"; routing job #{result.routing_run_id} started" if result.routing_run_id else "; nothing new to verify"
        duplicates = f", {result.duplicates} duplicate(s) skipped" if result.duplicates else ""
        self.stdout.write(
            f"{project.path_with_namespace}: {result.findings} finding(s) in the report, {result.created} new, "
            f"{result.updated} updated, {result.unchanged} unchanged{duplicates}{job}"
        )
        for warning in result.warnings:
            self.stdout.write(f"  warning: {warning}")
