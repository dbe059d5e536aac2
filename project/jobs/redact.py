"""Masking what looks like a secret in free text (error messages, log extras).

Errors are written by our code and name hosts rather than URLs, but a message can still
quote what a library or a far side said. Before a run's error is stored or shown, the
query string of any URL, values after ``password=``/``token=``-style keys, well-known
token formats and long opaque strings are cut down to a short prefix.
"""

from __future__ import annotations

import re

_RULES: list[tuple[re.Pattern[str], str]] = [
    # A URL's query may carry a signature (an upload URL, say).
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^\s?#]+)\?[^\s]*", re.IGNORECASE), r"\1?…"),
    (
        re.compile(r"\b(password|passwd|secret|token|api[_-]?key|signature|sig)=([^\s&]+)", re.IGNORECASE),
        r"\1=…",
    ),
    # Token formats of GitLab and the partners whose leaks we verify.
    (
        re.compile(
            r"\b(glpat-|gloas-|glrt-|ghp_|gho_|ghs_|github_pat_|AKIA|ASIA|AIza|ya29\.|PMAK-|sk-|xox[abprs]-)"
            r"[A-Za-z0-9_\-.]{4,}"
        ),
        r"\1…",
    ),
    (re.compile(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)", re.DOTALL), "[PEM block]"),
    # Anything long and opaque (keys, signatures): keep 4 characters to tell them apart.
    # Slashes excluded: a file path in a traceback is not a secret.
    (re.compile(r"\b([A-Za-z0-9+_\-]{4})[A-Za-z0-9+_\-=]{36,}"), r"\1…"),
]


def redact(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
