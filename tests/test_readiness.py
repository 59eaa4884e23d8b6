"""Readiness follows Redis, liveness does not, and read calls do not wait out a Redis that is away.

A real server on its own real Redis process, which the tests kill (connections refused) or freeze
with SIGSTOP (connections accepted, never answered) and then bring back. The numbers these tests
bound are measured in docs/reliability.md.
"""
import contextlib
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moodstream.compose.redis_process import RedisProcess
from moodstream.server.readiness import CHECK_SECONDS, LIVENESS_SERVICE, PING_TIMEOUT_SECONDS, READINESS_SERVICE
from moodstream.server.rpc_errors import READ_BUDGET_SECONDS
from raw_client import client_for
from server_harness import running_server
from waiting import wait_for

MODEL_SEED = 5  # the conftest's `model` fixture: the tiny model of this seed
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Code = grpc.StatusCode
SLACK_SECONDS = 0.6  # scheduling on a loaded two-core machine


def killed(store: RedisProcess):
    store.kill()
    return store.start


def frozen(store: RedisProcess):
    os.kill(store.pid, signal.SIGSTOP)
    return lambda: os.kill(store.pid, signal.SIGCONT)


OUTAGES = {"killed": killed, "frozen": frozen}


@contextlib.contextmanager
def server_on_own_redis(model, tokens):
    with RedisProcess() as store, running_server(model, store.url, tokens) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield store, channel


def health(channel, service: str):
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def refusal(call) -> tuple[grpc.StatusCode, float]:
    """The code a call ends with, and how long it took."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), time.monotonic() - started


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_readiness_is_not_serving_while_redis_is_away_and_liveness_stays_serving(model, tokens, outage):
    with server_on_own_redis(model, tokens) as (store, channel):
        assert (health(channel, READINESS_SERVICE), health(channel, LIVENESS_SERVICE)) == (SERVING, SERVING)
        restore = OUTAGES[outage](store)
        try:
            away = time.monotonic()
            wait_for(lambda: health(channel, READINESS_SERVICE) == NOT_SERVING, "readiness NOT_SERVING", timeout=10)
            assert time.monotonic() - away < CHECK_SECONDS + PING_TIMEOUT_SECONDS + SLACK_SECONDS
            assert health(channel, LIVENESS_SERVICE) == SERVING  # a liveness probe must not restart it for this
        finally:
            restore()
        back = time.monotonic()
        wait_for(lambda: health(channel, READINESS_SERVICE) == SERVING, "readiness SERVING again", timeout=20)
        assert time.monotonic() - back < CHECK_SECONDS + PING_TIMEOUT_SECONDS + SLACK_SECONDS
        assert health(channel, LIVENESS_SERVICE) == SERVING


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_read_calls_are_unavailable_within_the_read_budget_while_redis_is_away(model, tokens, pool, outage):
    with server_on_own_redis(model, tokens) as (store, channel):
        raw = client_for(channel, pool, tokens, "admin")
        reads = {
            "GetScore": lambda timeout: raw.unary(
                "GetScore", raw.request("GetScore", session_id="never-streamed"), timeout=timeout),
            "ListSessions": lambda timeout: raw.unary("ListSessions", raw.request("ListSessions"), timeout=timeout),
            "Subscribe": lambda timeout: next(raw.server_stream(
                "Subscribe", raw.request("Subscribe", session_id="never-streamed"), timeout=timeout)),
        }
        assert refusal(lambda: reads["GetScore"](30))[0] == Code.NOT_FOUND
        restore = OUTAGES[outage](store)
        try:
            for name, read in reads.items():
                code, took = refusal(lambda: read(30))  # the store client alone would retry for 30 s
                assert code == Code.UNAVAILABLE, name
                assert took < READ_BUDGET_SECONDS + SLACK_SECONDS, (name, took)
                code, took = refusal(lambda: read(1.0))  # a nearer deadline: answered before it
                assert (code, took < 1.0) == (Code.UNAVAILABLE, True), (name, took)
        finally:
            restore()
        wait_for(lambda: health(channel, READINESS_SERVICE) == SERVING, "readiness SERVING again", timeout=20)
        assert refusal(lambda: reads["GetScore"](30))[0] == Code.NOT_FOUND  # the store's client reconnects itself
