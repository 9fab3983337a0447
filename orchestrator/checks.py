"""Start-up checks for secrets (`up` runs `check`, so an error here stops start-up).

fastflow.E010: stored secrets that no key of FASTFLOW_ENCRYPTION_KEY decrypts (a wrong or
               dropped key): runs would fail, so refuse to start rather than skip them.
fastflow.W011: FASTFLOW_ENCRYPTION_KEY unset, so the key was generated into the data dir,
               next to the database it protects.
"""

from django.core import checks
from django.db import DatabaseError, connection


@checks.register("fastflow", deploy=False)
def check_secrets_decrypt(app_configs=None, databases=None, **kwargs):
    # Checks run before `migrate` too (and without a database in some commands): only look
    # when the table exists.
    from orchestrator.models import Secret
    from orchestrator.services import secrets_undecryptable

    try:
        if Secret._meta.db_table not in connection.introspection.table_names():
            return []
        bad = secrets_undecryptable()
    except DatabaseError:
        return []
    if not bad:
        return []
    return [checks.Error(
        f"FASTFLOW_ENCRYPTION_KEY cannot decrypt {len(bad)} stored secret(s): {', '.join(bad[:20])}"
        + (" …" if len(bad) > 20 else ""),
        hint="Set FASTFLOW_ENCRYPTION_KEY to the key the secrets were stored with (several keys may be given, "
             "comma-separated, newest first), or re-enter those secrets.",
        id="fastflow.E010")]


@checks.register("fastflow")
def check_generated_key(app_configs=None, **kwargs):
    from orchestrator import crypto

    if not crypto.using_generated_key():
        return []
    return [checks.Warning(
        f"FASTFLOW_ENCRYPTION_KEY is not set: secrets are encrypted with a key generated into "
        f"{crypto.key_file()}, next to the database it protects",
        hint="Set FASTFLOW_ENCRYPTION_KEY (keep it outside the data dir and its backups).",
        id="fastflow.W011")]
