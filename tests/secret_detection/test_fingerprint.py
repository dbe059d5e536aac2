"""The fingerprint shown instead of a leaked token: masked prefix + keyed digest.

Before, it was the value's first 4 characters and 32 bits of its plain SHA-256: anyone
who could read it (the admin, the API, a log line) could confirm a guess of a weak secret
offline. It is now HMAC-SHA256 under a key derived from SECRET_KEY, so without the
server's key it confirms nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import re

import pytest
import responses
from django.apps import apps
from django.conf import settings
from django.db import connection
from django.utils.crypto import salted_hmac

from project import crypto
from secret_detection import services
from secret_detection.models import Finding

FORMAT = re.compile(r"^(?:.{4})?…[0-9a-f]{16}$")
WEAK = "hunter2-password"  # long enough to show its prefix


def test_the_fingerprint_is_the_masked_prefix_and_a_keyed_digest_of_the_value() -> None:
    value = "AKIAZQ3EXAMPLE7Q4VNB"
    fingerprint = crypto.fingerprint(value)
    expected = hmac.new(
        hashlib.sha256(("project.crypto.fingerprint" + settings.SECRET_KEY).encode()).digest(),
        value.encode(),
        hashlib.sha256,
    ).hexdigest()[:16]
    assert fingerprint == f"AKIA…{expected}"
    assert FORMAT.match(fingerprint)
    assert len(fingerprint) <= Finding._meta.get_field("value_fingerprint").max_length
    assert crypto.fingerprint(value) == fingerprint  # stable: the same secret, the same fingerprint


def test_a_guess_cannot_be_confirmed_from_the_fingerprint_without_the_server_key() -> None:
    fingerprint = crypto.fingerprint(WEAK)
    digest = fingerprint.split("…", 1)[1]
    unkeyed = hashlib.sha256(WEAK.encode()).hexdigest()
    assert digest not in unkeyed  # the old scheme's 32 bits, and any other slice of it
    assert not unkeyed.startswith(digest[:8])
    # Another deployment (another SECRET_KEY) gets another digest for the same secret.
    other = salted_hmac(crypto.FINGERPRINT_KEY_SALT, WEAK, secret="another-key", algorithm="sha256").hexdigest()
    assert other[:16] != digest


def test_short_values_show_no_prefix() -> None:
    assert crypto.fingerprint("abc123").startswith("…")
    assert crypto.fingerprint("elevenchars").startswith("…")
    assert crypto.fingerprint("twelve-chars").startswith("twel…")


@pytest.mark.django_db
def test_the_stored_fingerprint_and_the_log_line_use_the_keyed_form(
    project, developer, import_findings, sdrs_settings, caplog
):
    (finding,) = import_findings(project, [("AWS", "AKIAZQ3EXAMPLE7Q4VNB")], user=developer)
    assert finding.value_fingerprint == crypto.fingerprint("AKIAZQ3EXAMPLE7Q4VNB")
    sdrs_settings(url="https://sdrs.example.com")
    caplog.set_level(logging.INFO, logger="secret_detection")
    with responses.RequestsMock() as sdrs:
        sdrs.add(responses.POST, "https://sdrs.example.com/api/v1/token/verify", status=202)
        services.token_verification_run(finding_id=finding.pk)
    (line,) = [r for r in caplog.records if r.getMessage().startswith("SDRS verification attempt")]
    assert line.token == finding.value_fingerprint
    assert hashlib.sha256(b"AKIAZQ3EXAMPLE7Q4VNB").hexdigest()[:8] not in caplog.text


@pytest.mark.django_db
def test_the_data_migration_recomputes_stored_fingerprints(project, developer, import_findings) -> None:
    migration = importlib.import_module("secret_detection.migrations.0005_value_fingerprint_hmac")
    live, empty, unreadable = import_findings(
        project, [("AWS", "AKIAZQ3EXAMPLE7Q4VNB"), ("AWS", ""), ("AWS", "AKIA-old-key-0000")], user=developer
    )
    old = "AKIA…" + hashlib.sha256(b"AKIAZQ3EXAMPLE7Q4VNB").hexdigest()[:8]  # the unkeyed form
    Finding.objects.filter(pk=live.pk).update(value_fingerprint=old)
    with connection.cursor() as cursor:  # a row ENCRYPTION_KEY cannot decrypt
        cursor.execute(
            "UPDATE secret_detection_findings SET raw_value = %s, value_fingerprint = %s WHERE id = %s",
            ["gAAAAAnot-a-fernet-token", "AKIA…deadbeef", unreadable.pk],
        )

    migration.fingerprints_recompute(apps, None)

    stored = dict(Finding.objects.values_list("pk", "value_fingerprint"))
    assert stored[live.pk] == crypto.fingerprint("AKIAZQ3EXAMPLE7Q4VNB")
    assert stored[empty.pk] == ""
    assert stored[unreadable.pk] == ""  # no fingerprint rather than the unkeyed one
    # What the migration computes is what the code computes (the algorithm is copied there).
    assert migration._fingerprint(WEAK) == crypto.fingerprint(WEAK)
