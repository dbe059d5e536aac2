"""Recompute every stored ``value_fingerprint`` as a keyed fingerprint.

Until now a fingerprint was the value's first 4 characters and 32 bits of its plain
SHA-256, which lets anyone who reads it confirm a guess of a weak secret. It is now an
HMAC-SHA256 under a server key (``project.crypto.fingerprint``); this migration rewrites
the stored ones from the encrypted ``raw_value``. The algorithm is copied here, so that a
later change of ``fingerprint`` does not change what this migration did. Reversing it is a
no-op: the unkeyed fingerprints are not brought back.
"""

import logging

from django.core.exceptions import ImproperlyConfigured
from django.db import migrations, models
from django.db.models.functions import Cast
from django.utils.crypto import salted_hmac

BATCH = 500


def _fingerprint(value: str) -> str:
    digest = salted_hmac("project.crypto.fingerprint", value, algorithm="sha256").hexdigest()[:16]
    visible = value[:4] if len(value) >= 12 else ""
    return f"{visible}…{digest}"


def fingerprints_recompute(apps, schema_editor) -> None:
    from project import crypto

    Finding = apps.get_model("secret_detection", "Finding")
    # The ciphertext as stored (Cast skips the field's decryption), so that one row that
    # cannot be decrypted is reported instead of stopping the migration.
    rows = (
        Finding.objects.annotate(cipher=Cast("raw_value", models.TextField()))
        .values_list("pk", "cipher")
        .order_by("pk")
    )
    changed, unreadable = [], 0
    for pk, cipher in rows.iterator(chunk_size=BATCH):
        if not cipher:
            value = ""
        else:
            try:
                value = crypto.decrypt(cipher)
            except ImproperlyConfigured:
                # Not ENCRYPTION_KEY's: no fingerprint rather than the unkeyed one.
                unreadable += 1
                value = ""
        changed.append(Finding(pk=pk, value_fingerprint=_fingerprint(value) if value else ""))
        if len(changed) >= BATCH:
            Finding.objects.bulk_update(changed, ["value_fingerprint"])
            changed = []
    if changed:
        Finding.objects.bulk_update(changed, ["value_fingerprint"])
    if unreadable:
        logging.getLogger(__name__).warning(
            "%d finding(s) could not be decrypted with ENCRYPTION_KEY: their fingerprint is now empty", unreadable
        )


class Migration(migrations.Migration):
    dependencies = [("secret_detection", "0004_report_imports")]

    operations = [migrations.RunPython(fingerprints_recompute, migrations.RunPython.noop, elidable=True)]
