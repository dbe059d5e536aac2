"""Browser tests: Playwright driving Debian's Chromium against a live server and a real
django-q2 cluster.

``make test`` installs Chromium when it is missing and the machine allows it. Without it
(or without Playwright) these tests are skipped, with the reason. Set ``CHROMIUM`` to use
another binary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from tests.support.cluster import ClusterProcess, running_cluster

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Chromium without a sandbox (CI runs as root) and without its background calls to
# Google's servers, which a closed network refuses.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
VIEWPORT = {"width": 1400, "height": 900}

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the requirements pin it
    pytest.skip("playwright is not installed (pip install -r requirements.txt)", allow_module_level=True)

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's chromium package (make test does when it runs as root) "
        "or set CHROMIUM",
        allow_module_level=True,
    )

pytestmark = pytest.mark.browser

# Playwright's synchronous API keeps an asyncio loop on this thread; Django would then
# refuse the tests' own (synchronous) queries. They do not share that loop.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    opened = context.new_page()
    yield opened
    context.close()


@dataclass
class BrowserCluster:
    process: ClusterProcess
    media: Path
    pause: Path

    def hold(self, project) -> None:
        """Make the next export of ``project`` stop half-way (first attempt only)."""
        (self.pause / str(project.pk)).touch()

    def release(self, project) -> None:
        (self.pause / str(project.pk)).unlink(missing_ok=True)

    def held(self, project) -> bool:
        return (self.pause / f"{project.pk}.paused").exists()


@pytest.fixture(scope="module")
def cluster_for_browser(django_db_setup, django_db_blocker, live_server, tmp_path_factory) -> Iterator[BrowserCluster]:
    """A cluster of the module's own, with the export pause hook, local uploads allowed,
    slow SDRS retries (so "retry in N s" can be seen) and the live server as its
    callback URL; the live server (this process) enqueues to it."""
    media = tmp_path_factory.mktemp("browser-media")
    pause = tmp_path_factory.mktemp("browser-pause")
    env = {
        "MEDIA_ROOT": str(media),
        "JOBS_EXTRA_MODULES": "tests.support.jobs,tests.support.export_hooks",
        "EXPORT_TEST_PAUSE_DIR": str(pause),
        "EXPORT_SLOT_WAIT": "0.2",
        "ALLOW_LOCAL_REQUESTS": "1",
        "SDRS_RETRY_DELAYS": "40,80,160",
        "EXTERNAL_URL": live_server.url,
        "Q_SCHEDULER": "0",
    }
    with (
        override_settings(MEDIA_ROOT=media, ALLOW_LOCAL_REQUESTS=True, EXTERNAL_URL=live_server.url),
        django_db_blocker.unblock(),
        running_cluster(broker=settings.JOBS_BROKER, workers=3, env=env) as process,
    ):
        yield BrowserCluster(process=process, media=media, pause=pause)


@pytest.fixture
def sdrs_for_browser(db) -> Iterator[object]:
    """A local SDRS, configured in the application settings; it accepts requests and never
    calls back (the tests look at the runs, not the callback)."""
    import importlib

    from django.apps import apps

    from project.models import ApplicationSetting
    from tests.secret_detection.conftest import CALLBACK_SECRET
    from tests.support.sdrs import SdrsServer, keypair

    # Transactional tests flush every table, the seeded partner types included.
    importlib.import_module("secret_detection.migrations.0002_partner_token_types").seed(apps, None)
    private, public = keypair()
    server = SdrsServer(public_key=public, callback_secret=CALLBACK_SECRET).start()
    server.failures.drop_callbacks = True
    row = ApplicationSetting.current()
    row.sdrs_enabled, row.sdrs_url, row.sdrs_timeout = True, server.url, 2.0
    row.sdrs_jwt_signing_key, row.sdrs_callback_secret = private, CALLBACK_SECRET
    row.save()
    yield server
    server.close()


@pytest.fixture
def leaked_aws_token(db):
    """``leaked_aws_token(project)``: import a report with one AWS key; the cluster routes it."""
    import json

    from secret_detection import services
    from secret_detection.models import Finding
    from tests.secret_detection.conftest import SAMPLE, report_with

    def make(project):
        report = report_with([("AWS", "AKIAIOSFODNN7EXAMPLE")], base=json.loads(SAMPLE.read_text()), prefix="leak")
        services.report_import(project=project, user=project.creator, report=report)
        return Finding.objects.filter(project=project, file_path__startswith="leak/").get()

    return make
