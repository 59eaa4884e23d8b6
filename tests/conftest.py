"""Shared pytest fixtures."""

import os
import tempfile

import pytest

# Encoder tunings and exported ONNX graphs go to a cache folder of this run, never the user's.
os.environ.setdefault("MOODSTREAM_CACHE_DIR", tempfile.mkdtemp(prefix="moodstream-test-cache-"))

# ---------------------------------------------------------------------------
# Redis fixtures (moodstream/compose/redis_process.py). Real servers, never mocks.
#   REDIS_URL          use that server instead of starting one. Its current
#                      database is FLUSHED before every test that asks for
#                      redis_url: point it at a disposable server only.
#   REDIS_CLUSTER_URL  same for the cluster fixtures (all masters flushed).
# Imports are local so that a checkout without the server extra can still
# collect the tests that need no Redis.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pool():
    """The .proto compiled inside the run (tests/raw_client.py), for clients that never use the project's stubs."""
    from raw_client import compile_proto

    return compile_proto()


# ---------------------------------------------------------------------------
# Scoring-server fixtures. A test module tunes them with module constants:
#   MODEL_SEED      seed of the tiny model (3 where it names none)
#   TOKEN_SCOPES    {name: (stream scope, read scope)} of its tokens file
#                   (server_harness.USUAL_SCOPES where it names none)
#   SERVER_OPTIONS  running_server's overrides for its `server` fixture
#                   (settings, limits, TLS files, grpc_web_port, ...)
# Servers come from one factory (server_harness.ServerFactory) in two
# lifetimes: start_server's stop when the test ends and default to a Redis
# database emptied for the test; start_module_server's stop when the module
# ends and share the run's Redis, as module-scoped servers must.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(request, tmp_path_factory):
    """The test module's tokens file: its TOKEN_SCOPES, or the usual names and scopes."""
    from server_harness import write_tokens

    return write_tokens(tmp_path_factory.mktemp("tokens"), getattr(request.module, "TOKEN_SCOPES", None))


@pytest.fixture(scope="module")
def model(request):
    """The tiny model (server_harness.tiny_model) of the test module's MODEL_SEED (3 where it names none)."""
    from server_harness import tiny_model

    return tiny_model(seed=getattr(request.module, "MODEL_SEED", 3))


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """The module's `model` saved as a checkpoint folder, for servers run as processes."""
    directory = tmp_path_factory.mktemp("checkpoint") / "tiny"
    model.save_pretrained(directory)
    return directory


def _server_factory(request, redis_url):
    from server_harness import ServerFactory

    return ServerFactory(model=lambda: request.getfixturevalue("model"),
                         tokens=lambda: request.getfixturevalue("tokens"), redis_url=redis_url)


@pytest.fixture
def start_server(request):
    """start_server(**options): a running scoring server, stopped when the test ends; start_server.running(...)
    for one stopped at the end of a `with` block. Unless told otherwise (model=, tokens=, redis_url=, and
    running_server's overrides) it runs the module's model and tokens on a Redis database emptied for the test."""
    factory = _server_factory(request, lambda: request.getfixturevalue("redis_url"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def start_module_server(request):
    """As start_server, for servers that stay up for the whole test module, on the run's shared Redis."""
    factory = _server_factory(request, lambda: request.getfixturevalue("redis_server").url)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def server(request, start_module_server):
    """The test module's scoring server (its SERVER_OPTIONS), up for the whole module."""
    return start_module_server(**getattr(request.module, "SERVER_OPTIONS", {}))


@pytest.fixture
def channel(server):
    """A blocking channel to the test module's own `server` fixture (a running scoring server)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def redis_server():
    """A Redis-protocol server for the whole run: endpoint with `.url` (and `.process`)."""
    from moodstream.compose.redis_process import redis_url_or_start

    with redis_url_or_start() as endpoint:
        yield endpoint


@pytest.fixture
def redis_url(redis_server):
    """URL of the session's server, its database emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster():
    """A Redis Cluster of 3 masters (or $REDIS_CLUSTER_URL): endpoint with `.url`."""
    from moodstream.compose.redis_cluster import RedisClusterProcesses
    from moodstream.compose.redis_process import RedisEndpoint

    url = os.environ.get("REDIS_CLUSTER_URL", "").strip()
    if url:
        yield RedisEndpoint(url=url)
        return
    with RedisClusterProcesses(masters=3) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster):
    """URL of a cluster node, every master emptied for this test."""
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(redis_cluster.url)
    try:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    finally:
        client.close()
    return redis_cluster.url


# --- end of Redis fixtures --------------------------------------------------
