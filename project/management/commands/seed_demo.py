from django.core.management.base import BaseCommand, CommandError, CommandParser

from project.demo import demo_seed


class Command(BaseCommand):
    help = "Create (idempotently) a user 'demo' owning N projects with labels, members, issues and notes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--projects", type=int, default=5, help="number of projects (default 5)")
        parser.add_argument("--issues", type=int, default=20, help="issues per project (default 20)")
        parser.add_argument("--notes", type=int, default=3, help="notes per issue (default 3)")

    def handle(self, *args, **options) -> None:
        for name in ("projects", "issues", "notes"):
            if options[name] < 0:
                raise CommandError(f"--{name} must be 0 or more")
        projects = demo_seed(
            projects=options["projects"],
            issues=options["issues"],
            notes_per_issue=options["notes"],
            log=lambda line: self.stdout.write(line),
        )
        self.stdout.write(self.style.SUCCESS(f"demo data ready: {len(projects)} project(s) owned by 'demo'"))
