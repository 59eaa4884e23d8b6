"""The record page in headless Firefox (firefox-esr, driven over WebDriver BiDi), as Chromium runs it in
test_record_browser.py: Redis + scoring server (gRPC-web) + dashboard serving /record.

Firefox's fake microphone plays a tone, not a file, so this checks what holds whatever the microphone hears:
the page opens from the enrolment link, its service worker takes over, it records and hears audio, and
"Stop and finish" ends with every part received and no problem shown, with the page inside the phone's
width. Headless Firefox records only through a sound server: the harness starts a private PulseAudio with a
null sink. The session view on the dashboard runs in Firefox in test_dashboard_print_browser.py.
"""
from browser_harness import PHONE, assert_fits, firefox, needs_firefox_audio, set_viewport
from moodstream.wire import SAMPLE_RATE
from test_record_browser import enrolment_link, page_state, record, record_stack, wait_until_everything_is_acknowledged

pytestmark = needs_firefox_audio

HEARD_SECONDS = 3.0


def test_the_record_page_records_and_finishes_in_firefox(redis_url, tmp_path):
    with record_stack(redis_url, tmp_path) as (server, dashboard, tokens), \
            firefox(window=PHONE, audio=True) as driver:
        set_viewport(driver, PHONE)
        during = record(driver, enrolment_link(server, dashboard.url, tokens), HEARD_SECONDS)
        assert during["problem"] == "" and during["heardSamples"] >= HEARD_SECONDS * SAMPLE_RATE, during
        assert_fits(driver, "record page in Firefox, phone")
        driver.find_element("id", "stop").click()
        wait_until_everything_is_acknowledged(driver, "the outbox to empty after Stop")
        assert page_state(driver)["problem"] == ""
