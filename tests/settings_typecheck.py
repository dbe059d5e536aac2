"""The settings mypy's Django plugin reads: the test settings, without a database.

The plugin imports the settings to learn the models and settings types; it never connects.
Importing ``tests.settings`` without ``DATABASE_URL`` starts the embedded PostgreSQL, and
mypy exits without running ``atexit`` hooks, so ``make lint`` on a fresh machine left a
server running. A placeholder URL keeps that from starting (a URL that is set still wins).
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://typecheck@127.0.0.1:1/typecheck")

from tests.settings import *  # noqa: F403
