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
from django.utils.crypto import salted_hmac


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


#: The purpose label of the fingerprint key: the key is derived from SECRET_KEY for this
#: use alone (Django's ``salted_hmac``), so no other HMAC of the site can be made with it.
FINGERPRINT_KEY_SALT = "project.crypto.fingerprint"
#: Hex characters of the keyed digest kept: 64 bits, enough to tell findings apart.
FINGERPRINT_DIGEST_LENGTH = 16
#: Values shorter than this show no prefix at all.
FINGERPRINT_PREFIX_MIN_LENGTH = 12


def fingerprint(value: str) -> str:
    """A masked, stable fingerprint of a secret, shown wherever the secret is not:
    ``<first 4 characters>…<16 hex characters>``, e.g. ``AKIA…3e1f0b2c9d4a7f01``.

    The digest is HMAC-SHA256 of the value under a server key (derived from SECRET_KEY
    with the label ``FINGERPRINT_KEY_SALT``), truncated to 64 bits. An unkeyed hash would
    let anyone who reads a fingerprint (an admin page, an API answer, a log line) confirm
    a guess of a weak secret offline; without the server key the digest confirms nothing.
    The 4-character prefix (the token type's marker, such as ``AKIA`` or ``ghp_``) is
    shown only for values of at least 12 characters; shorter ones show none. A new
    SECRET_KEY gives new fingerprints: the stored ones are those of the key in force when
    they were computed (data migration ``secret_detection.0005`` recomputed them all)."""
    digest = salted_hmac(FINGERPRINT_KEY_SALT, value, algorithm="sha256").hexdigest()[:FINGERPRINT_DIGEST_LENGTH]
    visible = value[:4] if len(value) >= FINGERPRINT_PREFIX_MIN_LENGTH else ""
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
