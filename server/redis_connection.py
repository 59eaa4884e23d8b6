"""The session store's Redis client: one server or a Redis Cluster, riding out a Redis that is briefly away.

Retries are redis-py's own (Retry with an ExponentialBackoff), counted in metrics.REDIS_ERRORS and logged.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from moodstream.server import metrics

__all__ = ["DEFAULT_RETRY_SECONDS", "RETRY_BACKOFF", "AnyRedis", "connect", "redis_retry"]

AnyRedis = aioredis.Redis | RedisCluster
log = logging.getLogger("moodstream.server")

# How long the store's client rides out a Redis that is unreachable, restarting or loading, by default.
DEFAULT_RETRY_SECONDS = 30.0
RETRY_BACKOFF = {"base": 0.025, "cap": 1.0}  # waits of 50 ms, doubling, at most 1 s


class _CountedBackoff(ExponentialBackoff):
    """RETRY_BACKOFF that counts, and logs, each failed Redis call it waits after."""

    def compute(self, failures: int) -> float:
        delay = super().compute(failures)
        metrics.REDIS_ERRORS.inc()
        log.warning("redis call failed (attempt %d); retrying in %.2f s", failures, delay)
        return delay


def redis_retry(seconds: float) -> Retry:
    """redis-py's Retry for connection errors and timeouts (a Redis that is loading included), retrying
    with RETRY_BACKOFF for `seconds` of waiting in all."""
    waits, retries, waited = ExponentialBackoff(**RETRY_BACKOFF), 0, 0.0
    while waited < seconds:
        retries += 1
        waited += waits.compute(retries)
    return Retry(_CountedBackoff(**RETRY_BACKOFF), retries)


def connect(url: str, *, cluster: bool = False, retry_seconds: float = DEFAULT_RETRY_SECONDS,
            **options: Any) -> AnyRedis:
    """An asyncio Redis client for SessionStore and SessionDirectory (a RedisCluster client if cluster=True)
    whose every call rides out `retry_seconds` of Redis being unreachable (0: no retry).

    Responses stay bytes (state and vectors are binary), so decode_responses
    is refused.
    """
    if options.get("decode_responses"):
        raise ValueError("SessionStore needs raw bytes responses; do not set decode_responses")
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("retry", redis_retry(retry_seconds))
    if cluster:
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)
