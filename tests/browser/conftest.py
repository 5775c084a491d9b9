"""Shared by the browser tests: a local stack and a headless Chromium per module (the sync
playwright keeps an event loop running: it must not outlive the module, or asyncio tests after
it fail), pages
at a phone's and a desktop's size, screenshots kept as test artifacts, axe-core checks and the
"primary action visible without scrolling" check."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, sync_playwright
from pyzbar.pyzbar import ZBarSymbol, decode

from local.process import RunningStack, local_stack
from tests.helpers import report_stack_output_on_failure

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's hosts, which this network refuses.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The two sizes every state is checked and photographed at (issue 12).
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}
PHONE_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0 Mobile Safari/537.36")
# Kept by `make browser` (git-ignored).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CYRILLIC = re.compile("[\u0400-\u04ff]")
_AXE = Axe()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[RunningStack]:
    with local_stack(time_scale=0.5) as running:
        yield running
        report_stack_output_on_failure(request, running)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        assert chromium.version.split(".")[0] == _debian_chromium_major()
        yield chromium
        chromium.close()


def _debian_chromium_major() -> str:
    output = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=True).stdout
    return output.split()[1].split(".")[0]


def phone_page(browser: Browser, locale: str = "ru-RU") -> Page:
    """A phone: narrow and with a mobile user agent."""
    context = browser.new_context(viewport=PHONE, locale=locale, user_agent=PHONE_UA, is_mobile=True,
                                  has_touch=True)
    return context.new_page()


def desktop_page(browser: Browser, locale: str = "ru-RU") -> Page:
    return browser.new_context(viewport=DESKTOP, locale=locale).new_page()


def watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return errors


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def decode_qr(qr: Locator) -> str:
    """The QR *from a screenshot* of the page, as a phone's camera would read it."""
    png = qr.screenshot()
    # QR codes only: zbar otherwise now and then also "finds" a 1-D barcode in the QR's modules.
    results = decode(Image.open(io.BytesIO(png)), symbols=[ZBarSymbol.QRCODE])
    assert len(results) == 1, "exactly one QR code must be readable on the page"
    return results[0].data.decode("utf-8")


def assert_primary_visible(page: Page) -> None:
    """The state's one primary action is on screen without scrolling."""
    primary = page.locator("[data-primary]")
    assert primary.count() == 1, "exactly one primary action"
    assert primary.is_visible()
    box = primary.bounding_box()
    viewport = page.viewport_size
    assert box is not None and viewport is not None
    assert page.evaluate("window.scrollY") == 0
    assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], (
        f"primary action #{primary.get_attribute('id')} ends at {box['y'] + box['height']:.0f}px, "
        f"below the {viewport['height']}px screen")


def assert_accessible(page: Page) -> None:
    """axe-core: no serious or critical violation."""
    results = _AXE.run(page)
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    assert bad == [], results.generate_report()


def visible_text(page: Page) -> str:
    return str(page.locator("body").inner_text())
