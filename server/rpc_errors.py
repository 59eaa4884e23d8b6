"""How a handler ends a call with a gRPC status, from wherever in its tasks the failure shows."""
from __future__ import annotations

import asyncio

import grpc
import redis.exceptions

from moodstream.server import metrics


class StreamAbort(Exception):
    """Ends a call with a gRPC status; raised anywhere in a handler's tasks."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# How long a read call (GetScore, ListSessions, a Subscribe poll) waits on a Redis that does not answer
# before it is UNAVAILABLE: a reader retries or shows "unavailable"; it must not hang for the store
# client's whole retry time (redis_connection.DEFAULT_RETRY_SECONDS), which is for writes.
READ_BUDGET_SECONDS = 2.0
# A call whose own deadline is nearer is answered by this share of it, so UNAVAILABLE reaches the
# client before its deadline does (and says why, where DEADLINE_EXCEEDED would not).
DEADLINE_SHARE = 0.9


def read_deadline(context, budget_seconds: float = READ_BUDGET_SECONDS, waits_seconds: float = 0.0) -> float:
    """The event-loop time by which a read call's store calls must be done: `budget_seconds` (plus
    `waits_seconds` a call waits on purpose, as a blocking read does) from now, or sooner by the call's deadline."""
    budget = budget_seconds + waits_seconds
    remaining = context.time_remaining()
    if remaining is not None:
        budget = min(budget, remaining * DEADLINE_SHARE)
    return asyncio.get_running_loop().time() + max(budget, 0.0)


# A blocking read (Subscribe waiting for new updates) ends this long before the call's share of its deadline,
# so an empty wait is never mistaken for a store that did not answer.
BLOCKING_READ_MARGIN_SECONDS = 0.1


def blocking_read_ms(context, wait_ms: int) -> int | None:
    """How long a blocking read may wait for new entries: `wait_ms`, shortened to end before the call's share of
    its deadline; None when too little is left to read at all (the call's own deadline then ends it, as
    DEADLINE_EXCEEDED: a quiet stream is not an outage)."""
    remaining = context.time_remaining()
    if remaining is None:
        return wait_ms
    room = remaining * DEADLINE_SHARE - BLOCKING_READ_MARGIN_SECONDS
    if room <= 0:
        return None
    return max(1, min(wait_ms, int(room * 1000)))


async def redis_call(operation, deadline: float | None = None):
    """Await a store call; UNAVAILABLE once Redis stayed down past the client's own retries
    (redis_connection.connect), or past `deadline` (read_deadline), which cuts those retries short."""
    try:
        async with asyncio.timeout_at(deadline) as budget:
            return await operation()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        metrics.REDIS_ERRORS.inc()
        raise StreamAbort(grpc.StatusCode.UNAVAILABLE, f"session store unavailable ({error}); retry later") from error
    except TimeoutError as error:
        if not budget.expired():
            raise
        metrics.REDIS_ERRORS.inc()
        raise StreamAbort(grpc.StatusCode.UNAVAILABLE,
                          "session store unavailable (no answer within this call's time); retry later") from error
