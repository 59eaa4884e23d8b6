"""The server's cache of restored scorer states (server/state_cache.py, docs/scorer-state.md).

Real Redis and real gRPC; PutChunk through a client built from the .proto alone. Scores are compared
exactly: a cached state is the very state a restore would rebuild, so nothing may differ.
"""
import asyncio

import grpc
import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY

from moodstream.model import ScorerState
from moodstream.server.service import ServiceSettings
from moodstream.server.state_cache import ScorerStateCache, state_nbytes
from moodstream.server.redis_connection import connect
from moodstream.server.session_directory import SessionDirectory
from moodstream.server.store_keys import SessionKeys
from moodstream.server.store_records import KnownState
from raw_client import client_for
from server_harness import make_chunks, offline_score

MODEL_SEED = 6  # the conftest's `model` fixture: the tiny model of this seed
CHUNKS = make_chunks(12, seed=31, seconds=2.0)
OTHER_CHUNKS = make_chunks(12, seed=32, seconds=2.0)


def lookups(outcome: str) -> float:
    return REGISTRY.get_sample_value("moodstream_state_cache_lookups_total", {"outcome": outcome}) or 0.0


class Counted:
    """Hits and misses counted while the block runs (every server of this process counts in one registry)."""

    def __enter__(self):
        self.start = lookups("hit"), lookups("miss")
        return self

    def __exit__(self, *exc):
        self.hits, self.misses = lookups("hit") - self.start[0], lookups("miss") - self.start[1]


def with_cache(cache_mb: float) -> ServiceSettings:
    return ServiceSettings(redis_retry_seconds=2, state_cache_mb=cache_mb)


@pytest.fixture(scope="module")
def servers(start_module_server, redis_server):
    """Two replicas with the default cache and one without, on one Redis."""
    cached = start_module_server(settings=with_cache(ServiceSettings().state_cache_mb))
    twin = start_module_server(settings=with_cache(ServiceSettings().state_cache_mb))
    uncached = start_module_server(settings=with_cache(0))
    with grpc.insecure_channel(f"127.0.0.1:{cached.port}") as cached_channel, \
            grpc.insecure_channel(f"127.0.0.1:{twin.port}") as twin_channel, \
            grpc.insecure_channel(f"127.0.0.1:{uncached.port}") as uncached_channel:
        yield {"cached": cached_channel, "twin": twin_channel, "uncached": uncached_channel,
               "redis_url": redis_server.url}


def put(raw, session: str, seq: int, pcm: bytes, participant: str = "p1"):
    request = raw.request("PutChunk", header=raw.header(session, participant).header,
                          chunk=raw.message("Chunk")(seq=seq, start_seconds=2.0 * seq, pcm=pcm))
    return raw.unary("PutChunk", request)


def probabilities(raw, session: str, chunks, participant: str = "p1", first_seq: int = 0) -> list[float]:
    return [put(raw, session, seq, pcm, participant).score.probability
            for seq, pcm in enumerate(chunks, start=first_seq)]


def test_scores_with_the_cache_equal_scores_without_it_exactly(model, servers, pool, tokens):
    cached = client_for(servers["cached"], pool, tokens, "agent")
    uncached = client_for(servers["uncached"], pool, tokens, "agent")
    with Counted() as counted:
        with_cache = probabilities(cached, "exact-cached", CHUNKS)
    without_cache = probabilities(uncached, "exact-uncached", CHUNKS)
    assert with_cache == without_cache
    assert abs(with_cache[-1] - offline_score(model, CHUNKS)) <= 1e-5
    # Every call after the first found its state in the cache: no rows read, no restore.
    assert (counted.hits, counted.misses) == (len(CHUNKS) - 1, 0)


def test_a_session_written_by_another_replica_misses_and_scores_exactly(servers, pool, tokens):
    reference = probabilities(client_for(servers["uncached"], pool, tokens, "agent"), "replica-ref", CHUNKS)
    replicas = [client_for(servers[name], pool, tokens, "agent") for name in ("cached", "twin")]
    with Counted() as counted:
        alternating = [put(replicas[seq % 2], "replica", seq, pcm).score.probability
                       for seq, pcm in enumerate(CHUNKS)]
    assert alternating == reference
    # Each replica's entry was overwritten behind its back by the other's write before its next call.
    assert (counted.hits, counted.misses) == (0, len(CHUNKS) - 1)


def test_a_session_forgotten_and_recreated_to_the_same_length_is_not_served_from_the_cache(servers, pool, tokens):
    cached = client_for(servers["cached"], pool, tokens, "agent")
    twin = client_for(servers["twin"], pool, tokens, "agent")
    probabilities(cached, "reborn", CHUNKS[:4], participant="p7")   # cached now holds 4 segments of CHUNKS

    async def forget():
        client = connect(servers["redis_url"])
        try:
            return await SessionDirectory(client).forget_participant("p7")
        finally:
            await client.aclose()

    assert asyncio.run(forget()) > 0
    # Recreated elsewhere with other speech, to the very length the cached entry has.
    probabilities(twin, "reborn", OTHER_CHUNKS[:4], participant="p7")
    with Counted() as counted:
        continued = put(cached, "reborn", 4, OTHER_CHUNKS[4], participant="p7").score
    reference = probabilities(client_for(servers["uncached"], pool, tokens, "agent"), "reborn-ref", OTHER_CHUNKS[:5])
    assert continued.segments == 5 and continued.probability == reference[-1]
    assert (counted.hits, counted.misses) == (0, 1)


def test_rows_rewritten_behind_an_unchanged_head_are_not_served_from_the_cache(model, servers, pool, tokens):
    cached = client_for(servers["cached"], pool, tokens, "agent")
    probabilities(cached, "tail", CHUNKS[:3])
    keys = SessionKeys.build("p1", "tail", model.model_version)
    client = redis.Redis.from_url(servers["redis_url"])
    try:
        rows = client.get(keys.rows)
        record = len(rows) // 3
        client.set(keys.rows, rows[:-record] + rows[:record])  # same length, another last record
        with pytest.raises(grpc.RpcError) as refused:
            put(cached, "tail", 3, CHUNKS[3])
        assert client.hlen(keys.vectors) == 3
    finally:
        client.close()
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS


def test_a_corrupt_head_is_still_data_loss_and_nothing_is_applied(model, servers, pool, tokens):
    cached = client_for(servers["cached"], pool, tokens, "agent")
    probabilities(cached, "broken", CHUNKS[:3])
    keys = SessionKeys.build("p1", "broken", model.model_version)
    client = redis.Redis.from_url(servers["redis_url"])
    try:
        head = bytearray(client.hget(keys.session, "state"))
        head[40] ^= 0xFF
        client.hset(keys.session, "state", bytes(head))
        for _ in range(2):  # and again: the refused state was not cached either
            with pytest.raises(grpc.RpcError) as refused:
                put(cached, "broken", 3, CHUNKS[3])
            assert refused.value.code() == grpc.StatusCode.DATA_LOSS
            assert "scorer state" in refused.value.details() and "broken" in refused.value.details()
        assert client.hlen(keys.vectors) == 3
    finally:
        client.close()


def test_a_cache_of_zero_is_off(servers, pool, tokens):
    uncached = client_for(servers["uncached"], pool, tokens, "agent")
    with Counted() as counted:
        probabilities(uncached, "off", CHUNKS[:4])
    assert (counted.hits, counted.misses) == (0, 0)


def test_a_cache_too_small_for_a_state_keeps_nothing_and_still_scores_exactly(start_module_server, pool, tokens,
                                                                                servers):
    reference = probabilities(client_for(servers["uncached"], pool, tokens, "agent"), "small-ref", CHUNKS[:4])
    with start_module_server.running(settings=with_cache(1e-4)) as tiny, \
            grpc.insecure_channel(f"127.0.0.1:{tiny.port}") as channel:
        with Counted() as counted:
            scores = probabilities(client_for(channel, pool, tokens, "agent"), "small", CHUNKS[:4])
    assert scores == reference
    assert (counted.hits, counted.misses) == (0, 3)


# -- the cache itself -------------------------------------------------------

def a_state(model, segments: int) -> tuple[ScorerState, KnownState]:
    scorer = model.incremental_scorer()
    state = scorer.init_state()
    for vector in np.random.default_rng(segments).standard_normal((segments, scorer.vector_size)):
        state, _ = scorer.step(state, vector)
    return state, KnownState.of(state.head_bytes(), state)


def test_the_byte_bound_evicts_the_least_recently_used_first(model):
    state, known = a_state(model, 3)
    size = state_nbytes(state) + len(known.head) + len(known.last_row)
    cache = ScorerStateCache(3 * size)
    for key in "abc":
        cache.put(key, known, state)
    assert cache.bytes == 3 * size
    cache.hit("a")             # a is now the most recently used
    cache.put("d", known, state)
    assert "b" not in cache and {"a", "c", "d"} <= {key for key in "abcd" if key in cache}
    assert cache.bytes == 3 * size <= cache.max_bytes
    cache.put("a", known, state)   # replacing an entry does not count it twice
    assert len(cache) == 3 and cache.bytes == 3 * size
    cache.discard("a")
    assert cache.get("a") is None and cache.bytes == 2 * size


def test_a_bound_of_zero_keeps_nothing_and_a_negative_one_is_refused(model):
    state, known = a_state(model, 2)
    cache = ScorerStateCache(0)
    cache.put("a", known, state)
    assert not cache.enabled and len(cache) == 0 and cache.bytes == 0
    with pytest.raises(ValueError, match=">= 0"):
        ScorerStateCache(-1)


def test_an_entry_counts_its_rows_spare_capacity(model):
    state, _ = a_state(model, 20)
    rows = state._queries.data.nbytes + state._keys.data.nbytes + state._values.data.nbytes
    assert state_nbytes(state) >= rows >= 3 * 20 * state.queries.shape[1] * 4
