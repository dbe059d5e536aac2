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
