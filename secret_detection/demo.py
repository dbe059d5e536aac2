"""``make demo``: the local SDRS-compatible server (``secret_detection.localsdrs``) as a
stand-in for the partner verification service, with the application settings pointed at it.

The demo sets the admin-owned values. SDRS values the environment fixes (``SDRS_URL``...)
still win over them, so the demo warns when one is set."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

DEFAULT_PORT = 8765


def _write_secret(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def local_sdrs_command(*, var_dir: Path, python: str) -> list[str]:
    """Create the demo key pair and callback secret under ``var/sdrs/`` (once), enable
    SDRS in the application settings with them, and return the server's command line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from project.models import ApplicationSetting

    port = int(os.environ.get("SDRS_DEMO_PORT", DEFAULT_PORT))
    folder = var_dir / "sdrs"
    folder.mkdir(parents=True, exist_ok=True)
    private_file, public_file, secret_file = (
        folder / "signing_key.pem",
        folder / "public.pem",
        folder / "callback_secret",
    )
    if not private_file.exists() or not public_file.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_secret(private_file, pem.decode())
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public_file.write_text(public.decode())
    if not secret_file.exists():
        _write_secret(secret_file, secrets.token_urlsafe(32))
    row = ApplicationSetting.current()
    row.sdrs_enabled = True
    row.sdrs_url = f"http://127.0.0.1:{port}"
    row.sdrs_jwt_signing_key = private_file.read_text()
    row.sdrs_callback_secret = secret_file.read_text().strip()
    row.save()
    fixed = row.effective_sdrs().set_by_environment
    if fixed:
        sys.stderr.write(
            f"warning: the environment sets {', '.join(fixed.values())}: those win over the demo's "
            "SDRS settings, so verification may not reach the local SDRS server.\n"
        )
    return [
        python,
        "-m",
        "secret_detection.localsdrs",
        "--port",
        str(port),
        "--public-key",
        str(public_file),
        "--callback-secret-file",
        str(secret_file),
        "--callback-delay",
        os.environ.get("SDRS_DEMO_CALLBACK_DELAY", "2"),
    ]


PARTNERS_DEFAULT_PORT = 8770
#: One token of each direct partner type, live or revoked as the stand-ins judge them
#: (``secret_detection.localpartners``), plus a malformed one (unknown, never sent).
DEMO_PARTNER_TOKENS = [
    ("AWS", "AKIAQ3EXAMPLE7Q4VNB2"),
    ("AWS", "AKIAREVOKED000EXAMP1"),
    ("GCP API key", "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"),
    ("Google (GCP) Service-account", "revoked-service-account-key-0123456789"),
    ("Postman API token", "PMAK-0123456789abcdef01234567-0123456789abcdef0123456789abcdef01"),
    ("Postman API token", "PMAK-dead456789abcdef01234567-0123456789abcdef0123456789abcdef01"),
    ("Postman API token", "PMAK-not-a-postman-key"),
    ("GitHub Personal Access Token", "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"),
    ("OpenAiProjectKey", "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 3),
    ("anthropic_key", "sk-ant-api03-" + ("REVOKEDd4E5f6G7h8I9j0" * 5)[:93] + "AA"),
    ("Sendgrid API token", "SG." + "A1b2C3d4E5f6G7h8I9j0K1" + "." + ("A1b2C3d4E5f6G7h8I9j0" * 3)[:43]),
    ("Heroku API Key", "01234567-89ab-cdef-0123-456789abcdef"),
    # A restricted key without the balance permission: Stripe's 403, active.
    ("StripeLiveRestrictedKey", "rk_live_" + ("A1b2C3d4E5f6G7h8I9j0" * 5)[:99]),
]


def demo_partner_report() -> dict:
    """A gl-secret-detection-report.json holding ``DEMO_PARTNER_TOKENS``."""
    vulnerabilities = []
    for index, (token_type, value) in enumerate(DEMO_PARTNER_TOKENS):
        vulnerabilities.append(
            {
                "id": f"demo-partner-{index}",
                "category": "secret_detection",
                "name": token_type,
                "description": f"{token_type} found in the demo report",
                "severity": "Critical",
                "confidence": "Unknown",
                "raw_source_code_extract": value,
                "scanner": {"id": "gitleaks", "name": "Gitleaks"},
                "location": {
                    "file": f"demo/partners-{index}.env",
                    "commit": {"author": "Demo", "date": "2026-11-29T10:00:00Z", "message": "demo", "sha": "0d3e0"},
                    "start_line": 1,
                    "end_line": 1,
                },
                "identifiers": [
                    {"type": "gitleaks_rule_id", "name": f"Gitleaks rule ID {token_type}", "value": token_type}
                ],
            }
        )
    return {
        "version": "15.2.1",
        "vulnerabilities": vulnerabilities,
        "scan": {
            "analyzer": {"id": "secrets", "name": "secrets", "version": "1", "vendor": {"name": "GitLab"}},
            "scanner": {"id": "gitleaks", "name": "Gitleaks", "version": "8", "vendor": {"name": "GitLab"}},
            "type": "secret_detection",
            "start_time": "2026-11-29T10:00:00",
            "end_time": "2026-11-29T10:00:01",
            "status": "success",
        },
    }


def local_partners_command(*, var_dir: Path, python: str) -> list[str]:
    """The partner stand-ins for ``make demo``: point PARTNER_<NAME>_URL at them (in this
    process's environment, which the web server and the cluster inherit), route every
    partner type with a direct client to it (the demo turns SDRS on, which would otherwise
    take them), write ``var/partners/demo-report.json``, and return the server's command."""
    import json

    from secret_detection import partners
    from secret_detection.localpartners import PartnerStandIn
    from secret_detection.models import PartnerTokenType

    port = int(os.environ.get("PARTNERS_DEMO_PORT", PARTNERS_DEFAULT_PORT))
    stand_in = PartnerStandIn(port=port)
    for name in partners.CLIENTS:
        os.environ[f"PARTNER_{name.upper()}_URL"] = stand_in.url(name)
    os.environ["PARTNER_ALLOW_HTTP"] = "1"
    for row in PartnerTokenType.objects.all():
        if partners.entry_for(row.token_type) is not None and row.verifier == "auto":
            row.verifier, row.updated_by = "direct", "make demo"
            row.save(update_fields=["verifier", "updated_by", "updated_at"])
    folder = var_dir / "partners"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "demo-report.json").write_text(json.dumps(demo_partner_report(), indent=2))
    return [
        python,
        "-m",
        "secret_detection.localpartners",
        "--port",
        str(port),
        "--latency",
        os.environ.get("PARTNERS_DEMO_LATENCY", "0.1"),
    ]
