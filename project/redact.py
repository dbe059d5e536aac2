"""Masking what looks like a secret in free text (error messages, log lines and extras).

Errors are written by our code and name hosts rather than URLs, but a message can still
quote what a library or a far side said, and a log line can quote a request's URL. Before
a run's error is stored or shown, and before any log line is written
(``project.logs.RedactFilter``), the query string of any URL (with or without its scheme
and host: ``/path?query`` as in a request line), values after ``password=``/``token=``-style
keys, well-known token formats and long opaque strings are cut down to a short prefix.
"""

from __future__ import annotations

import re

_TOKEN_PREFIXES = (
    *("glpat-", "gloas-", "glrt-", "ghp_", "gho_", "ghs_", "github_pat_"),
    *("AKIA", "ASIA", "AIza", "ya29.", "PMAK-", "sk-"),
    *(f"xox{kind}-" for kind in "abprs"),
)

# The characters of a long opaque string (a key, a signature), and how long it must be to be
# masked: the last rule below, and the shortcut (_OPAQUE_RUN) that rules it out.
_OPAQUE = r"A-Za-z0-9+_\-"
_OPAQUE_LENGTH = 40

_RULES: list[tuple[re.Pattern[str], str]] = [
    # A URL's query may carry a signature (an upload URL, say).
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^\s?#]+)\?[^\s]*", re.IGNORECASE), r"\1?…"),
    # A request target without scheme and host ("PUT /bucket/a.tar.gz?X-Amz-Signature=…",
    # "<WSGIRequest: POST '/api/v4/projects/1/export?upload%5Burl%5D=…'>"): its query too.
    (re.compile(r"""((?:^|(?<=[\s"'(<=\[]))/[^\s?#"'<>]*)\?[^\s"'<>]+"""), r"\1?…"),
    (
        re.compile(r"\b(password|passwd|secret|token|api[_-]?key|signature|sig)=([^\s&]+)", re.IGNORECASE),
        r"\1=…",
    ),
    # Token formats of GitLab and the partners whose leaks we verify.
    (re.compile(rf"\b({'|'.join(map(re.escape, _TOKEN_PREFIXES))})[A-Za-z0-9_\-.]{{4,}}"), r"\1…"),
    (re.compile(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)", re.DOTALL), "[PEM block]"),
    # Anything long and opaque (keys, signatures): keep 4 characters to tell them apart.
    # Slashes excluded: a file path in a traceback is not a secret.
    (re.compile(rf"\b([{_OPAQUE}]{{4}})[{_OPAQUE}=]{{{_OPAQUE_LENGTH - 4},}}"), r"\1…"),
]


def _scoped(pattern: re.Pattern[str]) -> str:
    flags = "".join(letter for flag, letter in ((re.IGNORECASE, "i"), (re.DOTALL, "s")) if pattern.flags & flag)
    return f"(?{flags}:{pattern.pattern})" if flags else f"(?:{pattern.pattern})"


# Every rule at once: most text (a log line's message, a job's name) matches none, and one
# search then costs a sixth of the rules' substitutions.
_ANY = re.compile("|".join(_scoped(pattern) for pattern, _ in _RULES))


# What each rule needs: a text with none of these literals, and no run of _OPAQUE_LENGTH
# characters that the long-opaque rule takes ("=" aside, which is a literal here), matches
# no rule. A log line's message and a job's context are mostly such texts, and these two
# searches cost a tenth of one search of every rule (bench/log_line.py).
_NEEDED = ("?", "=", "-----BEGIN", *_TOKEN_PREFIXES)
_NEEDED_ANY = re.compile("|".join(map(re.escape, _NEEDED)))
_OPAQUE_RUN = re.compile(rf"[{_OPAQUE}]{{{_OPAQUE_LENGTH}}}")


def _matches(text: str) -> bool:
    if _NEEDED_ANY.search(text) is None and _OPAQUE_RUN.search(text) is None:
        return False
    return _ANY.search(text) is not None


def redact(text: str) -> str:
    if not _matches(text):
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
