from django.conf import settings
from django.core.management.base import BaseCommand

from exports import maintenance


class Command(BaseCommand):
    help = (
        "Fail export jobs that are stuck: older than EXPORT_MAX_AGE, started without a heartbeat "
        "for EXPORT_STUCK_AFTER, or queued with no run left (the hourly sweep, run now)."
    )

    def handle(self, *args, **options) -> None:
        result = maintenance.export_jobs_fail_stuck()
        total = result["over_budget"] + result["no_heartbeat"] + result["never_started"]
        self.stdout.write(
            f"Failed {total} stuck export job(s): {result['over_budget']} over the "
            f"{settings.EXPORT_MAX_AGE / 3600:g} h budget, {result['no_heartbeat']} without a heartbeat for "
            f"{settings.EXPORT_STUCK_AFTER} s, {result['never_started']} never started. "
            f"Removed {result['workdirs_removed']} scratch director(ies) of stopped jobs."
        )
