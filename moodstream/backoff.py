"""How long to wait before each try after a failure: the one backoff policy of moodstream's clients.

The agent waits so before reconnecting a broken stream (moodstream.agent.client.RetryPolicy), a
Subscribe before resuming (moodstream.wire.Subscription). Redis connections keep redis-py's own Retry.

Torch-free and part of the core.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Waits growing from `base_seconds` by `multiplier` per try up to `cap_seconds`; a `jitter` share of
    each is drawn at random (0: every wait exact; 0.5: "equal jitter", at least half the step)."""

    base_seconds: float = 0.5
    multiplier: float = 2.0
    cap_seconds: float = 20.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (self.base_seconds >= 0 and self.cap_seconds >= 0):
            raise ValueError(f"backoff waits must be >= 0 s, got base {self.base_seconds:g} s, "
                             f"cap {self.cap_seconds:g} s")
        if not self.multiplier >= 1:
            raise ValueError(f"backoff multiplier must be >= 1, got {self.multiplier:g}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be in [0, 1], got {self.jitter:g}")

    def waits(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before the first, second, ... retry; start a new schedule after a success."""
        rng = rng or random.Random()
        step = min(self.base_seconds, self.cap_seconds)
        while True:
            # Jitter spreads clients that failed together, so they do not all come back at once.
            yield step * (1 - self.jitter) + (rng.uniform(0, step * self.jitter) if self.jitter else 0.0)
            # Grown by multiplication and held at the cap, so no number of tries overflows a float.
            step = min(step * self.multiplier, self.cap_seconds)
