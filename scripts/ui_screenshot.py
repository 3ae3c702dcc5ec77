"""Screenshot of the playground page for the README.

    PYTHONPATH=.:clients/python .venv/bin/python -m scripts.ui_screenshot --out docs/img/playground.png

Starts ``fashion-florence serve`` (the shipped demo model) on loopback, opens the page in
headless Chromium (Debian's chromium + chromium-driver, as the browser tests use), sends a
batch of real validation photos, one drawn garment (the demo model writes tags only for
those) and a URL the service refuses, and writes the PNG.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from model_store.synthetic import render_garment, sample_spec
from tests.browser import missing_reason, start_chromium
from tests.served import spawn_serve, stop_serve, wait_ready

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "clothing-small" / "validation"
CLASSES = ("dress", "shoes", "outwear", "hat")


def _inputs(photos: Path, scratch: Path) -> tuple[list[Path], Path]:
    real = [sorted((photos / name).glob("*.jpg"))[1] for name in CLASSES]
    rng = random.Random(5)
    drawn = scratch / "drawn-garment.png"
    render_garment(sample_spec(rng), rng, size=256).save(drawn)
    return real, drawn


def take(out: Path, photos: Path, width: int, height: int) -> None:
    reason = missing_reason()
    if reason is not None:
        raise SystemExit(reason)
    process, url = spawn_serve({"FF_LOG_LEVEL": "warning"})
    browser = None
    try:
        with httpx.Client(base_url=url, timeout=2.0) as client:
            wait_ready(process, client, 90.0)
        browser = start_chromium(width, height)
        wait = WebDriverWait(browser, 30)
        browser.get(url + "/")
        wait.until(lambda b: b.find_element(By.ID, "model-name").text != "loading…")
        with tempfile.TemporaryDirectory() as scratch:
            real, drawn = _inputs(photos, Path(scratch))
            browser.find_element(By.ID, "url-input").send_keys("http://127.0.0.1/x.jpg", Keys.ENTER)
            files = "\n".join(str(p) for p in [*real, drawn])
            browser.find_element(By.ID, "file-input").send_keys(files)
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".card")) == len(real) + 2)
            wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, ".card.pending"))
        # The whole page in one picture: the window as tall as the page.
        browser.execute_script("document.activeElement.blur()")
        for _ in range(2):  # the window's frame takes some of its height: measure again
            inner = browser.execute_script("return window.innerHeight")
            page_height = browser.execute_script("return document.documentElement.scrollHeight")
            outer = browser.get_window_size()["height"]
            browser.set_window_size(width, max(height, outer + int(page_height) - int(inner)))
        time.sleep(0.3)  # the last images finish painting
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(out))
    finally:
        if browser is not None:
            browser.quit()
        stop_serve(process)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "playground.png")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="a clothing-small split")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900, help="at least; grows to the page")
    args = parser.parse_args()
    take(args.out, args.photos, args.width, args.height)


if __name__ == "__main__":
    main()
