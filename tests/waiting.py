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
