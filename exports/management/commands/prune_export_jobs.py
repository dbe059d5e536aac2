from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from exports import maintenance


class Command(BaseCommand):
    help = "Delete finished and failed export jobs not updated for EXPORT_JOB_RETENTION_DAYS, in batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=None, help="rows per DELETE (EXPORT_PRUNE_BATCH_SIZE)")

    def handle(self, *args, **options) -> None:
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        cutoff = timezone.now() - timedelta(days=settings.EXPORT_JOB_RETENTION_DAYS)
        deleted = maintenance.export_jobs_prune(batch_size=options["batch_size"])
        self.stdout.write(f"Deleted {deleted} export job(s) last updated before {cutoff:%Y-%m-%d %H:%M} UTC.")
