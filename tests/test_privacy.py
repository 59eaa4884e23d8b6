"""`moodstream forget`: a participant's data leaves Redis, everyone else's stays, after real streamed sessions."""
import asyncio
import io

import grpc
import pytest
import redis

from moodstream.server.store_keys import VERSIONS_KEY, directory_key
from moodstream.compose.cli import main as moodstream_main
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import chunk, end, header, make_chunks, redis_keys, running_server, stream, stub_for

CHUNKS = make_chunks(2, seed=21)
TTL_SECONDS = 3600


def snapshot(url: str, keys: list[str]) -> dict[str, bytes]:
    client = redis.Redis.from_url(url)
    try:
        return {key: client.dump(key) for key in keys}
    finally:
        client.close()


def directory_members(url: str, key: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return [member.decode() for member in client.zrange(key, 0, -1)]
    finally:
        client.close()


def streamed(redis_url, model, tokens, **server_options):
    """p1: two sessions (one ended, one still open), p2: one session; all through a real server."""
    with running_server(model, redis_url, tokens, ttl_seconds=TTL_SECONDS, **server_options) as server:
        with stub_for(server.port) as stub:
            agent = tokens.metadata("agent")
            stream(stub, [header("p1-morning", "p1"), chunk(0, CHUNKS[0]), chunk(1, CHUNKS[1]), end(1)], agent)
            stream(stub, [header("p1-evening", "p1"), chunk(0, CHUNKS[1])], agent)
            stream(stub, [header("p2-morning", "p2"), chunk(0, CHUNKS[0]), end(0)], agent)
            admin = tokens.metadata("admin")
            assert stub.GetScore(pb.GetScoreRequest(session_id="p1-morning"), metadata=admin, timeout=10).segments == 2
        return server.model_version


def forget(capsys, *args) -> tuple[int, str, str]:
    code = moodstream_main(["forget", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_forget_deletes_every_key_of_the_participant_after_real_sessions(model, tokens, redis_url, capsys):
    model_version = streamed(redis_url, model, tokens, store_audio=True)
    keys = redis_keys(redis_url)
    mine = [key for key in keys if key.startswith("ms:{p:p1}:") or key in (
        "ms:session:{p1-morning}:owner", "ms:session:{p1-evening}:owner", "ms:session:{p1-morning}:model",
        "ms:session:{p1-evening}:model")]
    directory = directory_key(model_version)  # shared: lists every participant with a session
    shared = {directory, VERSIONS_KEY}  # ...and the model versions that stored sessions
    others = sorted(set(keys) - set(mine) - shared)
    # what a streamed session leaves: session hash, vectors, scorer rows, audio (store_audio), session
    # stream; the participant stream and session directory; an owner key and a model-version key per session
    assert len(mine) == 2 * 5 + 2 + 2 * 2, mine
    assert any(key.endswith(":audio") for key in mine)
    assert others and all("p2" in key for key in others), others
    assert directory_members(redis_url, directory) == ["p1", "p2"]
    before = snapshot(redis_url, others)

    code, out, err = forget(capsys, "p1", "--redis", redis_url, "--yes")
    assert code == 0, err
    assert f"deleted {len(mine)} key(s) of participant 'p1'" in out

    remaining = redis_keys(redis_url)
    assert not [key for key in remaining if "p1" in key], remaining
    assert remaining == sorted([*others, *shared])
    assert directory_members(redis_url, directory) == ["p2"]
    assert snapshot(redis_url, others) == before  # untouched, byte for byte

    # The server agrees: p1's sessions are gone, p2's score is still there.
    with running_server(model, redis_url, tokens) as server, stub_for(server.port) as stub:
        admin = tokens.metadata("admin")
        with pytest.raises(grpc.RpcError) as info:
            stub.GetScore(pb.GetScoreRequest(session_id="p1-morning"), metadata=admin, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:  # the replayed history of p1 is empty
            next(stub.Subscribe(pb.SubscribeRequest(participant_id="p1"), metadata=admin, timeout=2))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.GetScore(pb.GetScoreRequest(session_id="p2-morning"), metadata=admin,
                             timeout=10).model_version == model_version

    code, out, _ = forget(capsys, "p1", "--redis", redis_url, "--yes")
    assert code == 0 and "deleted 0 key(s)" in out


def test_streamed_sessions_keep_no_audio_by_default_and_expire_with_the_ttl(model, tokens, redis_url):
    streamed(redis_url, model, tokens)
    keys = redis_keys(redis_url)
    assert keys and not [key for key in keys if key.endswith(":audio")]
    client = redis.Redis.from_url(redis_url)
    try:
        ttls = {key: client.ttl(key) for key in keys}
    finally:
        client.close()
    assert all(0 < ttl <= TTL_SECONDS for ttl in ttls.values()), ttls


def test_forget_asks_first_and_deletes_nothing_unless_confirmed(model, tokens, redis_url, capsys, monkeypatch):
    streamed(redis_url, model, tokens)
    keys = redis_keys(redis_url)
    for answer in ("", "n\n", "no\n", "maybe\n"):
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        code, out, err = forget(capsys, "p1", "--redis", redis_url)
        assert code == 1 and "not confirmed; nothing was deleted" in err and "participant 'p1'" in err
        assert redis_keys(redis_url) == keys
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    code, out, err = forget(capsys, "p1", "--redis", redis_url)
    # 2 sessions x (record, vectors, scorer rows, stream), participant stream, session directory, 2 owners,
    # 2 model-version keys
    assert code == 0 and "deleted 14 key(s)" in out
    assert not [key for key in redis_keys(redis_url) if "p1" in key]


def test_forget_says_clearly_when_redis_cannot_be_reached(capsys):
    code, out, err = forget(capsys, "p1", "--redis", "redis://:s3cret@127.0.0.1:1/0", "--yes")
    assert code == 2 and out == ""
    assert err.startswith("moodstream forget: error: cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "s3cret" not in err and "Traceback" not in err and err.count("\n") == 1
    code, _, err = forget(capsys, "p1", "--redis", "redis://127.0.0.1:1/0", "--redis-cluster", "--yes")
    assert code == 2 and "cannot reach Redis" in err and "Traceback" not in err


@pytest.mark.parametrize("participant", ["", "p1*", "p 1", "p" * 65, "{p1}"])
def test_forget_refuses_what_is_not_a_participant_id(participant, capsys):
    code, _, err = forget(capsys, participant, "--redis", "redis://127.0.0.1:1/0", "--yes")
    assert code == 2 and "is not a participant id" in err


def test_forget_on_a_redis_cluster(redis_cluster_url, capsys):
    from moodstream.server.redis_connection import connect
    from moodstream.server.store import SessionStore

    async def write() -> None:
        client = connect(redis_cluster_url, cluster=True)
        try:
            store = SessionStore(client, model_version="m1", store_audio=True)
            # enough participants and sessions that their keys land on every master
            for participant in [f"c{index}" for index in range(12)]:
                for session in range(2):
                    session_id = f"{participant}-s{session}"
                    await store.claim_session(session_id, participant)
                    await store.apply_segment(session_id, participant, 0, b"\0" * 320, b"state",
                                              {"probability": 0.5, "above_threshold": True, "threshold": 0.5,
                                               "speech_seconds": 7.0}, None, audio=b"\1\0" * 8)
        finally:
            await client.aclose()

    async def all_keys() -> list[str]:
        client = connect(redis_cluster_url, cluster=True)
        try:
            return sorted(key.decode() for key in await client.keys("*", target_nodes=client.PRIMARIES))
        finally:
            await client.aclose()

    asyncio.run(write())
    before = asyncio.run(all_keys())
    mine = [key for key in before if key.startswith("ms:{p:c7}:") or key.startswith("ms:session:{c7-")]
    assert len(mine) == 2 * 4 + 2 + 2  # 2 sessions x 4, participant stream and session directory, 2 owners

    code, _, err = forget(capsys, "c7", "--redis", redis_cluster_url, "--yes")
    assert code == 2 and "is a Redis Cluster node: add --redis-cluster" in err  # never a silent partial search
    code, out, err = forget(capsys, "c7", "--redis", redis_cluster_url, "--redis-cluster", "--yes")
    assert code == 0, err
    assert f"deleted {len(mine)} key(s)" in out
    assert asyncio.run(all_keys()) == sorted(set(before) - set(mine))
