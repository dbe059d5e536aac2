import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from project import services as core
from project.models import User
from secret_detection import services


class Command(BaseCommand):
    help = (
        "Import a secret detection report (gl-secret-detection-report.json) into PROJECT (id or "
        "namespace/path). The whole report is validated first; an invalid one stores nothing."
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
        try:
            if options["file"] == "-":
                content = sys.stdin.buffer.read()
            else:
                content = Path(options["file"]).read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {options['file']}: {exc.strerror}") from None
        try:
            result = services.report_import(project=project, user=user, report=services.report_parse(content=content))
        except services.InvalidReport as exc:
            problems = "\n".join(f"  - {problem}" for problem in exc.problems)
            raise CommandError(f"the report is invalid; nothing was imported:\n{problems}") from None
        job = f"; routing job #{result.routing_run_id} started" if result.routing_run_id else "; nothing new to verify"
        self.stdout.write(
            f"{project.path_with_namespace}: {result.findings} finding(s) in the report, {result.created} new, "
            f"{result.updated} updated, {result.unchanged} unchanged{job}"
        )
