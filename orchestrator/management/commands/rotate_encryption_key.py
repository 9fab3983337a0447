from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from orchestrator import crypto
from orchestrator.models import Secret


class Command(BaseCommand):
    help = ("Re-encrypt every secret under the newest key of FASTFLOW_ENCRYPTION_KEY. Put the new key first, "
            "keep the old ones after it, run this, then drop the old keys.")

    def handle(self, *args, **options):
        """All or nothing: one secret no configured key can decrypt aborts the whole rotation."""
        with transaction.atomic():
            rows = list(Secret.objects.select_for_update().only("id", "name", "pipeline_id", "value_encrypted"))
            failed = []
            for row in rows:
                try:
                    row.value_encrypted = crypto.rotate(row.value_encrypted)
                except crypto.DecryptionError:
                    failed.append(str(row))
            if failed:
                raise CommandError(f"FASTFLOW_ENCRYPTION_KEY cannot decrypt {len(failed)} stored secret(s): "
                                   f"{', '.join(failed)}; nothing was re-encrypted")
            Secret.objects.bulk_update(rows, ["value_encrypted"], batch_size=500)
        self.stdout.write(f"Re-encrypted {len(rows)} secret(s) under the newest key.")
