from __future__ import annotations

from typing import Any

from django.db import models

from project import crypto


class EncryptedTextField(models.TextField):
    """Text stored encrypted (Fernet). Empty strings stay empty so blank means unset."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value in (None, ""):
            return value
        return crypto.decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return crypto.encrypt(value)
