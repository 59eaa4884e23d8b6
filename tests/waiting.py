"""Polling for a condition that a server, a dashboard or a browser reaches in its own time."""
from __future__ import annotations

import time


def wait_for(condition, what: str = "condition", timeout: float = 60.0):
    """The first truthy value of `condition()`, polled every 50 ms; an AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_until_steady(value, what: str = "value", quiet: float = 0.2, timeout: float = 60.0):
    """`value()` once it has stayed the same for `quiet` seconds (polled every 50 ms); an AssertionError naming
    `what` after `timeout` seconds. For a count that stops growing when something settles."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        current = value()
        if current != last:
            last, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return current
    raise AssertionError(f"timed out waiting for {what} to settle")
