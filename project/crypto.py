"""Symmetric encryption for secrets at rest (Fernet, with key rotation).

``ENCRYPTION_KEY`` holds one or more comma-separated Fernet keys: the first encrypts, all
decrypt, so a key can be rotated without losing data. In DEBUG without a key, one is
derived from SECRET_KEY so development needs no set-up.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@functools.cache
def _fernet() -> MultiFernet:
    raw = settings.ENCRYPTION_KEY
    if raw:
        keys = [part.strip() for part in raw.split(",") if part.strip()]
    else:
        keys = [base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest()).decode()]
    return MultiFernet([Fernet(key) for key in keys])


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        # Never include the ciphertext: the message may reach logs.
        raise ImproperlyConfigured("a stored secret cannot be decrypted with ENCRYPTION_KEY") from None


def fingerprint(value: str) -> str:
    """A masked, stable fingerprint of a secret: a short prefix plus a hash, never the value."""
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    visible = value[:4] if len(value) >= 12 else ""
    return f"{visible}…{digest}"


def rsa_private_key_load(pem: str):
    """The RSA private key in ``pem`` (unencrypted PEM). Raises ``ValueError`` saying what
    is wrong, in words an operator can act on; the admin's form and the SDRS client both
    check keys through this."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("This is not an unencrypted PEM private key.") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("The key must be an RSA key (requests are signed with RS256).")
    return key
