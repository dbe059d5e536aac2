from django.conf import settings
from django.core.management.base import BaseCommand

from exports import maintenance


class Command(BaseCommand):
    help = (
        "Delete export archives older than EXPORT_ARCHIVE_TTL, archive files no record refers to, "
        "and scratch directories left by killed workers (the hourly cleanup, run now)."
    )

    def handle(self, *args, **options) -> None:
        result = maintenance.export_archives_cleanup()
        self.stdout.write(
            f"Deleted {result['archives_deleted']} archive(s) older than {settings.EXPORT_ARCHIVE_TTL / 3600:g} h "
            f"({result['bytes_freed'] / 1_000_000:.1f} MB), {result['orphans_deleted']} orphaned file(s) and "
            f"{result['workdirs_removed']} scratch director(ies)."
        )
