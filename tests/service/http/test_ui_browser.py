"""The playground page in a real headless Chromium against a real ``fashion-florence serve``
(the shipped demo model, API keys on) on loopback: real photos from the validation split,
a batch, corrupt files, a refused URL, the key prompt and the tag slider. The queue_full
retry runs against a live uvicorn with a slow fake model, where a full queue can be held.

Every assertion on what is rendered is checked against what the API itself answers for the
same bytes; every test ends with no console error other than the HTTP errors it caused.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver import Chrome as WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from model_store.synthetic import render_garment, sample_spec
from tests.browser import console_errors, missing_reason, start_chromium
from tests.fakes import FakeBackend
from tests.live import BLUE, jpeg, live_service, settings
from tests.served import spawn_serve, stop_serve, wait_ready

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
]

VALIDATION = (
    Path(__file__).resolve().parents[4] / "shared" / "data" / "clothing-small" / "validation"
)
KEY = "ui-test-key"
START_TIMEOUT_S = 90.0
WAIT_S = 20.0


def _photos(*classes: str) -> list[Path]:
    if not VALIDATION.is_dir():
        pytest.skip(f"the real photos are not at {VALIDATION}")
    return [sorted((VALIDATION / name).glob("*.jpg"))[0] for name in classes]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    process, url = spawn_serve({"FF_LOG_LEVEL": "warning", "FF_API_KEYS": KEY})
    try:
        with httpx.Client(base_url=url, timeout=2.0) as client:
            wait_ready(process, client, START_TIMEOUT_S)
        yield url
    finally:
        stop_serve(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def api(base_url: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as client:
        yield client


@pytest.fixture
def page(browser: WebDriver, base_url: str) -> WebDriver:
    """The page loaded with the key already in this tab's sessionStorage."""
    browser.get(base_url + "/")
    browser.execute_script("sessionStorage.setItem('fashion-florence.api-key', arguments[0])", KEY)
    browser.get(base_url + "/")
    _wait(browser, lambda: _text(browser, "model-name") not in {"loading…", ""})
    console_errors(browser)  # start each test with an empty log
    return browser


def _wait(browser: WebDriver, condition: Callable[[], object], timeout: float = WAIT_S) -> None:
    WebDriverWait(browser, timeout).until(lambda _: condition())


def _text(browser: WebDriver, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def _settled_cards(browser: WebDriver, count: int) -> list[WebElement]:
    """Waits until ``count`` cards exist and none is pending; returns them."""

    def settled() -> bool:
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        pending = browser.find_elements(By.CSS_SELECTOR, ".card.pending")
        return len(cards) == count and not pending

    _wait(browser, settled)
    return list(browser.find_elements(By.CSS_SELECTOR, ".card"))


def _card_for(browser: WebDriver, title: str) -> WebElement:
    for card in browser.find_elements(By.CSS_SELECTOR, ".card"):
        if card.find_element(By.CSS_SELECTOR, ".card-title").text == title:
            return card
    raise AssertionError(f"no card titled {title!r}")


def _upload(browser: WebDriver, paths: list[Path]) -> None:
    browser.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in paths))


def _unexpected_console(browser: WebDriver, allowed_statuses: set[int]) -> list[dict[str, Any]]:
    """Console errors other than the failed-resource lines of the statuses a test caused."""
    unexpected = []
    for entry in console_errors(browser):
        status = re.search(r"status of (\d{3})", str(entry.get("message", "")))
        if entry.get("source") == "network" and status and int(status[1]) in allowed_statuses:
            continue
        unexpected.append(entry)
    return unexpected


def test_the_key_is_asked_for_on_401_and_kept_for_the_tab_only(
    browser: WebDriver, base_url: str, api: httpx.Client
) -> None:
    browser.get(base_url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(base_url + "/")
    form = browser.find_element(By.ID, "key-form")
    _wait(browser, form.is_displayed)
    browser.find_element(By.ID, "key-input").send_keys("wrong-key", Keys.ENTER)
    _wait(browser, lambda: "refused" in _text(browser, "key-message"))
    browser.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
    model = api.get("/v1/model").json()
    _wait(browser, lambda: _text(browser, "model-name") == model["name"])
    assert _text(browser, "model-revision") == model["revision"]
    assert _text(browser, "model-profile") == model["manifest"]["profile"]["name"]
    assert _text(browser, "model-device") == f"{model['device']} · {model['dtype']}"
    assert not form.is_displayed()
    stored = browser.execute_script(
        "return [sessionStorage.getItem('fashion-florence.api-key'), localStorage.length,"
        " document.cookie]"
    )
    assert stored == [KEY, 0, ""]
    assert _unexpected_console(browser, {401}) == []


def test_one_real_photo_renders_what_the_api_answers(page: WebDriver, api: httpx.Client) -> None:
    (photo,) = _photos("shoes")
    expected = api.post("/v1/extract", files={"image": (photo.name, photo.read_bytes())}).json()
    _upload(page, [photo])
    (card,) = _settled_cards(page, 1)
    assert "ok" in (card.get_attribute("class") or "")
    assert (
        card.find_element(By.CSS_SELECTOR, ".category").text.lower()
        == (expected["attributes"]["category"])
    )
    assert expected["attributes"]["primary_color"] in card.text
    assert "inference" in card.text
    assert "total" in card.text
    assert card.find_element(By.CSS_SELECTOR, ".request-id").text  # this request's own id
    image = card.find_element(By.TAG_NAME, "img")
    assert image.get_attribute("alt") == f"Uploaded photo {photo.name}"
    assert page.execute_script("return arguments[0].naturalWidth", image) > 0
    assert _unexpected_console(page, set()) == []


def test_a_batch_of_real_photos_renders_one_card_per_photo_in_order(
    page: WebDriver, api: httpx.Client
) -> None:
    photos = _photos("dress", "pants", "hat", "t-shirt", "outwear")
    files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    expected = api.post("/v1/extract/batch", files=files).json()["results"]
    _upload(page, photos)
    _settled_cards(page, len(photos))
    for photo, answer in zip(photos, expected, strict=True):
        card = _card_for(page, photo.name)
        shown = card.find_element(By.CSS_SELECTOR, ".category").text.lower()
        assert shown == answer["attributes"]["category"], photo
        assert "batch of 5" in card.text
    assert _unexpected_console(page, set()) == []


def test_corrupt_and_unsupported_files_get_error_cards_beside_good_ones(
    page: WebDriver, tmp_path: Path
) -> None:
    (photo,) = _photos("skirt")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:400])
    text = tmp_path / "notes.jpg"
    text.write_bytes(b"not an image at all\n" * 10)
    _upload(page, [photo, truncated, text])  # one batch: the good photo is still answered
    _settled_cards(page, 3)
    assert "ok" in (_card_for(page, photo.name).get_attribute("class") or "")
    for path, code in ((truncated, "invalid_image"), (text, "unsupported_image_format")):
        card = _card_for(page, path.name)
        assert "error" in (card.get_attribute("class") or "")
        assert card.find_element(By.CSS_SELECTOR, ".error-code").text == code
        assert card.find_element(By.CSS_SELECTOR, ".error-detail").text
    _upload(page, [truncated])  # alone: a 422 problem+json answer
    _settled_cards(page, 4)
    assert "HTTP 422" in page.find_elements(By.CSS_SELECTOR, ".card")[0].text
    assert _unexpected_console(page, {422}) == []


def test_a_url_the_service_refuses_shows_its_problem(page: WebDriver, api: httpx.Client) -> None:
    url = "http://127.0.0.1/x.jpg"  # loopback: refused by the fetcher's address rules
    expected = api.post("/v1/extract", json={"url": url})
    page.find_element(By.ID, "url-input").send_keys(url, Keys.ENTER)
    (card,) = _settled_cards(page, 1)
    assert card.find_element(By.CSS_SELECTOR, ".error-code").text == expected.json()["code"]
    assert expected.json()["code"] == "url_fetch_failed"
    assert f"HTTP {expected.status_code}" in card.text
    placeholder = card.find_element(By.CSS_SELECTOR, ".placeholder")
    assert url in (placeholder.get_attribute("aria-label") or "")
    assert _unexpected_console(page, {expected.status_code}) == []


def _drawn_garments(directory: Path, count: int) -> list[Path]:
    """Drawn garments (the kind the demo model writes tags for; it writes none for photos)."""
    paths = []
    for seed in range(count):
        rng = random.Random(seed)
        path = directory / f"drawn-{seed}.png"
        render_garment(sample_spec(rng), rng).save(path)
        paths.append(path)
    return paths


def test_the_slider_refilters_shown_tags_without_sending_anything(
    page: WebDriver, tmp_path: Path
) -> None:
    _upload(page, _drawn_garments(tmp_path, 3))
    _settled_cards(page, 3)
    chips = page.find_elements(By.CSS_SELECTOR, ".chip[data-confidence]")
    confidences = [float(c.get_attribute("data-confidence") or "nan") for c in chips]
    assert chips
    assert all(chip.is_displayed() for chip in chips)
    sent = page.execute_script("return performance.getEntriesByType('resource').length")
    slider = page.find_element(By.ID, "min-tag-confidence")
    slider.send_keys(Keys.END)  # the keyboard moves it: 1.00
    assert _text(page, "min-tag-confidence-value") == "1.00"
    shown = [chip.is_displayed() for chip in chips]
    assert shown == [value >= 1.0 for value in confidences]
    assert "hidden" in page.find_element(By.CSS_SELECTOR, ".hidden-count").text
    slider.send_keys(Keys.HOME)
    assert all(chip.is_displayed() for chip in chips)
    assert page.execute_script("return performance.getEntriesByType('resource').length") == sent
    assert _unexpected_console(page, set()) == []


def test_controls_are_labelled_and_the_file_picker_is_reached_by_keyboard(
    page: WebDriver,
) -> None:
    unlabelled = page.execute_script(
        "return [...document.querySelectorAll('input, button, select, textarea')]"
        ".filter(e => e.type !== 'submit' && e.type !== 'button' && e.labels.length === 0"
        " && !e.getAttribute('aria-label')).map(e => e.id)"
    )
    assert unlabelled == []
    page.find_element(By.TAG_NAME, "body").click()
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    for _ in range(5):
        if page.execute_script("return document.activeElement.id") == "file-input":
            break
        page.switch_to.active_element.send_keys(Keys.TAB)
    assert page.execute_script("return document.activeElement.id") == "file-input"
    assert page.execute_script("return document.activeElement.labels[0].textContent").strip()


def test_queue_full_is_retried_after_retry_after(browser: WebDriver, tmp_path: Path) -> None:
    photo = tmp_path / "blue.jpg"
    photo.write_bytes(BLUE)
    # Capacity 2 (one queued, one in the engine), each batch 1.5 s: two held uploads fill it.
    config = settings(queue_size=1, max_batch_size=1, cache_enabled=False)
    with live_service(config, FakeBackend(batch_delay_s=1.5)) as (url, _app):
        held = [
            threading.Thread(
                target=httpx.post,
                args=(url + "/v1/extract",),
                kwargs={"files": {"image": ("b.jpg", jpeg((20 + i, 30, 200)))}, "timeout": 30},
            )
            for i in range(2)
        ]
        browser.get(url + "/")
        _wait(browser, lambda: _text(browser, "model-name") == "fake")
        console_errors(browser)
        for thread in held:
            thread.start()
        _wait(browser, lambda: _in_flight(url) == 2, timeout=5)
        _upload(browser, [photo])
        state = browser.find_element(By.CSS_SELECTOR, ".card-state")
        _wait(browser, lambda: "queue_full" in state.text, timeout=5)
        waited_from = time.monotonic()
        retry_after = float(re.findall(r"in (\d+(?:\.\d+)?) s", state.text)[0])
        (card,) = _settled_cards(browser, 1)
        assert time.monotonic() - waited_from >= retry_after - 0.25
        assert "ok" in (card.get_attribute("class") or "")
        assert card.find_element(By.CSS_SELECTOR, ".category").text
        for thread in held:
            thread.join(timeout=10)
        assert _unexpected_console(browser, {503}) == []


def _in_flight(url: str) -> int:
    text = httpx.get(url + "/metrics").text
    found = re.search(r"^ff_in_flight_requests (\S+)$", text, re.MULTILINE)
    return int(float(found[1])) if found else -1
