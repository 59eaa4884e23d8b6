"""How a handler ends a call with a gRPC status, from wherever in its tasks the failure shows."""
from __future__ import annotations

import grpc
import redis.exceptions

from moodstream.server import metrics


class StreamAbort(Exception):
    """Ends a call with a gRPC status; raised anywhere in a handler's tasks."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


async def redis_call(operation):
    """Await a store call; UNAVAILABLE once Redis stayed down past the client's own retries (redis_connection.connect)."""
    try:
        return await operation()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        metrics.REDIS_ERRORS.inc()
        raise StreamAbort(grpc.StatusCode.UNAVAILABLE, f"session store unavailable ({error}); retry later") from error
