"""Fernet encryption of secret values; keys from SLUICE_SECRET_KEYS, newest first."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def keyring() -> MultiFernet:
    keys = list(settings.SLUICE_SECRET_KEYS)
    if not keys:
        raise ImproperlyConfigured("SLUICE_SECRET_KEYS holds no key")
    try:
        return MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in keys])
    except (ValueError, TypeError) as exc:
        # The message names the problem, never the key.
        raise ImproperlyConfigured(
            "SLUICE_SECRET_KEYS must be urlsafe-base64 32-byte Fernet keys"
        ) from exc


def encrypt(value: str) -> bytes:
    return keyring().encrypt(value.encode())


def decrypt(ciphertext: bytes) -> str:
    try:
        return keyring().decrypt(bytes(ciphertext)).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "a secret cannot be decrypted with any key of SLUICE_SECRET_KEYS (was a key dropped "
            "before `manage.py rotate_secret_keys` ran?)"
        ) from None


def reencrypt(ciphertext: bytes) -> bytes:
    return keyring().rotate(bytes(ciphertext))
