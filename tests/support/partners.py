"""Local stand-ins for the partner APIs (AWS STS, Google tokeninfo, Postman, GitHub, OpenAI,
Anthropic, SendGrid, Heroku, Stripe): real HTTP
servers, in the product as ``secret_detection.localpartners`` (``make demo`` starts
them); this module adds what the tests share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from secret_detection.localpartners import INACTIVE_MARKERS, PARTNERS, PartnerStandIn, Received, is_active

__all__ = [
    "INACTIVE_MARKERS",
    "PARTNERS",
    "PartnerStandIn",
    "Received",
    "is_active",
    "partner_stand_ins",
    "partner_urls",
]

# Values of each format, live and revoked, as the stand-ins judge them.
AWS_ACTIVE = "AKIAQ3EXAMPLE7Q4VNB2"
AWS_INACTIVE = "AKIAREVOKED000EXAMP1"
GCP_ACTIVE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"
GCP_INACTIVE = "AIza" + "SyREVOKEDd4E5f6G7h8I9j0KlMnOpQrStUv"
POSTMAN_ACTIVE = "PMAK-" + "0123456789abcdef01234567" + "-" + "0123456789abcdef0123456789abcdef01"
POSTMAN_INACTIVE = "PMAK-" + "dead456789abcdef01234567" + "-" + "0123456789abcdef0123456789abcdef01"
GITHUB_ACTIVE = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
GITHUB_INACTIVE = "gho_" + "REVOKEDd4E5f6G7h8I9j0K1l2M3n4O5p6Q7r"
OPENAI_ACTIVE = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0" * 3
OPENAI_INACTIVE = "sk-proj-" + "REVOKEDd4E5f6G7h8I9j0" * 3
ANTHROPIC_ACTIVE = "sk-ant-api03-" + ("A1b2C3d4E5f6G7h8I9j0" * 5)[:93] + "AA"
ANTHROPIC_INACTIVE = "sk-ant-api03-" + ("REVOKEDd4E5f6G7h8I9j0" * 5)[:93] + "AA"
SENDGRID_ACTIVE = "SG." + "A1b2C3d4E5f6G7h8I9j0K1" + "." + ("A1b2C3d4E5f6G7h8I9j0" * 3)[:43]
SENDGRID_INACTIVE = "SG." + "REVOKEDd4E5f6G7h8I9j0K" + "." + ("A1b2C3d4E5f6G7h8I9j0" * 3)[:43]
HEROKU_ACTIVE = "01234567-89ab-cdef-0123-456789abcdef"
HEROKU_INACTIVE = "HRKU-" + ("AArevoked" + "A1b2C3d4E5f6G7h8I9j0" * 3)[:60]
STRIPE_ACTIVE = "sk_test_" + ("A1b2C3d4E5f6G7h8I9j0" * 5)[:99]
STRIPE_RESTRICTED = "rk_live_" + ("A1b2C3d4E5f6G7h8I9j0" * 5)[:99]
STRIPE_INACTIVE = "sk_live_" + ("REVOKEDd4E5f6G7h8I9j0" * 5)[:99]


def partner_urls(stand_ins: dict[str, PartnerStandIn]) -> dict[str, str]:
    """The settings pointing each partner at its stand-in."""
    return {f"PARTNER_{name.upper()}_URL": server.url() for name, server in stand_ins.items()}


@contextmanager
def partner_stand_ins(**switches: Any) -> Iterator[dict[str, PartnerStandIn]]:
    """One stand-in per partner, each on its own port (so that a test can tell which host
    received a value)."""
    servers = {name: PartnerStandIn(partner=name, **switches).start() for name in PARTNERS}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.close()
