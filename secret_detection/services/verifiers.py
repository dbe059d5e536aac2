"""The verifier interface: how routing, "Verify now" and the refresher start a token's
verification without knowing who answers.

Two kinds implement it. SDRS (``Verifier.PARTNER``) accepts the token and calls back
later (``services.verification`` sends, ``services.callbacks`` applies the result); a
direct partner client (``Verifier.DIRECT``, ``secret_detection.partners``) answers within
the call (``services.direct``). Both move the status through the same transitions:
``status_claim`` → pending, then ``status_result`` with the verdict.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from secret_detection.models import Verifier
from secret_detection.services import jobs


@dataclass(frozen=True)
class TokenVerifier:
    """One kind of verifier: its name on the status row and the job that does the work
    (taking ``finding_id``, ``user_id`` and ``force``; ids only, never a value)."""

    name: str
    job: str
    #: True: the verdict arrives later by callback; False: within the job's call.
    asynchronous: bool

    def start(self, asks: Iterable[dict[str, Any]]) -> int:
        """Enqueue one verification per ask, after the surrounding transaction commits."""
        asks = list(asks)
        if asks:
            jobs.job_get(self.job).enqueue_many(asks)
        return len(asks)


SDRS = TokenVerifier(Verifier.PARTNER, jobs.VERIFY, asynchronous=True)
DIRECT = TokenVerifier(Verifier.DIRECT, jobs.DIRECT_VERIFY, asynchronous=False)
VERIFIERS = {verifier.name: verifier for verifier in (SDRS, DIRECT)}


def verifier_get(name: str) -> TokenVerifier:
    return VERIFIERS[name]
