"""Encryption at rest for secrets: Fernet keys through MultiFernet.

FASTFLOW_ENCRYPTION_KEY holds one or more Fernet keys, comma-separated, newest first: the
newest encrypts, all of them decrypt, so a key can be rotated in without downtime
(`manage.py rotate_encryption_key` then re-encrypts everything under the newest). When the
variable is unset, a key is generated once into `<data dir>/encryption.key` (mode 0600)
and `up` warns that it lives next to the database it protects.
"""

import os
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

KEY_FILE = "encryption.key"


class DecryptionError(Exception):
    """A stored value cannot be decrypted with any configured key."""


def key_file() -> Path:
    return Path(settings.FASTFLOW_DATA_DIR) / KEY_FILE


def _generated_key() -> str:
    path = key_file()
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process won the race; read its key
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(Fernet.generate_key().decode())
    return path.read_text().strip()


def using_generated_key() -> bool:
    return not settings.FASTFLOW_ENCRYPTION_KEY


@lru_cache(maxsize=8)
def _fernet(raw_keys: str) -> MultiFernet:
    keys = [k.strip() for k in raw_keys.split(",") if k.strip()]
    if not keys:
        raise ImproperlyConfigured("FASTFLOW_ENCRYPTION_KEY is set but holds no key")
    fernets = []
    for n, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.encode()))
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"FASTFLOW_ENCRYPTION_KEY: key {n} is not a valid Fernet key (32 url-safe base64 bytes; "
                f"make one with `python -c \"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\"`)"
            ) from None
    return MultiFernet(fernets)


def fernet() -> MultiFernet:
    return _fernet(settings.FASTFLOW_ENCRYPTION_KEY or _generated_key())


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError("no configured encryption key can decrypt this value") from None


def rotate(token: str) -> str:
    """Re-encrypt under the newest key (MultiFernet.rotate keeps the original timestamp)."""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise DecryptionError("no configured encryption key can decrypt this value") from None
