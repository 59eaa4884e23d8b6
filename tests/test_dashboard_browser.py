"""The dashboard in a real headless Chromium: Redis + scoring server + dashboard, a session streamed live.

Needs Debian's `chromium` and `chromium-driver` (./run test installs them when it runs as root) and
Selenium. Screenshots are kept under artifacts/ (git-ignored).
"""
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard
from server_harness import chunk, end, header, make_chunks, running_server, stream, stub_for, tiny_model, write_tokens

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and os.path.exists(p)), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver")
                     if p and os.path.exists(p)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--lang=en-US"]
GAP_SECONDS = 2.0

try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

pytestmark = [
    pytest.mark.skipif(selenium is None, reason="selenium is not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="headless Chromium is not installed: apt-get install chromium chromium-driver "
                              "(./run test installs them when it runs as root with apt-get)"),
]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver or browser
    profile = tempfile.mkdtemp(prefix="moodstream-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}", "--window-size=1200,1000"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver, condition, what, timeout=20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def chart_points(driver) -> int:
    return int(driver.find_element("id", "chart").get_attribute("data-points"))


def no_horizontal_overflow(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_a_live_session_appears_and_its_chart_grows_in_the_browser(browser, redis_url, tmp_path):
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(exist_ok=True)
    tokens = write_tokens(tmp_path)
    pcm = make_chunks(5, seed=11)
    release = [threading.Event() for _ in range(3)]
    streamed, errors = [], []

    def requests():
        yield header("clinic-visit-1", "p1", device_id="kiosk-3")
        yield chunk(0, pcm[0])
        yield chunk(1, pcm[1])
        release[0].wait(30)                 # the test has seen two points in the browser
        yield chunk(2, pcm[2])
        release[1].wait(30)                 # ... and the third arrive live
        time.sleep(GAP_SECONDS + 1.0)        # the agent goes quiet: a gap in the chart
        yield chunk(3, pcm[3])
        yield chunk(4, pcm[4])
        yield end(4)

    def agent(port):
        try:
            with stub_for(port) as stub:
                streamed.extend(stream(stub, requests(), tokens.metadata("agent")))
        except Exception as error:  # surfaced below
            errors.append(error)

    with running_server(tiny_model(seed=2), redis_url, tokens) as server:
        config = FeedConfig(server=f"127.0.0.1:{server.port}", token=tokens.by_name["reader-p1"],
                            participants=["p1"], gap_seconds=GAP_SECONDS, health_interval=0.5)
        with BackgroundDashboard(config) as dashboard:
            browser.get(dashboard.url)
            wait_until(browser, lambda d: "following" in d.find_element(By.ID, "participants").text,
                       "the participant to be followed")
            assert "not a diagnosis" in browser.find_element(By.CLASS_NAME, "notice").text
            thread = threading.Thread(target=agent, args=(server.port,), daemon=True)
            thread.start()

            # the session shows up on the list, live
            row = wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.session-row"),
                             "the session row")[0]
            wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "tr.session-row .segments").text == "2",
                       "two segments on the list")
            row = browser.find_element(By.CSS_SELECTOR, "tr.session-row")
            assert "clinic-visit-1" in row.text and "kiosk-3" in row.text and "live" in row.text
            assert "threshold" in row.text
            browser.save_screenshot(str(ARTIFACTS / "dashboard-overview.png"))

            # the session view: its chart gains points while the agent streams
            row.find_element(By.CSS_SELECTOR, "a.session-link").click()
            wait_until(browser, lambda d: chart_points(d) == 2, "two points on the chart")
            assert "/s/" in browser.current_url and "clinic-visit-1" not in browser.current_url
            assert "p1" not in browser.current_url.split("/s/")[1]
            assert browser.find_elements(By.CSS_SELECTOR, "#chart canvas")
            release[0].set()
            wait_until(browser, lambda d: chart_points(d) == 3, "a third point, live")
            release[1].set()
            wait_until(browser, lambda d: chart_points(d) == 5, "five points", timeout=30)
            chart = browser.find_element(By.ID, "chart")
            assert chart.get_attribute("data-gaps") == "1"
            assert browser.find_element(By.ID, "tile-segments").text == "5"
            assert browser.find_element(By.ID, "tile-speech").text == f"{35 / 60:.1f} min"
            assert browser.find_element(By.ID, "tile-model").text == server.model_version
            assert "decision threshold" in chart.text  # the legend names the threshold series
            assert len(browser.find_elements(By.CSS_SELECTOR, "#points tbody tr")) == 5
            browser.save_screenshot(str(ARTIFACTS / "dashboard-session.png"))

            # phone width: no sideways scrolling, the notice and the chart fit the screen
            browser.set_window_size(390, 844)
            browser.refresh()
            wait_until(browser, lambda d: chart_points(d) == 5, "the chart after reload")
            wait_until(browser, no_horizontal_overflow, "no horizontal overflow at phone width", timeout=5)
            width = browser.execute_script("return window.innerWidth")
            assert width <= 400
            assert browser.find_element(By.CLASS_NAME, "notice").is_displayed()
            canvas = browser.find_element(By.CSS_SELECTOR, "#chart canvas")
            assert 200 <= canvas.rect["width"] <= width
            browser.save_screenshot(str(ARTIFACTS / "dashboard-phone.png"))

            # the participant's history across days
            browser.find_element(By.ID, "participant-link").click()
            wait_until(browser, lambda d: d.find_element(By.ID, "history-chart").get_attribute("data-points") == "1",
                       "the participant's session history")
            assert "clinic-visit-1" in browser.find_element(By.ID, "history").text
            assert no_horizontal_overflow(browser)

            console = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
            assert not console, console  # no script errors, no blocked (non-local) resources
        thread.join(30)
    assert not errors, errors
    assert [r.ack.seq for r in streamed if r.WhichOneof("message") == "ack"] == [0, 1, 2, 3, 4]
