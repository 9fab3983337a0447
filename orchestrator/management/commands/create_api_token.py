"""`manage.py create_api_token USER [--name NAME]`: print a new API token for USER, once.

Only its sha256 is stored, so the printed token cannot be shown again; revoke it in the
admin (API tokens) when it leaks or is no longer needed."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from orchestrator.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a user and print it (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the token is for, shown in the admin")

    def handle(self, *args, username, name, **options):
        User = get_user_model()
        user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"no user {username!r}; create one with `manage.py createsuperuser` or in the admin")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive: a token would not authenticate")
        _, raw = ApiToken.issue(user=user, name=name or "created with create_api_token")
        self.stderr.write(f"API token for {username}{' (staff)' if user.is_staff else ' (read-only: not staff)'}; "
                          "it is not stored and will not be shown again:")
        self.stdout.write(raw)
