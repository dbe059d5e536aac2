"""Settings for the test suite: the site's settings with test-only defaults.

Values are set as environment defaults before the site's settings read them, so an
explicit environment (for example DATABASE_URL or REDIS_URL in CI) still wins. The job
clusters the end-to-end tests start use this module too.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("ENCRYPTION_KEY", "7tRZ0UQhHM2nb9QZx8cGqX5mQvV8bS2qkEo8sMw9F2Y=")
os.environ.setdefault("LOG_FORMAT", "text")
os.environ.setdefault("EXTERNAL_URL", "http://testserver")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("JOBS_EXTRA_MODULES", "tests.support.jobs")
# A queue name of this test session's own, so concurrent sessions sharing a Redis never
# take each other's messages. Clusters started by the tests inherit it.
os.environ.setdefault("Q_NAME", f"test{os.getpid()}")
# Under pytest-xdist each worker is a session of its own (with its own test database), so it
# gets a queue of its own too: the workers inherit the controller's environment.
_xdist_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _xdist_worker and not os.environ["Q_NAME"].endswith(f"-{_xdist_worker}"):
    os.environ["Q_NAME"] += f"-{_xdist_worker}"

# Short thresholds so recovery happens within seconds instead of minutes, in this
# process and in the clusters the tests start (they inherit the environment).
for _name, _value in {
    "JOBS_HEARTBEAT_INTERVAL": "0.5",
    "JOBS_LOST_AFTER": "3",
    "EXPORT_STUCK_AFTER": "3",
    "Q_RETRY": "8",
    "Q_TIMEOUT": "6",
    "Q_POLL": "0.05",
}.items():
    os.environ.setdefault(_name, _value)

# The test run is an entry point like manage.py: without DATABASE_URL it starts (or attaches
# to) the embedded PostgreSQL and exports its URL for the clusters and commands the tests
# start. It has to happen here, not in tests/conftest.py: pytest-django reads the settings
# before pytest imports any conftest.
from project import embedded_db  # noqa: E402

embedded_db.ensure_database_url()

from project.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; never used for real users
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405

INSTALLED_APPS = [*INSTALLED_APPS, "tests.support"]  # noqa: F405
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 - whitenoise warns about a missing root
