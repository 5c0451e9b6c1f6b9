"""The prompt lab in a real browser: Debian's headless Chromium driven by playwright."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from zsfinercam.core.bases import get_base
from zsfinercam.options import DEFAULT_BASE

CHROMIUM = "/usr/bin/chromium"
BIRD = Path(__file__).resolve().parents[1] / "examples" / "bird.png"

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"no {CHROMIUM} (apt-get install chromium; .ci/run does)")


@pytest.fixture
def page_url(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    from zsfinercam.lab.app import build_app
    from zsfinercam.localizer import Localizer

    demo = build_app(Localizer.from_pretrained("toy", cache_dir=None), [BIRD])
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def open_page(playwright, url: str, width: int = 1400, height: int = 1300):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url)
    return browser, page


def locate_in_page(page, concepts: str, timeout_ms: float = 60_000) -> None:
    """Type the concepts, press Locate, wait until the status reports them."""
    page.locator("#concepts textarea").fill(concepts)
    page.locator("#locate").click()
    count = len([c for c in concepts.splitlines() if c.strip()])
    page.locator("#status").get_by_text(f"{count} concept(s) in").wait_for(timeout=timeout_ms)


def test_page_uploads_types_and_shows_maps(page_url, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = open_page(p, page_url)
        try:
            page.locator("#image input[type=file]").set_input_files(str(BIRD))
            page.locator("#image img").first.wait_for(timeout=30_000)
            locate_in_page(page, "bird\nred tail")
            assert "the trunk ran" in page.locator("#status").inner_text()
            maps = page.locator("#maps img")
            maps.nth(5).wait_for(timeout=30_000)
            assert maps.count() == 6  # two concepts x (the base alone, Finer-CAM, difference)
            assert all(maps.nth(i).evaluate("im => im.complete && im.naturalWidth > 0") for i in range(6))
            text = page.locator("body").inner_text()
            short = get_base(DEFAULT_BASE).short  # the difference row names the default base
            assert "bird · Finer-CAM" in text and f"red tail · Finer - {short}" in text
            locate_in_page(page, "blue head\ngreen tail\nred tail")  # new prompts, cached image
            assert "the trunk did not run" in page.locator("#status").inner_text()
            locate_in_page(page, "bird\nred tail")
            page.wait_for_timeout(2000)  # gradio fades outputs until the whole event has rendered
            shot = tmp_path / "lab.png"
            page.screenshot(path=str(shot))  # the viewport: inputs, maps, scores, references
            assert shot.stat().st_size > 10_000
            if os.environ.get("ZSFINERCAM_LAB_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["ZSFINERCAM_LAB_SCREENSHOT"])
        finally:
            browser.close()


def test_opening_the_options_keeps_finer_cam(page_url):
    """The options show the alpha in use (1): opening them sends no accidental 0 (the base alone)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = open_page(p, page_url)
        try:
            page.locator("#image input[type=file]").set_input_files(str(BIRD))
            page.locator("#image img").first.wait_for(timeout=30_000)
            page.get_by_text("options").first.click()
            assert page.locator("#alpha input").input_value() == "1"
            page.locator("#references textarea").fill("blue head")
            locate_in_page(page, "red tail")
            assert "red tail vs blue head" in page.locator("body").inner_text()
        finally:
            browser.close()
