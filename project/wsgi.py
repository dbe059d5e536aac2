"""The WSGI application (gunicorn). It starts no database: under ``make run`` it inherits
``DATABASE_URL`` from the launcher (the embedded server's when none is configured); run on
its own, it needs ``DATABASE_URL`` like any process outside the entry points."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

application = get_wsgi_application()
