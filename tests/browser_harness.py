"""Real headless browsers for the browser tests: one way to start them, wait on a page and check its layout.

Chromium needs Debian's `chromium` and `chromium-driver` (./run test installs them when it runs as root) and
Selenium; modules that use only it set `pytestmark = browser_harness.needs_chromium`, which skips them with
the reason when either is missing. Firefox needs only Debian's `firefox-esr` (./run test installs it too): the
harness drives it over WebDriver BiDi, which Firefox serves itself (firefox_bidi.py), so no geckodriver is
involved. A test that runs in each browser takes `launch(name, ...)` with
`@pytest.mark.parametrize("name", BROWSERS)`. Every driver gets a
profile of its own (no IndexedDB, service worker or storage carried from one test to the next), removed when
it quits. Screenshots go under artifacts/ (git-ignored).
"""
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and os.path.exists(p)), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver")
                     if p and os.path.exists(p)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--lang=en-US"]
# Chromium's fake microphone, playing `wav` once; the page needs no click to start audio.
FAKE_MICROPHONE_FLAGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                         "--autoplay-policy=no-user-gesture-required"]
DESKTOP, PHONE = (1280, 900), (390, 844)
FIREFOX = next((p for p in (shutil.which("firefox-esr"), shutil.which("firefox")) if p), None)
# Headless Firefox plays and records audio only through a sound server: without one its AudioContext stays
# suspended and the record page hears nothing. Tests that record start a private PulseAudio with a null sink.
PULSEAUDIO = shutil.which("pulseaudio")
# Firefox's fake media: a generated tone for the microphone (it cannot play a file), granted without asking.
FIREFOX_PREFS = {"media.navigator.streams.fake": True, "media.navigator.permission.disabled": True,
                 "media.autoplay.default": 0, "intl.accept_languages": "en-US", "browser.shell.checkDefaultBrowser": False,
                 "app.update.disabledForTesting": True, "datareporting.policy.dataSubmissionEnabled": False}

try:
    import selenium
except ImportError:
    selenium = None

needs_chromium = [
    pytest.mark.skipif(selenium is None, reason="selenium is not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="headless Chromium is not installed: apt-get install chromium chromium-driver "
                              "(./run test installs them when it runs as root with apt-get)"),
]
needs_firefox = [
    pytest.mark.skipif(selenium is None, reason="selenium is not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(FIREFOX is None, reason="Firefox is not installed: apt-get install firefox-esr "
                                               "(./run test installs it when it runs as root with apt-get)"),
]
needs_firefox_audio = [*needs_firefox, pytest.mark.skipif(
    PULSEAUDIO is None, reason="PulseAudio is not installed: headless Firefox records only through a sound server "
                               "(apt-get install pulseaudio; ./run test installs it when it runs as root with apt-get)")]
# Each browser a test runs in, skipped with its reason where it is missing.
BROWSERS = [pytest.param("chromium", marks=needs_chromium, id="chromium"),
            pytest.param("firefox", marks=needs_firefox, id="firefox")]

# Every visible element that sticks out of the viewport, and every table wider than its box.
OVERFLOW_SCRIPT = """
const width = document.documentElement.clientWidth, out = [];
for (const node of document.querySelectorAll('body *')) {
  const r = node.getBoundingClientRect(), style = getComputedStyle(node);
  if (!r.width || !r.height || style.visibility === 'hidden' || node.closest('[hidden]')) continue;
  if (r.left < -1 || r.right > width + 1) out.push(node.tagName + '#' + node.id + '.' + node.className + ' ' +
                                                  Math.round(r.left) + '..' + Math.round(r.right));
}
for (const box of document.querySelectorAll('.scroll')) {
  if (box.scrollWidth > box.clientWidth + 1) out.push('scrolls sideways: ' + box.firstElementChild.id +
                                                      ' ' + box.scrollWidth + ' > ' + box.clientWidth);
}
return {width: width, scrollWidth: document.documentElement.scrollWidth, out: out};
"""


@contextlib.contextmanager
def chromium(*flags: str, window=DESKTOP):
    """A Selenium driver of headless Chromium with a fresh profile, its console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver or browser
    profile = tempfile.mkdtemp(prefix="moodstream-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", *flags]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextlib.contextmanager
def sound_server():
    """A private PulseAudio daemon with a null sink, for as long as the block runs: its address (PULSE_SERVER)."""
    folder = tempfile.mkdtemp(prefix="moodstream-pulse-")
    path = os.path.join(folder, "native")
    process = subprocess.Popen(
        [PULSEAUDIO, "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--log-target=stderr",
         "-L", "module-null-sink sink_name=moodstream", "-L", f"module-native-protocol-unix socket={path} auth-anonymous=1"],
        env={**os.environ, "HOME": folder, "XDG_RUNTIME_DIR": folder}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(path):
            assert process.poll() is None and time.monotonic() < deadline, "PulseAudio did not start"
            time.sleep(0.05)
        yield f"unix:{path}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def firefox(window=DESKTOP, audio: bool = False):
    """Headless Firefox with a fresh profile and a fake microphone, driven over WebDriver BiDi; with `audio`, a
    sound server of its own, so that pages can record."""
    from firefox_bidi import firefox_bidi

    with contextlib.ExitStack() as stack:
        env = {"PULSE_SERVER": stack.enter_context(sound_server())} if audio else None
        with firefox_bidi(FIREFOX, FIREFOX_PREFS, window, env=env) as driver:
            driver.set_page_load_timeout(30)
            yield driver


def launch(name: str, window=DESKTOP, microphone: Path | None = None):
    """`name` ("chromium" or "firefox") as a context manager. With `microphone`, Chromium's fake microphone plays
    that WAV once; Firefox's plays its own tone, through a sound server of its own."""
    if name == "firefox":
        return firefox(window=window, audio=microphone is not None)
    return chromium(*(fake_microphone(microphone) if microphone else ()), window=window)


def fake_microphone(wav: Path) -> list[str]:
    """Flags for chromium(): its microphone plays `wav` once, without asking."""
    return [*FAKE_MICROPHONE_FLAGS, f"--use-file-for-fake-audio-capture={wav}%noloop"]


@pytest.fixture
def browser():
    """Headless Chromium at desktop size."""
    with chromium() as driver:
        yield driver


def wait_until(driver, condition, what, timeout=20.0):
    """Polls `condition(driver)`; a condition on several readings of a page should read it once. An element
    the page re-rendered between finding and reading it (stale) or has not drawn yet counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: condition(d), message=what)


def click(driver, css: str, what: str) -> None:
    """Click the element `css` finds, again if the page re-rendered it between finding and clicking."""
    from selenium.webdriver.common.by import By

    wait_until(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True, what)


def by_id(driver, element_id):
    return driver.find_element("id", element_id)


def set_viewport(driver, size):
    """Resize so the page itself (not the window) is `size` wide and high."""
    driver.set_window_size(*size)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])
    assert driver.execute_script("return [window.innerWidth, window.innerHeight]") == list(size)


def assert_fits(driver, where):
    """No element wider than the viewport, nothing scrolling sideways."""
    layout = driver.execute_script(OVERFLOW_SCRIPT)
    assert layout["scrollWidth"] <= layout["width"], (where, layout)
    assert not layout["out"], (where, layout["out"][:8])


def severe_console(driver) -> list[dict]:
    """The page's console errors (uncaught exceptions, failed loads): Chromium's log, or in Firefox the
    error-level entries WebDriver BiDi reported."""
    if driver.name == "firefox":
        return list(driver.console_errors)
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def print_pdf(driver, **options) -> bytes:
    """The page as the browser prints it (WebDriver's Print command: print media and the page's @page rules);
    `options` are selenium's PrintOptions attributes (page_width and page_height in cm: Letter by default)."""
    import base64

    from selenium.webdriver.common.print_page_options import PrintOptions

    settings = PrintOptions()
    for name, value in options.items():
        setattr(settings, name, value)
    return base64.b64decode(driver.print_page(settings))


def save_screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"  # dashboard/package-lock.json pins its version
AXE_RUN_SCRIPT = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']}).then(
  (result) => done(result.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
                                                   targets: v.nodes.map((n) => n.target.join(' '))}))),
  (error) => done([{id: 'axe-error', help: String(error), targets: []}]));
"""


def axe_violations(driver) -> list[dict]:
    """axe-core's violations on the page as it is now (every rule axe runs by default): id, impact, help and
    the CSS selectors of the offending elements. Injected through WebDriver, so the page's own
    Content-Security-Policy (script-src 'self') does not apply to it."""
    if not driver.execute_script("return typeof axe !== 'undefined'"):
        driver.execute_script(AXE.read_text())
    driver.set_script_timeout(60)
    return driver.execute_async_script(AXE_RUN_SCRIPT)
