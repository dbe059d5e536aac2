"""The product works with no network access: no CDN, web font or remote script anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import drf_spectacular
import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import Client

ROOT = Path(settings.BASE_DIR)
PRODUCT = ("project", "exports", "catalog", "secret_detection")

#: An absolute or protocol-relative URL, with its host.
URL = re.compile(r"""(?:\bhttps?:)?(?<![\w/])//([A-Za-z0-9][\w.-]*)""")
HTTP_URL = re.compile(r"\bhttps?://[^\s\"'<>)]+")
CDN_HOST = re.compile(r"googleapis|gstatic|cdn\.|unpkg|jsdelivr|cloudflare", re.IGNORECASE)


def external_urls(html: str, *, own_host: str) -> list[str]:
    """Every URL of the page that names a host other than ``own_host``."""
    found = [match.group(0) for match in HTTP_URL.finditer(html)]
    found += [match.group(0) for match in URL.finditer(html)]
    return sorted({url for url in found if url.split("//", 1)[1].split("/", 1)[0].split(":", 1)[0] != own_host})


def cdn_urls(text: str) -> list[str]:
    return [match.group(0) for match in URL.finditer(text) if CDN_HOST.search(match.group(1))]


def product_assets() -> list[Path]:
    """Every template and static file of the product (not .venv, not the tests)."""
    files = []
    for app in PRODUCT:
        for path in (ROOT / app).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and {"templates", "static"} & set(path.parts):
                files.append(path)
    return sorted(files)


def test_api_docs_page_names_no_other_host(db) -> None:
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Redoc.init(" in html or "<redoc " in html
    assert external_urls(html, own_host="testserver") == []
    assert "fonts.googleapis" not in html
    assert "gstatic" not in html


def test_api_docs_script_is_served_by_our_static_files(db, settings) -> None:
    html = Client().get("/api/docs/").content.decode()
    scripts = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", html)
    assert scripts == [f"/{settings.STATIC_URL.strip('/')}/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"]
    relative = scripts[0].removeprefix(f"/{settings.STATIC_URL.strip('/')}/")
    assert finders.find(relative) is not None  # collectstatic picks it up for production
    # And the web process serves it (WhiteNoise, reading the apps' static files as in development).
    settings.WHITENOISE_USE_FINDERS = True
    settings.WHITENOISE_AUTOREFRESH = True
    response = Client().get(scripts[0])
    assert response.status_code == 200
    assert "javascript" in response["Content-Type"]
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert b"Redoc" in body[:200_000]
    # The schema the page loads is ours too, on the same site.
    assert re.search(r'Redoc\.init\("/api/openapi\.json"', html)
    assert Client().get("/api/openapi.json").status_code == 200


def test_the_scan_finds_the_web_fonts_of_drf_spectacular_own_redoc_page() -> None:
    """The check below would catch what the override removed: drf-spectacular's page
    loads Google Fonts."""
    original = Path(drf_spectacular.__file__).parent / "templates" / "drf_spectacular" / "redoc.html"
    found = cdn_urls(original.read_text())
    assert any("fonts.googleapis.com" in url for url in found)
    assert cdn_urls('<script src="//unpkg.com/x.js"></script> <a href="https://example.com/">') == ["//unpkg.com"]
    assert cdn_urls('<svg xmlns="http://www.w3.org/2000/svg"></svg>') == []


def test_no_template_or_static_file_of_the_product_loads_from_a_cdn_or_font_host() -> None:
    files = product_assets()
    assert ROOT / "project" / "templates" / "drf_spectacular" / "redoc.html" in files
    assert len(files) >= 10  # the walk found the product's templates and static files
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in files
        if (found := cdn_urls(path.read_text(encoding="utf-8", errors="replace")))
    }
    assert offenders == {}


@pytest.mark.parametrize("setting", ["REDOC_DIST", "SWAGGER_UI_DIST", "SWAGGER_UI_FAVICON_HREF"])
def test_api_docs_assets_come_from_the_sidecar_not_a_cdn(setting) -> None:
    assert "drf_spectacular_sidecar" in settings.INSTALLED_APPS
    assert settings.SPECTACULAR_SETTINGS[setting] == "SIDECAR"
