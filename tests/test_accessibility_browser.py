"""axe-core on every dashboard page (in headless Chromium and Firefox) and on the record page (Chromium), at
desktop and phone width.

axe-core is vendored for the tests only (tests/vendor/axe.min.js, pinned by dashboard/package-lock.json);
every rule it runs by default must pass.
"""
import pytest

from browser_harness import (BROWSERS, DESKTOP, PHONE, axe_violations, by_id, chromium, fake_microphone, launch,
                             needs_chromium, set_viewport, wait_until)
from moodstream.dashboard.feed import FeedConfig
from moodstream.dashboard.server import BackgroundDashboard
from test_dashboard import stream_session
from test_record_browser import enrolment_link, interview_wav, page_state, record, record_stack  # noqa: F401



def assert_no_violations(driver, where):
    found = axe_violations(driver)
    assert not found, (where, found)


@pytest.mark.parametrize("name", BROWSERS)
def test_every_dashboard_page_passes_axe_at_desktop_and_phone_width(name, start_server, tokens):
    from selenium.webdriver.common.by import By

    server = start_server()
    stream_session(server.port, tokens, "axe-visit", "p1", 3, seed=4)
    config = FeedConfig(server=f"127.0.0.1:{server.port}", token=tokens.by_name["reader-p1"], participants=["p1"],
                        health_interval=0.3)
    with BackgroundDashboard(config) as dashboard, launch(name) as browser:
        session = dashboard.session_url("axe-visit")
        browser.get(dashboard.url)
        wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.session-row"), "the session's row")
        participant = browser.find_element(By.CSS_SELECTOR, "tr.session-row td.id a").get_attribute("href")
        pages = {"overview": (dashboard.url, "tr.session-row"), "session": (session, "#chart canvas"),
                 "participant": (participant, "#history-chart canvas"),
                 "missing": (dashboard.url + "s/0123456789abcdef0123", "h1")}
        for size, width in ((DESKTOP, "1280"), (PHONE, "390")):
            set_viewport(browser, size)
            for page, (url, ready) in pages.items():
                browser.get(url)
                wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ready), f"the {page} page")
                wait_until(browser, lambda d: page == "missing" or "ok" in by_id(d, "live-pill").get_attribute("class"),
                           f"the {page} page to go live")
                assert_no_violations(browser, f"{page} at {width} in {name}")


@pytest.mark.parametrize("name", [pytest.param("chromium", marks=needs_chromium)])
def test_the_record_page_passes_axe_before_during_and_after_a_recording(name, redis_url, tmp_path, interview_wav):
    wav, _ = interview_wav
    with record_stack(redis_url, tmp_path) as (server, dashboard, tokens), \
            chromium(*fake_microphone(wav), window=PHONE) as driver:
        driver.get(f"{dashboard.url}record")  # no link: the page says to open the clinician's link
        wait_until(driver, lambda d: by_id(d, "no-link").is_displayed(), "the no-link message")
        assert_no_violations(driver, "record page without a link")
        link = enrolment_link(server, dashboard.url, tokens)
        driver.get("about:blank")  # the link differs only in its fragment: load the page afresh
        record(driver, link, 3.0)
        for size, width in ((PHONE, "390"), (DESKTOP, "1280")):
            set_viewport(driver, size)
            assert_no_violations(driver, f"record page recording at {width}")
        by_id(driver, "stop").click()
        wait_until(driver, lambda d: page_state(d)["state"] != "recording" and page_state(d)["waiting"] == 0,
                   "the recording to finish", timeout=60)
        for size, width in ((DESKTOP, "1280"), (PHONE, "390")):
            set_viewport(driver, size)
            assert_no_violations(driver, f"record page finished at {width}")
