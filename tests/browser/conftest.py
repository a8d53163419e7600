"""Fixtures of the browser tests: one Playwright driver and one Chromium per package, axe-core from npm, a page for
the module against the scripted socket."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.browser.pages import AXE_DIR, AXE_JS, AXE_VERSION, CHROMIUM, CHROMIUM_ARGS
from tests.browser.scripted import module_page


# Package scope, not session: Playwright's sync API keeps an event loop running in the main thread while it is open,
# and every asyncio test collected after this package would then fail to start its own loop.
@pytest.fixture(scope="package")
def playwright_driver() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: `make install-system` installs Debian's chromium")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    b = playwright_driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield b
    b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page for the module against the scripted socket (tests/browser/scripted.py)."""
    p = module_page(browser)
    yield p
    p.context.close()


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE_JS.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("axe-core is missing and npm is not installed: run `make browser-deps`")
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(AXE_DIR),
                "--no-save",
                "--no-package-lock",
                "--no-audit",
                "--no-fund",
                f"axe-core@{AXE_VERSION}",
            ],
            check=True,
            timeout=180,
        )
    return AXE_JS.read_text()
