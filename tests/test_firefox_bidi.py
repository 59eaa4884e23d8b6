"""The Firefox driver the browser tests use (firefox_bidi.py, WebDriver BiDi without geckodriver) answers as
Selenium does: script values both ways (async scripts too, as axe-core runs), elements found or refused with
Selenium's exceptions, real clicks, the viewport, and the page's console errors, so `severe_console` finds
them in Firefox too."""
import math
import urllib.parse

import pytest
from browser_harness import PHONE, axe_violations, firefox, needs_firefox, set_viewport, severe_console, wait_until
from selenium.common.exceptions import JavascriptException, NoSuchElementException

pytestmark = needs_firefox

PAGE = """<!doctype html><title>t</title><p id="words">  two words  </p><img id="unlabelled" src="data:,">
<button id="press" style="margin-top: 3000px">press</button>
<script>
document.getElementById('press').addEventListener('click', (event) => {
  document.body.dataset.pressed = event.isTrusted ? 'trusted' : 'scripted'; });
console.error('made to fail');
setTimeout(() => { throw new Error('uncaught on purpose'); }, 0);
</script>"""


def test_the_firefox_driver_answers_as_selenium_does():
    with firefox(window=PHONE) as driver:
        set_viewport(driver, PHONE)
        driver.get("data:text/html," + urllib.parse.quote(PAGE))
        assert driver.execute_script("return [window.innerWidth, window.innerHeight]") == list(PHONE)
        sent = [1, 2.5, "s", None, True, [1, "a"], {"k": [None]}]
        assert driver.execute_script("return Array.from(arguments)", *sent) == sent
        assert math.isnan(driver.execute_script("return NaN"))
        assert driver.execute_script("return undefined") is None

        words = driver.find_element("id", "words")
        assert words.text == "two words"
        assert driver.execute_script("return arguments[0].id", words) == "words"
        with pytest.raises(NoSuchElementException):
            driver.find_element("css selector", "#absent")
        with pytest.raises(JavascriptException, match="nope"):
            driver.execute_script("throw new Error('nope')")

        driver.find_element("id", "press").click()  # below the fold: scrolled into view, then a real click
        assert driver.execute_script("return document.body.dataset.pressed") == "trusted"

        # axe-core runs through execute_async_script and finds the image without a text alternative.
        assert "image-alt" in {violation["id"] for violation in axe_violations(driver)}

        wait_until(driver, lambda d: len(severe_console(d)) >= 2, "both console errors")
        messages = " | ".join(entry["message"] for entry in severe_console(driver))
        assert "made to fail" in messages and "uncaught on purpose" in messages, messages
