"""The playground page at / in a real headless Chromium (system package `chromium` with
`chromium-driver`): type a prompt, click Send, read the streamed answer from the page."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")

from live_server import LiveServer  # noqa: E402
from tiny import SENTENCES  # noqa: E402

from seqport.serving import ServeOptions, build_app  # noqa: E402

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("the playground test needs Chromium: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()


def test_playground_streams_the_greedy_translation(browser, model):
    from selenium.webdriver.support.ui import WebDriverWait

    result = model.generate([SENTENCES[0]], max_new_tokens=20)[0]
    expected = result.text
    with LiveServer(build_app(model, ServeOptions(model_name="tiny"))) as live:
        browser.get(live.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element("id", "send").get_attribute("data-ready") == "true")
        tasks = [o.get_attribute("value") for o in browser.find_elements("css selector", "#task option")]
        assert tasks == ["translation", "completion"]
        field = browser.find_element("id", "max-tokens")
        field.clear()
        field.send_keys("20")
        browser.find_element("id", "prompt").send_keys(SENTENCES[0])
        browser.find_element("id", "send").click()
        wait.until(lambda b: b.find_element("id", "output").get_attribute("data-done") == "true")
        assert browser.find_element("id", "error").text == ""
        assert browser.find_element("id", "output").get_attribute("textContent") == expected
        stats = browser.find_element("id", "stats").text
        assert stats.startswith(f"{len(result.ids)} tokens in") and "tokens/s" in stats, stats
