"""The Content-Security-Policy as a browser enforces it (defect 4): Chromium signs in through
the admin's form and opens the admin, the job console and the API docs; none of them may
have anything refused by the policy, and their scripts must run."""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from project.middleware import DEFAULT_CSP
from project.models import User

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the requirements pin it
    pytest.skip("playwright is not installed", allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

# no_broker: committed rows are seen by any session cluster another test left running.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.usefixtures("no_broker")]

PAGES = [
    "/admin/",
    "/admin/jobs/",
    "/admin/project/project/",
    "/admin/project/user/add/",
    "/admin/project/accesstoken/",
    "/admin/exports/projectexportjob/",
]


def _browse(base: str) -> dict:
    """Sign in and open every page; returns what was seen and refused. Runs in a thread of
    its own: Playwright's sync API keeps an asyncio loop on its thread, and the browser tests
    (tests/browser) may hold one on the main thread for the whole session."""
    seen: dict = {"violations": {}, "console": [], "checks": {}}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            context = browser.new_context()
            context.set_default_timeout(30_000)
            page = context.new_page()
            page.on(
                "console",
                lambda message: (
                    seen["console"].append(message.text) if "Content Security Policy" in message.text else None
                ),
            )
            page.add_init_script(
                "document.addEventListener('securitypolicyviolation', e => "
                "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            seen["login_policy"] = context.request.get(f"{base}/admin/login/").headers["content-security-policy"]
            page.goto(f"{base}/admin/login/?next=/admin/")
            page.fill("#id_username", "root")
            page.fill("#id_password", "pw")
            page.click("input[type=submit]")
            page.wait_for_url(re.compile(r".*/admin/$"))
            for path in PAGES:
                response = page.goto(f"{base}{path}")
                page.wait_for_load_state("load")
                seen["violations"][path] = (response.status, page.evaluate("window.__csp || []"))
            page.goto(f"{base}/admin/jobs/")
            seen["checks"]["console_script"] = page.locator("script[src*='console.js']").count()
            page.goto(f"{base}/admin/project/user/add/")
            seen["checks"]["admin_js"] = page.evaluate("typeof window.django")
            page.goto(f"{base}/api/docs/")
            page.wait_for_selector(".redoc-wrap", timeout=30_000)
            seen["docs"] = page.evaluate("window.__csp || []")
        finally:
            browser.close()
    return seen


def test_the_admin_console_and_docs_work_under_the_policy(live_server) -> None:
    User.objects.create_superuser("root", "root@example.com", "pw")
    with ThreadPoolExecutor(max_workers=1) as pool:
        # No deadline of its own: each of the browser's steps has its timeout.
        seen = pool.submit(_browse, live_server.url).result()
    assert seen["login_policy"] == DEFAULT_CSP
    for path, (status, refused) in seen["violations"].items():
        assert status == 200, path
        assert refused == [], path
    # The console's own script is loaded, and the admin's scripts ran (they define django).
    assert seen["checks"] == {"console_script": 1, "admin_js": "object"}
    # Only Redoc's "powered by" logo from its CDN is refused: the policy keeps the docs
    # offline, as the product is. Its scripts, styles and worker all run.
    assert seen["docs"] in ([], ["img-src https://cdn.redoc.ly/redoc/logo-mini.svg"]), seen["docs"]
    assert [text for text in seen["console"] if "cdn.redoc.ly" not in text] == []
