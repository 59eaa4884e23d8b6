"""Readiness and liveness, the two answers of the server's grpc.health.v1.Health service.

    readiness = RedisReadiness(health, redis_url)
    await readiness.start()      # checks once, then every CHECK_SECONDS
    ...
    await readiness.stop()

READINESS_SERVICE (moodstream.v1.Screening) is SERVING only while Redis answers a PING: a server
that cannot reach Redis can take no chunk and answer no read, so balancers and Kubernetes' readiness
probe must send it nothing. LIVENESS_SERVICE ("", the server as a whole) stays SERVING through a
Redis outage: restarting the process would not bring Redis back, and a restart drops every open
stream that is riding the outage out (docs/reliability.md).
"""
from __future__ import annotations

import asyncio
import logging

import redis.exceptions
from grpc_health.v1 import health_pb2

from moodstream.server.redis_connection import connect
from moodstream.v1 import moodstream_pb2

__all__ = ["CHECK_SECONDS", "LIVENESS_SERVICE", "PING_TIMEOUT_SECONDS", "READINESS_SERVICE", "RedisReadiness"]

log = logging.getLogger("moodstream.server")

READINESS_SERVICE = moodstream_pb2.DESCRIPTOR.services_by_name["Screening"].full_name
LIVENESS_SERVICE = ""
CHECK_SECONDS = 1.0
# Short, so a Redis that hangs (not only one that refuses connections) turns readiness off within
# about CHECK_SECONDS + PING_TIMEOUT_SECONDS.
PING_TIMEOUT_SECONDS = 0.5

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RedisReadiness:
    """Sets READINESS_SERVICE to whether Redis answered its last PING, on a client of its own without
    retries (the store's client rides outages out for many seconds, which is what a check must not do)."""

    def __init__(self, health, redis_url: str, *, cluster: bool = False, check_seconds: float = CHECK_SECONDS,
                 ping_timeout_seconds: float = PING_TIMEOUT_SECONDS) -> None:
        self._health = health
        self._redis_url = redis_url
        self._cluster = cluster
        self.check_seconds = check_seconds
        self.ping_timeout_seconds = ping_timeout_seconds
        self.ready: bool | None = None
        self._client = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._client = connect(self._redis_url, cluster=self._cluster, retry_seconds=0,
                               socket_timeout=self.ping_timeout_seconds,
                               socket_connect_timeout=self.ping_timeout_seconds)
        await self.check()
        self._task = asyncio.create_task(self._run(), name="redis-readiness")

    async def check(self) -> bool:
        """PING Redis once and publish the answer; True when it answered."""
        problem = None
        try:
            async with asyncio.timeout(self.ping_timeout_seconds):
                await self._client.ping()
        except (redis.exceptions.RedisError, OSError, TimeoutError) as error:
            problem = str(error) or type(error).__name__
        ready = problem is None
        if ready != self.ready:
            if ready:
                log.info("Redis answers: %s is SERVING", READINESS_SERVICE)
            else:
                log.warning("Redis does not answer (%s): %s is NOT_SERVING until it does", problem,
                            READINESS_SERVICE)
            await self._health.set(READINESS_SERVICE, SERVING if ready else NOT_SERVING)
            self.ready = ready
        return ready

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                await self.check()
            except Exception:  # never let one failed look end the watch: the next may succeed
                log.exception("checking Redis for readiness failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
