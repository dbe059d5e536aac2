from django.core.management.base import BaseCommand, CommandError

from secret_detection import services


class Command(BaseCommand):
    help = "Check that SDRS is reachable and accepts our signed requests (no token is sent)."

    def handle(self, *args, **options) -> None:
        check = services.sdrs_connection_check(user_id=0)
        for warning in check.warnings:
            self.stderr.write(f"warning: {warning}")
        if not check.ok:
            raise CommandError(f"{check.result}: {check.message}")
        self.stdout.write(f"{check.result}: {check.message}")
