"""Headless Firefox driven over WebDriver BiDi, the protocol Firefox itself serves on
`--remote-debugging-port`, so the Firefox tests need no geckodriver (which no package source this project
reaches ships for Linux).

`FirefoxDriver` answers the part of Selenium's WebDriver API that the browser tests use: `get`,
`current_url`, `execute_script` and `execute_async_script`, `find_element(s)` (by id or CSS selector;
elements with `.text`, `get_attribute`, `is_displayed` and a real pointer `.click()`), `set_window_size` (the
viewport), `print_page`, `save_screenshot` and `quit`, so a test body runs unchanged in either browser.
Selenium's own `WebSocketConnection` carries the commands. Unlike geckodriver, BiDi reports the page's
console: `console_errors` holds every error-level log entry and uncaught exception.
"""
import base64
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from selenium.common.exceptions import (JavascriptException, NoSuchElementException, StaleElementReferenceException,
                                        WebDriverException)
from selenium.webdriver.remote.websocket_connection import WebSocketConnection

from waiting import wait_for

LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")
COMMAND_TIMEOUT = 60.0  # a navigation waits for its page's load event within this


class FirefoxElement:
    """A node of the page, by its BiDi shared id."""

    def __init__(self, driver: "FirefoxDriver", shared_id: str):
        self.driver, self.shared_id = driver, shared_id

    @property
    def reference(self) -> dict:
        return {"sharedId": self.shared_id}

    @property
    def text(self) -> str:
        """The rendered text, as Selenium's `.text` gives it."""
        return self.driver.execute_script("return arguments[0].innerText.trim()", self)

    def get_attribute(self, name: str):
        """The property of that name where the element has one (as Selenium: `href` absolute), else the
        attribute."""
        return self.driver.execute_script(
            "const [node, name] = arguments; const value = node[name];"
            "return value === undefined || value === null || typeof value === 'object' || typeof value === 'function'"
            " ? node.getAttribute(name) : (typeof value === 'boolean' ? (value ? 'true' : null) : String(value));",
            self, name)

    def is_displayed(self) -> bool:
        return self.driver.execute_script("return arguments[0].checkVisibility({visibilityProperty: true})", self)

    def click(self) -> None:
        """A real mouse click at the element's centre, scrolled into view first, as WebDriver clicks."""
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", self)
        self.driver.command("input.performActions", {"context": self.driver.context, "actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [{"type": "pointerMove", "x": 0, "y": 0,
                         "origin": {"type": "element", "element": self.reference}},
                        {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}]})
        self.driver.command("input.releaseActions", {"context": self.driver.context})


class FirefoxDriver:
    name = "firefox"

    def __init__(self, connection: WebSocketConnection):
        self.connection = connection
        self.console_errors: list[dict] = []
        self.command("session.new", {"capabilities": {}})
        self.context = self.command("browsingContext.getTree", {"maxDepth": 0})["contexts"][0]["context"]
        self._listen_to_console()

    def command(self, method: str, params: dict) -> dict:
        reply = self.connection.send_cmd(method, params)
        if "error" not in reply:
            return reply["result"]
        error, message = reply["error"], reply.get("message", "")
        if error == "no such node":
            raise StaleElementReferenceException(f"{method}: {message}")
        raise WebDriverException(f"{method}: {error}: {message}")

    def _listen_to_console(self) -> None:
        def keep(params: dict) -> None:
            if params.get("level") == "error":
                self.console_errors.append({"level": "SEVERE", "message": params.get("text", ""),
                                            "source": params.get("type", "")})

        # The connection's reader thread calls these per event; no typed event class is needed here.
        self.connection.callbacks.setdefault("log.entryAdded", []).append(keep)
        self.command("session.subscribe", {"events": ["log.entryAdded"]})

    # Pages
    def get(self, url: str) -> None:
        self.command("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    @property
    def current_url(self) -> str:
        return self.command("browsingContext.getTree", {"root": self.context, "maxDepth": 0})["contexts"][0]["url"]

    def set_page_load_timeout(self, seconds: float) -> None:
        self.connection.response_wait_timeout = max(seconds, COMMAND_TIMEOUT)

    def set_window_size(self, width: int, height: int) -> None:
        """Headless Firefox has no window frame: the viewport is the window."""
        self.command("browsingContext.setViewport",
                     {"context": self.context, "viewport": {"width": int(width), "height": int(height)}})

    # Scripts
    def execute_script(self, script: str, *args):
        """`script` as a function body with `arguments`, as Selenium runs it; its return value as Python
        values (elements as FirefoxElement)."""
        return self._call_function(f"function() {{\n{script}\n}}", args, await_promise=False)

    def execute_async_script(self, script: str, *args):
        """`script` as a function body whose last argument is the callback it calls with its result, as
        Selenium runs it; waits up to the script timeout."""
        return self._call_function(
            "function() { const args = Array.from(arguments); return new Promise((resolve, reject) => {"
            f" args.push(resolve); try {{ (function() {{\n{script}\n}}).apply(this, args); }}"
            " catch (error) { reject(error); } }); }", args, await_promise=True)

    def _call_function(self, declaration: str, args, await_promise: bool):
        result = self.command("script.callFunction", {
            "functionDeclaration": declaration, "awaitPromise": await_promise, "target": {"context": self.context},
            "arguments": [self._local_value(arg) for arg in args], "resultOwnership": "none"})
        if result["type"] == "exception":
            details = result["exceptionDetails"]
            raise JavascriptException(f"{details.get('text', '')} (line {details.get('lineNumber')})")
        return self._python_value(result["result"])

    def set_script_timeout(self, seconds: float) -> None:
        self.connection.response_wait_timeout = max(seconds, self.connection.response_wait_timeout)

    def _local_value(self, value) -> dict:
        if isinstance(value, FirefoxElement):
            return value.reference
        if value is None:
            return {"type": "null"}
        if isinstance(value, bool):
            return {"type": "boolean", "value": value}
        if isinstance(value, (int, float)):
            return {"type": "number", "value": value}
        if isinstance(value, str):
            return {"type": "string", "value": value}
        if isinstance(value, (list, tuple)):
            return {"type": "array", "value": [self._local_value(item) for item in value]}
        if isinstance(value, dict):
            return {"type": "object", "value": [[str(key), self._local_value(item)] for key, item in value.items()]}
        raise TypeError(f"cannot pass {type(value).__name__} to a page script")

    def _python_value(self, remote: dict):
        kind, value = remote["type"], remote.get("value")
        if kind in ("undefined", "null"):
            return None
        if kind == "number":
            return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf, "-0": -0.0}.get(value, value) \
                if isinstance(value, str) else value
        if kind in ("string", "boolean"):
            return value
        if kind == "bigint":
            return int(value)
        if kind in ("array", "set", "nodelist", "htmlcollection"):
            return [self._python_value(item) for item in value or []]
        if kind in ("object", "map"):
            return {key if isinstance(key, str) else json.dumps(self._python_value(key)): self._python_value(item)
                    for key, item in value or []}
        if kind == "node":
            return FirefoxElement(self, remote["sharedId"])
        return remote  # functions, promises, windows and the like: their description

    def find_elements(self, by: str, value: str, most: int | None = None) -> list[FirefoxElement]:
        if by == "id":
            css = f'[id="{value}"]'
        elif by == "css selector":
            css = value
        else:
            raise NotImplementedError(f"find_element by {by!r}: the Firefox driver locates by id and CSS only")
        found = self.command("browsingContext.locateNodes", {
            "context": self.context, "locator": {"type": "css", "value": css},
            **({"maxNodeCount": most} if most else {})})["nodes"]
        return [FirefoxElement(self, node["sharedId"]) for node in found]

    def find_element(self, by: str, value: str) -> FirefoxElement:
        found = self.find_elements(by, value, most=1)
        if not found:
            raise NoSuchElementException(f"no element matches {value} (by {by})")
        return found[0]

    # Output
    def print_page(self, print_options=None) -> str:
        """The page as a base64 PDF; `print_options` is Selenium's PrintOptions, whose fields BiDi shares."""
        options = print_options.to_dict() if print_options else {}
        return self.command("browsingContext.print", {"context": self.context, **options})["data"]

    def save_screenshot(self, path: str) -> bool:
        data = self.command("browsingContext.captureScreenshot", {"context": self.context})["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return True

    def quit(self) -> None:
        with contextlib.suppress(WebDriverException):
            self.command("session.end", {})
        self.connection.close()


def _bidi_address(log: Path, process: subprocess.Popen, timeout: float = 60.0) -> str:
    """The WebSocket address Firefox prints once its remote agent listens."""
    def printed() -> str | None:
        if process.poll() is not None:
            raise RuntimeError(f"Firefox exited ({process.returncode}) before listening: {log.read_text()[-2000:]}")
        found = LISTENING.search(log.read_text(errors="replace")) if log.exists() else None
        return found and found.group(1)

    return wait_for(printed, "Firefox to start its WebDriver BiDi agent", timeout)


@contextlib.contextmanager
def firefox_bidi(binary: str, prefs: dict, window: tuple[int, int], env: dict | None = None):
    """Headless Firefox with a fresh profile holding `prefs`, its viewport `window`, driven over BiDi; the
    profile is removed when the block ends."""
    profile = Path(tempfile.mkdtemp(prefix="moodstream-firefox-"))
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n"
                                             for name, value in prefs.items()))
    log = profile / "firefox.log"
    with open(log, "wb") as output:
        # Port 0: Firefox picks a free port and prints it.
        process = subprocess.Popen(
            [binary, "-headless", "-no-remote", "-profile", str(profile), "--remote-debugging-port", "0",
             f"--width={window[0]}", f"--height={window[1]}", "about:blank"],
            env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT)
    driver = None
    try:
        connection = WebSocketConnection(f"{_bidi_address(log, process)}/session", COMMAND_TIMEOUT, 0.005)
        driver = FirefoxDriver(connection)
        driver.set_window_size(*window)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        shutil.rmtree(profile, ignore_errors=True)

