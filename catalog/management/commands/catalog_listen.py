import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog import services
from catalog.listener import Listener


class Command(BaseCommand):
    help = (
        "Wake the CI catalog sync processor within about a second of any project update "
        "(LISTEN catalog_sync_events). Runs until SIGINT/SIGTERM; `make run` starts it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--debounce",
            type=float,
            default=None,
            help=f"seconds to gather notifications before enqueueing (default CATALOG_LISTENER_DEBOUNCE="
            f"{settings.CATALOG_LISTENER_DEBOUNCE})",
        )

    def handle(self, *args, **options) -> None:
        debounce = settings.CATALOG_LISTENER_DEBOUNCE if options["debounce"] is None else options["debounce"]
        if debounce < 0:
            raise CommandError("--debounce must be 0 or more")
        stop = threading.Event()

        def request_stop(signum, frame) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        listener = Listener(
            request=lambda: services.catalog_sync_request(source="listener"), debounce=debounce, stop=stop
        )
        listener.run()
        self.stdout.write(
            f"catalog listener stopped: {listener.notifications} notification(s), "
            f"{listener.requests} request(s), {listener.connections} connection(s)"
        )
