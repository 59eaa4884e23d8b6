"""The one backoff policy: the waits of the agent's reconnects and of a resumed Subscribe."""
import itertools
import random

import pytest

from moodstream.agent import RetryPolicy
from moodstream.backoff import Backoff
from moodstream.wire import SUBSCRIBE_BACKOFF


def first(waits, count):
    return list(itertools.islice(waits, count))


def test_waits_grow_by_the_multiplier_up_to_the_cap():
    assert first(Backoff(base_seconds=0.5, multiplier=2.0, cap_seconds=5.0).waits(), 7) == [
        0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert first(Backoff(base_seconds=1.0, multiplier=3.0, cap_seconds=10.0).waits(), 4) == [1.0, 3.0, 9.0, 10.0]
    assert first(Backoff(base_seconds=2.0, cap_seconds=1.0).waits(), 2) == [1.0, 1.0]  # the cap bounds every wait


def test_a_resumed_subscribe_waits_half_a_second_doubling_to_five():
    assert first(SUBSCRIBE_BACKOFF.waits(), 6) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_draws_that_share_of_each_wait_and_never_less_than_the_rest():
    waits = first(Backoff(base_seconds=0.5, cap_seconds=20.0, jitter=0.5).waits(random.Random(7)), 12)
    steps = [min(20.0, 0.5 * 2 ** attempt) for attempt in range(12)]
    assert all(step / 2 <= wait <= step for wait, step in zip(waits, steps))
    assert len(set(wait / step for wait, step in zip(waits, steps))) == 12  # drawn, not fixed
    assert first(Backoff(jitter=0.5).waits(random.Random(7)), 12) == waits  # a seeded schedule repeats


def test_the_agents_retries_keep_equal_jitter_on_their_exponential_steps():
    """What RetryPolicy.delay computed before the policy moved to the core: min(cap, base * 2^n) / 2 + U(0, half)."""
    policy = RetryPolicy(initial_delay_seconds=0.4, max_delay_seconds=5.0)
    expected_rng, rng = random.Random(3), random.Random(3)
    expected = []
    for attempt in range(8):
        ceiling = min(policy.max_delay_seconds, policy.initial_delay_seconds * 2 ** attempt)
        expected.append(ceiling / 2 + expected_rng.uniform(0, ceiling / 2))
    assert first(policy.backoff.waits(rng), 8) == pytest.approx(expected, rel=0, abs=1e-12)


def test_no_number_of_tries_overflows():
    waits = Backoff(base_seconds=0.5, cap_seconds=20.0, jitter=0.5).waits(random.Random(0))
    assert 10.0 <= next(itertools.islice(waits, 5000, None)) <= 20.0


@pytest.mark.parametrize("settings, message", [
    ({"base_seconds": -1.0}, "waits must be >= 0 s"),
    ({"multiplier": 0.5}, "multiplier must be >= 1"),
    ({"jitter": 1.5}, r"jitter must be in \[0, 1\]"),
])
def test_impossible_policies_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        Backoff(**settings)
