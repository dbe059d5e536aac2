"""The import's errors: what the user sees as ``import_error``."""

from __future__ import annotations

from project.errors import PermanentError, RetryableError, ValidationFailed


class ImportArchiveInvalid(PermanentError):
    """The archive is refused before anything is written (unsafe, too large, malformed,
    wrong version). Retrying the same file would fail the same way."""

    code = "invalid_archive"
    http_status = 422


class ImportCancelled(PermanentError):
    code = "import_cancelled"

    def default_message(self) -> str:
        return "The import was stopped."


class NamespaceNotFound(PermanentError):
    code = "namespace_not_found"
    http_status = 404

    def default_message(self) -> str:
        return "404 Namespace Not Found"


class ImportRequestInvalid(ValidationFailed):
    code = "invalid_import"


class ImportStorageError(RetryableError):
    """Our disk, not the archive: out of space, a missing upload directory. Retried."""

    code = "storage_error"
