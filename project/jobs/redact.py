"""Masking what looks like a secret in free text: the toolkit's name for
``project.redact.redact``, which the log filter of the whole site uses too."""

from __future__ import annotations

from project.redact import redact

__all__ = ["redact"]
