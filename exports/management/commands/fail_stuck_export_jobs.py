from django.conf import settings
from django.core.management.base import BaseCommand

from exports import maintenance


class Command(BaseCommand):
    help = (
        "Fail export jobs that are stuck: older than EXPORT_MAX_AGE, or whose job run ended "
        "without them (the hourly sweep, run now)."
    )

    def handle(self, *args, **options) -> None:
        result = maintenance.export_jobs_fail_stuck()
        total = result["over_budget"] + result["run_ended"]
        self.stdout.write(
            f"Failed {total} stuck export job(s): {result['over_budget']} over the "
            f"{settings.EXPORT_MAX_AGE / 3600:g} h budget, {result['run_ended']} whose run had ended. "
            f"Removed {result['workdirs_removed']} scratch director(ies) of stopped jobs."
        )
