from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from project import services
from project.errors import AppError
from project.models import User


class Command(BaseCommand):
    help = "Create a personal access token for USERNAME. The token is the last line of output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--scopes", default="api", help="comma-separated: api, read_api, read_user")
        parser.add_argument("--expires-days", type=int, default=None, help="days until it expires (default: never)")
        parser.add_argument("--name", default="command line")

    def handle(self, *args, **options) -> None:
        user = User.objects.filter(username=options["username"], is_active=True).first()
        if user is None:
            raise CommandError(f"no active user named {options['username']!r}")
        expires_at = None
        if options["expires_days"] is not None:
            if options["expires_days"] < 1:
                raise CommandError("--expires-days must be at least 1")
            expires_at = timezone.localdate() + timedelta(days=options["expires_days"])
        scopes = [scope.strip() for scope in options["scopes"].split(",") if scope.strip()]
        try:
            token, value = services.access_token_create(
                user=user, name=options["name"], scopes=scopes, expires_at=expires_at
            )
        except AppError as exc:
            raise CommandError(exc.message) from None
        expiry = f", expires {token.expires_at}" if token.expires_at else ", never expires"
        self.stderr.write(f"token {token.name!r} for {user.username}: scopes {','.join(token.scopes)}{expiry}")
        self.stdout.write(value)
