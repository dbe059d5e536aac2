import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog import services


class Command(BaseCommand):
    help = (
        "Run the CI catalog sync processor now, in this process. With --wait, keep going "
        "(showing progress) until no pending event is left."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--wait", action="store_true", help="run in the foreground until the queue is empty")
        parser.add_argument(
            "--poll", type=float, default=1.0, help="with --wait: seconds between checks while another run works"
        )

    def handle(self, *args, **options) -> None:
        if options["poll"] <= 0:
            raise CommandError("--poll must be more than 0")
        if not services.catalog_sync_enabled():
            raise CommandError(
                "CI catalog sync is switched off (admin → Application settings → CI catalog); "
                "events are kept until it is switched on"
            )
        if not options["wait"]:
            results = services.catalog_sync_events_process(progress=self._progress)
            self._report(results)
            return
        totals = {"consumable_events": 0, "processed_events": 0}
        while True:
            # The whole queue is ours: no re-enqueue, the loop goes on until it is empty.
            results = services.catalog_sync_events_process(progress=self._progress, reenqueue=False)
            for key in totals:
                totals[key] += results[key]
            if results.get("skipped") == "disabled":
                raise CommandError("CI catalog sync was switched off; stopping")
            pending = services.catalog_sync_events_pending_stats()["pending"]
            if not pending:
                break
            if results.get("skipped") == "locked":
                self.stdout.write(f"another processor is running; {pending} event(s) pending")
                time.sleep(options["poll"])
        self.stdout.write(
            self.style.SUCCESS(f"queue empty: {totals['processed_events']} event(s) processed by this command")
        )

    def _progress(self, state: dict) -> None:
        self.stdout.write(
            f"batch {state['batches']}: {state['processed_events']} event(s) processed, "
            f"{state['resources_synced']} resource(s) updated"
        )

    def _report(self, results: dict) -> None:
        if results.get("skipped") == "locked":
            self.stdout.write("another processor is running; it will process the pending events")
        line = ", ".join(
            f"{key}={results[key]}" for key in ("estimated_total_events", "consumable_events", "processed_events")
        )
        self.stdout.write(self.style.SUCCESS(line))
        if results.get("reenqueued"):
            self.stdout.write("events remain: a processor run was enqueued for the cluster")
