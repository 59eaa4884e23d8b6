"""The scorer state in Redis: a head rewritten per segment plus append-only rows (docs/scorer-state.md)."""
import grpc
import numpy as np
import pytest
import redis

from moodstream.model import ScorerState
from moodstream.server.store_keys import SessionKeys
from server_harness import chunk, end, header, make_chunks, offline_score, running_server, stream, stub_for

CHUNKS = make_chunks(6, seed=21, seconds=2.0)


MODEL_SEED = 4  # the conftest's `model` fixture: the tiny model of this seed


def session_keys(model, session_id: str, participant: str = "p1") -> SessionKeys:
    return SessionKeys.build(participant, session_id, model.model_version)


def scores(responses):
    return [r.score.probability for r in responses if r.WhichOneof("message") == "score"]


def test_each_segment_writes_one_fixed_size_row_and_a_fixed_size_head(model, redis_url, tokens):
    keys = session_keys(model, "flat")
    client = redis.Redis.from_url(redis_url)
    heads, rows = [], []
    with running_server(model, redis_url, tokens) as server, stub_for(server.port) as stub:
        for seq, pcm in enumerate(CHUNKS):
            last = [end(seq)] if seq == len(CHUNKS) - 1 else []
            stream(stub, [header("flat", "p1"), chunk(seq, pcm), *last], tokens.metadata("agent"))
            heads.append(len(client.hget(keys.session, "state")))
            rows.append(client.strlen(keys.rows))
    client.close()
    assert len(set(heads)) == 1
    steps = np.diff([0, *rows])
    assert len(set(steps)) == 1 and steps[0] > 0


def test_a_state_in_the_whole_state_format_is_migrated_and_scoring_continues_exactly(model, redis_url, tokens):
    keys = session_keys(model, "old")
    client = redis.Redis.from_url(redis_url)
    try:
        with running_server(model, redis_url, tokens) as server, stub_for(server.port) as stub:
            stream(stub, [header("old", "p1"), *(chunk(s, CHUNKS[s]) for s in range(3))], tokens.metadata("agent"))
            # What a server of the previous release left: one whole-state blob, no rows.
            scorer = model.incremental_scorer()
            state = scorer.restore(client.hget(keys.session, "state"), client.get(keys.rows))
            client.hset(keys.session, "state", state.to_bytes())
            client.delete(keys.rows)
            responses = stream(stub, [header("old", "p1"), *(chunk(s, CHUNKS[s]) for s in range(3, 6)), end(5)],
                               tokens.metadata("agent"))
        stored = client.hget(keys.session, "state")
        assert ScorerState.is_head(stored)
        assert scorer.restore(stored, client.get(keys.rows)).segments == 6
    finally:
        client.close()
    assert abs(scores(responses)[-1] - offline_score(model, CHUNKS)) <= 1e-5


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_rows_that_do_not_match_the_head_are_data_loss_and_nothing_is_applied(model, redis_url, tokens, damage):
    keys = session_keys(model, f"rows-{damage}")
    client = redis.Redis.from_url(redis_url)
    try:
        with running_server(model, redis_url, tokens) as server, stub_for(server.port) as stub:
            stream(stub, [header(f"rows-{damage}", "p1"), chunk(0, CHUNKS[0]), chunk(1, CHUNKS[1])],
                   tokens.metadata("agent"))
            rows = client.get(keys.rows)
            client.set(keys.rows, rows[:-4] if damage == "truncated" else rows[::-1])
            with pytest.raises(grpc.RpcError) as info:
                stream(stub, [header(f"rows-{damage}", "p1"), chunk(2, CHUNKS[2])], tokens.metadata("agent"))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        assert "scorer state" in info.value.details() and f"rows-{damage}" in info.value.details()
        assert client.hlen(keys.vectors) == 2
    finally:
        client.close()

