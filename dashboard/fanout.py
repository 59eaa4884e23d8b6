"""The fan-out of the feed's events to the browsers' open event streams.

Each open stream has a Listener; every event goes to every listener in the order it was published.
Everything runs on the web server's event loop, so publishing never blocks and never waits for a reader.
"""
from __future__ import annotations

import asyncio
from collections import deque


class Listener:
    """A bounded event queue for one open event stream; a slow reader gets a resync instead."""

    def __init__(self, limit: int = 2000) -> None:
        self.events: deque = deque()
        self.limit = limit
        self.resync = False
        self.closed = False
        self.ready = asyncio.Event()

    def push(self, event: dict) -> None:
        if len(self.events) >= self.limit:
            self.events.clear()
            self.resync = True
        else:
            self.events.append(event)
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()

    async def next(self, timeout: float) -> dict | None:
        """The next event, {"type": "resync"} after an overflow, {"type": "close"} once closed, or None
        after `timeout` seconds without one."""
        if self.closed:
            return {"type": "close"}
        if not self.events and not self.resync:
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except TimeoutError:
                return None
        if self.closed:
            return {"type": "close"}
        if self.resync:
            self.resync = False
            self.events.clear()
            return {"type": "resync"}
        return self.events.popleft()


class Fanout:
    """The listeners of every open event stream."""

    def __init__(self) -> None:
        self.listeners: set[Listener] = set()

    def listen(self) -> Listener:
        listener = Listener()
        self.listeners.add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    def close_listeners(self) -> None:
        """End every open event stream (the web server is shutting down)."""
        for listener in list(self.listeners):
            listener.close()

    def publish(self, event: dict) -> None:
        for listener in list(self.listeners):
            listener.push(event)
