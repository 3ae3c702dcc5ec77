"""Headless Chromium for the playground page: Debian's ``chromium`` and ``chromium-driver``
driven by selenium (``scripts/ci-tools.sh`` installs them; Playwright's own browser
download cannot work offline). Used by the browser tests and ``scripts/ui_screenshot.py``.
"""

from __future__ import annotations

import shutil
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

BINARY_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def _first(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


def missing_reason() -> str | None:
    """Why no browser test can run here, or None when Chromium and its driver are both
    installed."""
    if _first(BINARY_NAMES) is None:
        return "no Chromium on PATH (apt-get install chromium chromium-driver)"
    if _first(DRIVER_NAMES) is None:
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    return None


def start_chromium(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    """A headless Chromium that keeps the console log (read with ``console_errors``)."""
    binary, driver = _first(BINARY_NAMES), _first(DRIVER_NAMES)
    assert binary is not None, missing_reason()
    assert driver is not None, missing_reason()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",  # nothing leaves the machine
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def console_errors(browser: webdriver.Chrome) -> list[dict[str, Any]]:
    """SEVERE console entries since the last call (reading the log empties it)."""
    # selenium leaves get_log unannotated
    entries: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [e for e in entries if e.get("level") == "SEVERE"]
