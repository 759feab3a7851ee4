"""Helpers of the web tests: headless Chromium through Playwright, signed-in pages, screenshots.

The server side is the API tests' world (``tests/api/apikit.py``: a vault, the
clinical service, a live uvicorn server on 127.0.0.1, every role's user),
imported from there rather than copied. Every browser context refuses any
request that leaves the test server (the pages must work offline, no CDN) and
remembers it, so a test can assert there was none.

A module with a name of its own (``conftest`` modules clash between test folders).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from apikit import (  # the API tests' kit, handed on (see __all__)
    PASSWORD,
    SAMPLES,
    ServerThread,
    World,
    build_world,
    fixed_image_check,
    pydicom_file,
    served_world,
    tiny_model,
)

__all__ = ["PASSWORD", "SAMPLES", "Browsing", "ServerThread", "World", "build_world", "csrf_of",
           "fixed_image_check", "launch_browser", "no_page_scroll", "pydicom_file",
           "screenshot_dir", "served_world", "tiny_model"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"]
LAPTOP = {"width": 1366, "height": 768}
TABLET = {"width": 820, "height": 1180}
SCREENSHOT_LIMIT = 200_000
SCREENSHOTS_ENV = "RADVAULT_WEB_SCREENSHOTS"
"""Set to a folder (e.g. ``docs/screenshots``) to keep the screenshots the tests take."""


def launch_browser() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright; skips when either is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} "
                    "(tools/install_test_services.sh installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; "
                    "never `playwright install`: the tests use Debian's Chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Browsing:
    """Opens signed-in pages on the test server and keeps what they tried to reach."""

    browser: Any
    world: World
    shots: Path
    offsite: list[str] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)

    def page(self, username: str | None = None, *, viewport: dict[str, int] | None = None,
             password: str = PASSWORD, javascript: bool = True) -> Any:
        """A fresh browser context's page, signed in as ``username`` (when given)."""
        context = self.browser.new_context(base_url=self.world.base_url,
                                           viewport=viewport or LAPTOP, accept_downloads=True,
                                           java_script_enabled=javascript)
        context.set_default_timeout(20_000)
        context.route("**/*", self._guard)
        self.contexts.append(context)
        page = context.new_page()
        if username is not None:
            self.sign_in(page, username, password)
        return page

    def sign_in(self, page: Any, username: str, password: str = PASSWORD) -> None:
        """Fill the sign-in form by its labels and submit it."""
        page.goto("/web/login")
        page.get_by_label("User name").fill(username)
        page.get_by_label("Password").fill(password)
        with page.expect_navigation():
            page.get_by_role("button", name="Sign in").click()
        assert "/web/login" not in page.url, page.content()[:500]

    def shoot(self, page: Any, name: str) -> Path:
        """Save a screenshot of the viewport (PNG) and check it stays small."""
        path = self.shots / f"{name}.png"
        shot = Image.open(io.BytesIO(page.screenshot()))
        # 256 adaptive colours: a page reads the same and the file stays small for the docs.
        shot.convert("RGB").quantize(256).save(path, optimize=True)
        assert path.stat().st_size < SCREENSHOT_LIMIT, f"{name}.png is too large"
        return path

    def close(self) -> None:
        for context in self.contexts:
            context.close()
        self.contexts.clear()

    def _guard(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(self.world.base_url + "/"):
            route.continue_()
        else:
            self.offsite.append(url)
            route.abort()


def screenshot_dir(default: Path) -> Path:
    """Where screenshots go: ``$RADVAULT_WEB_SCREENSHOTS`` when set, else ``default``."""
    chosen = os.environ.get(SCREENSHOTS_ENV)
    folder = Path(chosen) if chosen else default
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def csrf_of(page: Any) -> str:
    """The CSRF token of the page's first form."""
    return str(page.locator('input[name="csrf_token"]').first.input_value())


def no_page_scroll(page: Any) -> bool:
    """Whether the page fits its viewport's width (wide tables scroll inside their box)."""
    return bool(page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"))
