from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog import services


class Command(BaseCommand):
    help = (
        "Copy name, description and visibility from the projects into their CI catalog "
        "resources now, whatever the sync events say."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--all", action="store_true", help="every catalog resource")
        which.add_argument(
            "--project", type=int, nargs="+", metavar="ID", dest="projects", help="the resources of these project ids"
        )

    def handle(self, *args, **options) -> None:
        resource_ids = None
        if options["projects"]:
            resource_ids, missing = services.catalog_resource_ids_for_projects(project_ids=options["projects"])
            if missing:
                raise CommandError(f"no catalog resource for project(s): {', '.join(map(str, missing))}")
        result = services.catalog_resources_resync(resource_ids=resource_ids, progress=self._progress)
        self.stdout.write(
            self.style.SUCCESS(
                f"{result['checked']} resource(s) checked: {result['updated']} updated, "
                f"{result['checked'] - result['updated']} already in sync"
            )
        )

    def _progress(self, state: dict) -> None:
        self.stdout.write(f"{state['checked']}/{state['total']} checked, {state['updated']} updated")
