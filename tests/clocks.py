"""Wall clocks a test moves, for the server's store and the dashboard's feed (both take `clock`)."""
from __future__ import annotations

import time


class ManualClock:
    """A wall clock that stands still until the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ShiftedClock:
    """Real wall time plus however far the test has jumped it ahead: everything that waits on time still
    runs, and a wait the test stands for (recording at live pace, an outage) takes no real time."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
